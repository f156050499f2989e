"""Watching the pool: Prometheus metrics and the status snapshot (`b24q status`)."""
