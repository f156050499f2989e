"""b24q workers: what runs jobs (settings, Celery app, REST client, limiter, tokens, pipeline).

The Celery application is `workers.celery.app`; start a worker with `celery -A workers worker`.
"""
