"""Qt views and workers; all compute goes through tuckerscope.core."""
