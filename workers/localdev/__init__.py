"""A whole deployment on one machine, on loopback: redis-server, the emulator, workers (demo, tests, bench)."""
