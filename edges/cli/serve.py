"""`b24q serve` and `b24q demo`: the commands that run until stopped, the HTTP app and the demo's whole stack."""

from __future__ import annotations

import argparse
import logging
import os

from edges import demo
from edges.http import server
from workers.observe import logs
from workers.runtime import get_runtime

#: the CLI's logger, whatever module of it writes (operators filter `b24q serve`'s first line by it)
log = logging.getLogger("edges.cli")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from edges.http.intake import HEAD_LIMIT

    s = get_runtime().settings
    host = args.host or s.http_host
    port = s.http_port if args.port is None else args.port
    log.info(
        "b24q serve: http://%s:%s (install: /b24/install, events: /b24/events, jobs: /v1, API document: /docs)%s",
        host,
        port,
        "" if s.api_keys else "; /v1 answers 401 until B24Q_API_KEYS is set",
    )
    uvicorn.run(
        "edges.http.app:app",
        host=host,
        port=port,
        workers=args.workers,
        log_level="info",
        log_config=logs.uvicorn_config(s.log_format),
        h11_max_incomplete_event_size=HEAD_LIMIT,
        http=server.PROTOCOL,
    )
    return 0


def add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve the HTTP app: the Bitrix24 application's install and event handlers")
    p.add_argument("--host", help="address (default B24Q_HTTP_HOST)")
    p.add_argument("--port", type=int, help="port (default B24Q_HTTP_PORT)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.set_defaults(func=cmd_serve)


def add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the main job on the embedded default: Redis, emulator, workers, jobs")
    p.add_argument(
        "--jobs",
        type=int,
        default=6000,
        help="jobs to enqueue, of all four kinds (a message's 'sent' and final reports are two jobs)",
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep everything running at the end, start Flower, and print the lines to use it from another shell",
    )
    p.add_argument(
        "--http-port", type=int, default=8024, help="port of the HTTP app on 127.0.0.1 (taken: any free one)"
    )
    p.add_argument("--flower-port", type=int, default=5555, help="port of Flower with --keep (taken: any free one)")
    p.add_argument(
        "--broker",
        default=os.environ.get("B24Q_BROKER_URL", ""),
        help="amqp://... : the jobs' messages in this RabbitMQ (queues of the demo's own, deleted at the end); "
        "default B24Q_BROKER_URL, or the demo's Redis",
    )
    p.set_defaults(func=demo.run)
