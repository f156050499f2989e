"""`b24q status` and `b24q metrics`: the pool as an operator watches it, on one screen or as Prometheus metrics."""

from __future__ import annotations

import argparse
import contextlib
import sys

import redis
from prometheus_client import generate_latest

from edges.cli.output import print_json
from workers.celery import app
from workers.observe import exposition, status
from workers.redaction import redis_url
from workers.runtime import get_runtime


def cmd_status(args: argparse.Namespace) -> int:
    rt = get_runtime()
    try:
        data = status.collect(rt, app, timeout=args.timeout, portals=args.portal or None)
    except redis.RedisError as exc:
        print(f"b24q: cannot read Redis at {redis_url(rt.settings.redis_url)}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print_json(data)
    else:
        print(status.render(data))
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    registry = exposition.build_registry(runtime=get_runtime(), workers=not args.no_workers, redis=not args.no_redis)
    if args.once:
        sys.stdout.write(generate_latest(registry).decode())
        return 0
    directory = exposition.metrics_dir()
    print(
        f"b24q metrics: http://{args.address}:{args.port}/metrics; worker counters from "
        f"{directory if directory and not args.no_workers else '(none: set B24Q_METRICS_DIR)'}",
        file=sys.stderr,
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop quietly
        exposition.serve(args.port, args.address, registry)
    return 0


def add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="queues, workers, portals and dead letters on one screen")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.add_argument("--portal", action="append", help="only this portal (repeatable)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for workers to answer")
    p.set_defaults(func=cmd_status)


def add_metrics(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("metrics", help="serve Prometheus metrics: this host's worker counters and Redis gauges")
    p.add_argument("--port", type=int, default=9808, help="port to listen on (default 9808)")
    p.add_argument("--address", default="0.0.0.0", help="address to listen on")
    p.add_argument("--no-redis", action="store_true", help="leave out the Redis gauges (another host serves them)")
    p.add_argument("--no-workers", action="store_true", help="leave out the worker counters (B24Q_METRICS_DIR)")
    p.add_argument("--once", action="store_true", help="print the metrics once and exit")
    p.set_defaults(func=cmd_metrics)
