"""Watching the pool: Prometheus metrics, the status snapshot (`b24q status`) and the log lines' format."""
