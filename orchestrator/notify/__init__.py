"""Notifications out: commit statuses on the forge."""
