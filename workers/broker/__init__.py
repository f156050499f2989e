"""The broker side: Celery's settings for either broker (configuration), messages that cannot become jobs
(consumer), messages the broker lost (reconcile), and a dead worker's jobs brought back (recovery)."""
