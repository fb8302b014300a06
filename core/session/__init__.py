"""The state of one interactive session, its per-field events and its background jobs (the app's only door)."""
