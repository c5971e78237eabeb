"""Intake: webhook deliveries in, verified and parsed, builds queued."""
