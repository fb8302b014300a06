"""Qt views, workers and the window's wiring; all compute goes through tuckerscope.core.session."""
