"""`b24q`: enqueue jobs, inspect them, manage portals and dead letters, run the demo; one module per group of
commands, each adding its own parsers (`program` puts them together and runs one).

    b24q enqueue status-update --portal acme --code smsgw --message-id a1 --status delivered
    b24q enqueue --file jobs.jsonl          # one {"kind": ..., "portal": ..., ...} per line
    b24q job show JOB_ID                    # state, full history, dead letter or parked payload
    b24q status [--json]                    # queues, workers, portals, dead letters on one screen
    b24q metrics --port 9808                # Prometheus endpoint: worker counters + Redis gauges
    b24q portal add acme --endpoint https://acme.bitrix24.com/rest/ --access-token … --refresh-token …
    b24q dead list | show ID | replay [ID …] [--all] | purge [ID …] [--all]
    b24q schema [KIND]                      # the JSON Schema of the job kinds (what /v1/jobs accepts)
    b24q apikey new [--portals a,b]         # a key for the HTTP intake, and its B24Q_API_KEYS entry
    b24q serve                              # the HTTP app: install/event handlers, the /v1 intake
    b24q demo                               # worker + emulator portal + sample jobs

Configuration comes from the environment (`B24Q_*`, see the README). Secrets never appear in output.
"""

from edges.cli.program import build_parser, main

__all__ = ["build_parser", "main"]
