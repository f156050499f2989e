"""The delivery path, the one way to a portal: calls, lanes that pack them into batches, one-off calls,
the pool-wide call queue, rate and operating limits."""
