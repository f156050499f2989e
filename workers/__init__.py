"""b24q workers: what runs jobs. One folder per concept, lower folders never importing higher ones
(tests/test_architecture.py): bitrix/ (the wire), portals/, records/, delivery/, then runtime.py and
pipeline.py, broker/ and observe/, the Celery app (celery.py), localdev/.

The Celery application is `workers.celery.app`; start a worker with `celery -A workers worker`.
"""
