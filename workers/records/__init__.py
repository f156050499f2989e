"""What happened to each job: the ledger, dead letters and parked jobs."""
