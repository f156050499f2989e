"""Celery's settings for b24q as a configuration module, for tools that read one (`celery --config celeryconfig`).

They are built in `workers.broker.configuration` from `Settings` (environment / .env); b24q's Celery app
(`workers.celery`) reads the same settings from there.
"""

from workers.broker.configuration import build
from workers.settings import get_settings

globals().update(build(get_settings()))
