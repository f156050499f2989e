"""b24q workers: what runs jobs. One folder per concept, lower folders never importing higher ones
(tests/test_architecture.py): the bottom modules (settings, errors, the retry policy in retries.py, keys, events),
bitrix/ (the wire), portals/, records/, delivery/, then runtime.py and pipeline.py, broker/ and observe/, the
Celery app (celery.py), localdev/.

The Celery application is `workers.celery.app`; start a worker with `celery -A workers worker`.
"""
