"""Process-level plumbing every layer may use: user-facing errors, worker processes, memory and GC policy."""
