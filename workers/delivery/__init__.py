"""The delivery path: calls, lanes that pack them into batches, the pool-wide call queue, rate and operating limits."""
