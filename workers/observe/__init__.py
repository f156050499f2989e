"""Watching the pool: what the workers count (metrics), the gauges read from Redis (gauges), how metrics leave a
process and are served (exposition), the status snapshot (`b24q status`) and the log lines' format."""
