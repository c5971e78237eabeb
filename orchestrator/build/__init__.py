"""Build: the RQ entry point, the runner, workspace, build log, artifacts, cancel."""
