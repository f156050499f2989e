"""b24q's benchmark suite: `python -m bench.run [scenario ...] [--quick]`.

Every scenario starts its own `workers.localdev.localstack.LocalStack` (a private redis-server, the emulator
process and real `celery -A workers worker` processes), pushes a workload, and prints one aligned
table: the theoretical limit, the measured value and their ratio. The numbers are measured against
the real processes on this machine, so they include everything production pays for (broker, ledger,
HTTP, JSON, the emulator's own CPU on the same cores). Results are recorded in `docs/benchmarks.md`.
"""
