"""How good and how fast: agreement metrics, DF sweeps, forward timing, one-CT runs for eval and report."""
