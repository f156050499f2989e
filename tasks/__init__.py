"""What the jobs are: the job kinds as declarations (jobs), their models (models) and the rules of their fields
(fields), their Celery tasks (definitions), the producer API (producer), the one way a job enters the broker
(publishing), their JSON Schemas (schema)."""
