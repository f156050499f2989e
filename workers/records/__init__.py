"""What happened to each job: the ledger, dead letters and parked jobs, and the outcome recorder that writes them;
and what a retried HTTP post already got (idempotency keys)."""
