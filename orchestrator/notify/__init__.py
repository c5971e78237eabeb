"""Notifications out: commit statuses on the forge (commit_status), and messages to Slack-style
webhooks, signed JSON webhooks and email when builds finish, deploy, roll back or stop at the model
gate (events, payloads, send, dispatch; docs/notifications.md)."""
