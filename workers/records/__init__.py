"""What happened to each job: the ledger, dead letters and parked jobs; and what a retried HTTP post already got
(idempotency keys)."""
