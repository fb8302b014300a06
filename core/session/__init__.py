"""The state of one interactive session, its per-field events, its policy, its loaders and background jobs, and
(api) what the views need from the stages below: the app's only door into core, with core.runtime."""
