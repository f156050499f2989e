"""b24q's worker as a user may run it to see its HTTP traffic: their own module wraps b24q's Celery app and
turns httpx's request lines back on (`celery -A tests.integration.loud_worker worker`).

httpx logs every request's full URL at INFO: the OAuth refresh's query carries client_secret and the refresh
token, a webhook portal's URL its secret code. `workers.celery` turns those lines off; here they are on, so
that the redaction filter on the worker's log handlers (`workers.redaction`) is what keeps them out of the
log (tests/integration/test_secrets.py).
"""

import logging

from workers.celery import app

logging.getLogger("httpx").setLevel(logging.INFO)

__all__ = ["app"]
