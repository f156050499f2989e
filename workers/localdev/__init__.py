"""A whole deployment on one machine, on loopback: redis-server, the emulator, workers (demo, tests, bench):
the stack (localstack), its child processes (processes), the private redis-server (redisserver)."""
