"""Cohort studies: one CT pipeline per (case, expert, setting) as Dask tasks, results written atomically,
and the paper's cohort analysis (Figure 2, per-class tables and tests) beside them."""
