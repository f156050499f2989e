"""b24q's Celery app with Celery task events forced on or off, for `bench.experiments events` only.

`BENCH_TASK_EVENTS=1` sends task events at all times (what `worker_send_task_events=True` costs, e.g.
for Flower), `0` never; everything else is b24q's configuration. Run as
`celery -A bench.events_app worker ...`.
"""

import os

from workers.celery import app

app.conf.worker_send_task_events = os.environ.get("BENCH_TASK_EVENTS") == "1"

__all__ = ["app"]
