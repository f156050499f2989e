"""`b24q`: enqueue jobs, inspect them, manage portals and dead letters, run the demo.

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

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from prometheus_client import generate_latest

from tasks import demo
from tasks.http import apikeys, server
from tasks.jobs import KINDS, SENDER_ADD
from tasks.lifecycle import Lifecycle
from tasks.producer import check, enqueue, enqueue_many, job_state, replay, resume_parked, store_tokens
from tasks.schema import job_schema, job_schemas
from workers.broker.recovery import Presence
from workers.celery import app
from workers.errors import B24QError, ConfigError, JobRefused
from workers.observe import metrics, status
from workers.observe.status import text_table
from workers.portals.crypto import generate_key
from workers.redaction import redis_url
from workers.runtime import Runtime, get_runtime
from workers.settings import API_KEY_ENTRY


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _when(ts: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))
    except (TypeError, ValueError):
        return "-"


class Progress:
    """A one-line progress counter on stderr for long commands."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.done = total, what, 0
        self._last = 0.0

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last > 0.2 or self.done == self.total:
            self._last = now
            print(f"\r{self.what}: {self.done}/{self.total}", end="", file=sys.stderr, flush=True)
            if self.done == self.total:
                print(file=sys.stderr)


# --- enqueue -----------------------------------------------------------------------------------


def _read_jobs(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    with stream:
        text = stream.read()
    stripped = text.lstrip()
    items = (
        json.loads(text)
        if stripped.startswith("[")
        else [json.loads(line) for line in text.splitlines() if line.strip()]
    )
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "kind" not in item:
            raise JobRefused("job", [(f"[{index}]", 'each job is an object with a "kind" field')])
        payload = dict(item)
        yield str(payload.pop("kind")), payload


def job_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The job's fields from `b24q enqueue KIND`'s flags (and its --json)."""
    payload: dict[str, Any] = json.loads(args.json) if args.json else {}
    for field in (
        "portal",
        "code",
        "message_id",
        "status",
        "connector",
        "line",
        "handler",
        "name",
        "description",
        "dialog_id",
    ):
        value = getattr(args, field, None)
        if value is not None:
            payload[field] = value
    if args.messages:
        payload["messages"] = json.loads(args.messages)
    if args.kind == "mark-unread" and isinstance(payload.get("message_id"), str) and payload["message_id"].isdigit():
        payload["message_id"] = int(payload["message_id"])
    return payload


def cmd_enqueue(args: argparse.Namespace) -> int:
    if args.file:
        jobs = list(_read_jobs(args.file))

        rt = get_runtime()
        progress = Progress(len(jobs), "validated")
        for index, (kind, fields) in enumerate(jobs):
            try:
                check(kind, fields, rt)
            except JobRefused as exc:
                raise JobRefused(exc.kind, [(f"line {index + 1}: {f}", m) for f, m in exc.errors]) from None
            progress.step()
        ids: list[str] = []
        progress = Progress(len(jobs), "enqueued")
        for start in range(0, len(jobs), 500):
            chunk = jobs[start : start + 500]
            ids.extend(enqueue_many(chunk, rt))
            progress.step(len(chunk))
        for job_id in ids:
            print(job_id)
        return 0
    if not args.kind:
        raise JobRefused("job", [("kind", f"give a job kind ({', '.join(KINDS)}) or --file")])
    payload = job_fields(args)
    print(enqueue(args.kind, payload))
    return 0


# --- jobs ----------------------------------------------------------------------------------------


def _running_on(rt: Runtime, record: dict[str, Any]) -> str:
    """Where a running job runs: `w3@host`, or `w3@host (dead since 12:01:07)` once its heartbeat is gone
    (dead-worker recovery then puts its message back in the queue)."""
    runs = [e.get("worker", "") for e in record["events"] if e.get("state") == "running"]
    worker = str(runs[-1]) if runs and runs[-1] else ""
    if not worker:
        return "?"
    presence = Presence(rt.redis, rt.keys, rt.settings.worker_dead_after)
    if presence.alive(worker):
        return worker
    last = presence.last_beat(worker)
    return f"{worker} (dead since {_when(last)})" if last else f"{worker} (no heartbeat)"


def cmd_job_show(args: argparse.Namespace) -> int:
    rt = get_runtime()
    record = job_state(args.id, rt)
    letter = rt.dead.get(args.id)
    portal = (record or {}).get("portal") or (letter.portal if letter else "")
    parked = rt.parking.get(portal, args.id) if portal else None
    if record is None and letter is None:
        print(f"no job {args.id}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(
            {
                **(record or {"id": args.id, "events": []}),
                "dead_letter": letter.as_dict() if letter else None,
                "parked": parked,
            }
        )
        return 0
    if record is None:
        print(f"job {args.id}: its ledger record has expired (ledger_ttl); the dead letter is kept")
    else:
        for key in ("id", "kind", "portal", "state", "runs", "failures", "last_error"):
            print(f"{key:>10}: {record.get(key, '')}")
        if record.get("state") == "running":
            print(f"{'worker':>10}: {_running_on(rt, record)}")
        print(f"{'created':>10}: {_when(record.get('created'))}")
        print(f"{'updated':>10}: {_when(record.get('updated'))}")
        created = float(record.get("created") or 0)
        events = record["events"]
        trimmed = " (the ledger keeps the last 50 events)" if len(events) >= 50 else ""
        print(f"   history:{trimmed}")
        for event in events:
            extra = {k: v for k, v in event.items() if k not in ("t", "state")}
            offset = f"+{max(0.0, float(event['t']) - created):.3f}s" if created else ""
            print(
                f"    {_when(event['t'])} {offset:>10}  {event['state']:<9} "
                f"{json.dumps(extra, ensure_ascii=False) if extra else ''}".rstrip()
            )
    if letter is not None:
        print(
            f"dead letter: {letter.code} after {letter.attempts} run(s); first {_when(letter.first_seen)}, "
            f"last {_when(letter.last_seen)}"
        )
        print(f"             {letter.description}")
        print(f"    payload: {json.dumps(letter.payload, ensure_ascii=False)}")
    if parked is not None:
        print(f"     parked: until portal {portal} is re-authorised (b24q portal auth {portal} …)")
        print(f"    payload: {json.dumps(parked.get('kwargs'), ensure_ascii=False)}")
    return 0


# --- status and metrics --------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    rt = get_runtime()
    try:
        data = status.collect(rt, app, timeout=args.timeout, portals=args.portal or None)
    except redis.RedisError as exc:
        print(f"b24q: cannot read Redis at {redis_url(rt.settings.redis_url)}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(data)
    else:
        print(status.render(data))
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    registry = metrics.build_registry(runtime=get_runtime(), workers=not args.no_workers, redis=not args.no_redis)
    if args.once:
        sys.stdout.write(generate_latest(registry).decode())
        return 0
    directory = metrics.metrics_dir()
    print(
        f"b24q metrics: http://{args.address}:{args.port}/metrics; worker counters from "
        f"{directory if directory and not args.no_workers else '(none: set B24Q_METRICS_DIR)'}",
        file=sys.stderr,
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop quietly
        metrics.serve(args.port, args.address, registry)
    return 0


# --- portals -------------------------------------------------------------------------------------


def cmd_portal_add(args: argparse.Namespace) -> int:
    reg = get_runtime().registry
    if args.webhook:
        portal = reg.add_webhook(args.key, args.webhook, args.plan, args.rate or 0.0, args.burst or 0)
    else:
        if not (args.endpoint and args.access_token and args.refresh_token):
            raise JobRefused(
                "portal",
                [
                    (
                        "--endpoint/--access-token/--refresh-token",
                        "all three are required for an OAuth portal (or give --webhook URL)",
                    )
                ],
            )
        expires = args.expires or time.time() + 3600
        portal = reg.add_oauth(
            args.key,
            args.endpoint,
            args.access_token,
            args.refresh_token,
            expires,
            args.member_id or "",
            "",
            args.plan,
            args.rate or 0.0,
            args.burst or 0,
        )
    _print_json(portal.public())
    return 0


def cmd_portal_list(args: argparse.Namespace) -> int:
    rt = get_runtime()
    portals = rt.registry.list()
    if args.json:
        _print_json([p.public() for p in portals])
        return 0
    rows = []
    for p in portals:
        limits = p.limits(rt.settings)
        rows.append(
            [
                p.key,
                p.kind,
                p.state,
                f"{limits.rate:g}/s burst {limits.burst}" if limits.rate > 0 else "unlimited",
                _when(p.expires) if p.kind == "oauth" else "-",
                rt.parking.count(p.key),
                p.reason or "",
            ]
        )
    print(text_table(rows, ["portal", "kind", "state", "limit", "token expires", "parked", "reason"]))
    return 0


def cmd_portal_remove(args: argparse.Namespace) -> int:
    removed = get_runtime().registry.remove(args.key)
    print("removed" if removed else f"no portal {args.key}")
    return 0 if removed else 1


def cmd_portal_auth(args: argparse.Namespace) -> int:
    auth: dict[str, Any] = json.loads(args.json) if args.json else {}
    for key in ("access_token", "refresh_token", "expires", "endpoint"):
        value = getattr(args, key, None)
        if value:
            auth["client_endpoint" if key == "endpoint" else key] = value
    resumed = store_tokens(args.key, auth)
    print(f"tokens stored for {args.key}; {resumed} parked job(s) resumed")
    return 0


def cmd_portal_genkey(args: argparse.Namespace) -> int:
    """A new key for B24Q_TOKEN_KEYS (`workers.portals.crypto`)."""

    print(generate_key())
    return 0


def cmd_portal_rekey(args: argparse.Namespace) -> int:
    """Re-encrypt every portal record with the first key of B24Q_TOKEN_KEYS."""

    try:
        changed = get_runtime().registry.rekey()
    except B24QError as exc:
        print(f"b24q: {exc}", file=sys.stderr)
        return 2
    print(f"re-encrypted {changed} portal record(s)")
    return 0


def cmd_portal_resume(args: argparse.Namespace) -> int:
    rt = get_runtime()
    portal = rt.registry.get(args.key)
    if portal is not None and portal.state == "reauth":
        rt.registry.mark_active(args.key)
    print(f"{resume_parked(args.key)} parked job(s) resumed")
    return 0


def cmd_portal_providers(args: argparse.Namespace) -> int:
    rt = get_runtime()
    key = rt.registry.resolve(args.key)
    portal = rt.registry.get(key) if key is not None else None
    if portal is None:
        print(f"b24q: no portal {args.key!r}", file=sys.stderr)
        return 1
    life = Lifecycle(rt)
    if args.set is not None:
        value = json.loads(args.set) if args.set.strip() else []
        for provider in value:  # refused now, not at the next install
            SENDER_ADD.validate({**provider, "portal": portal.key})
        rt.registry.set_providers(portal.key, json.dumps(value, ensure_ascii=False) if value else "")
        portal = rt.registry.get(portal.key) or portal
    if args.register:
        print(f"{life.register_providers(portal)} provider(s) enqueued for messageservice.sender.add")
    _print_json({"providers": life.providers_for(portal), "pending": portal.providers_pending.split()})
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tasks.http.intake import HEAD_LIMIT

    s = get_runtime().settings
    host = args.host or s.http_host
    port = s.http_port if args.port is None else args.port
    print(
        f"b24q serve: http://{host}:{port} (install: /b24/install, events: /b24/events, jobs: /v1, "
        f"API document: /docs){'' if s.api_keys else '; /v1 answers 401 until B24Q_API_KEYS is set'}",
        file=sys.stderr,
    )
    uvicorn.run(
        "tasks.http.app:app",
        host=host,
        port=port,
        workers=args.workers,
        log_level="info",
        h11_max_incomplete_event_size=HEAD_LIMIT,
        http=server.PROTOCOL,
    )
    return 0


# --- the published contract, the HTTP intake's keys ----------------------------------------------


def cmd_schema(args: argparse.Namespace) -> int:
    """The JSON Schema of one job kind, or of every kind (an object keyed by kind)."""
    _print_json(job_schema(args.kind) if args.kind else job_schemas())
    return 0


def cmd_apikey_new(args: argparse.Namespace) -> int:
    """A fresh API key, printed once, and its B24Q_API_KEYS entry (the key's hash, never the key)."""
    portals = [p.strip() for p in (args.portals or "").split(",") if p.strip()]
    key, entry = apikeys.new(portals)
    if not API_KEY_ENTRY.fullmatch(entry):
        raise ConfigError("--portals: portals are named by key, member_id or domain (letters, digits, . - _ :)")
    print("API key (shown only now: b24q keeps its hash, not the key; give it to the producer):")
    print(f"  {key}")
    print("B24Q_API_KEYS entry (comma-separated with the others):")
    print(f"  {entry}")
    return 0


# --- dead letters --------------------------------------------------------------------------------


def cmd_dead_list(args: argparse.Namespace) -> int:
    dead = get_runtime().dead
    letters = list(dead.iter(args.portal, args.code, args.kind))
    if args.json:
        _print_json([d.as_dict() for d in letters])
        return 0
    rows = [[d.id, d.kind, d.portal, d.code, d.attempts, _when(d.last_seen), d.description[:60]] for d in letters]
    print(text_table(rows, ["job", "kind", "portal", "reason", "runs", "last seen", "description"]))
    counts = dead.counts()
    if counts:
        print("\nby reason: " + ", ".join(f"{code} {n}" for code, n in sorted(counts.items())))
    return 0


def cmd_dead_show(args: argparse.Namespace) -> int:
    letter = get_runtime().dead.get(args.id)
    if letter is None:
        print(f"no dead letter {args.id}", file=sys.stderr)
        return 1
    _print_json(letter.as_dict())
    return 0


def cmd_dead_replay(args: argparse.Namespace) -> int:
    if not (args.ids or args.all or args.portal or args.code or args.kind):
        print("name job ids, a filter (--portal/--code/--kind) or --all", file=sys.stderr)
        return 2

    ids = args.ids or [d.id for d in get_runtime().dead.iter(args.portal, args.code, args.kind)]
    done: list[str] = []
    refused: list[tuple[str, JobRefused]] = []
    progress = Progress(len(ids), "replayed")
    for start in range(0, len(ids), 100):
        chunk = ids[start : start + 100]
        replayed, not_replayed = replay(chunk)
        done.extend(replayed)
        refused.extend(not_replayed)
        progress.step(len(chunk))
    print(f"replayed {len(done)}")
    for job_id, why in refused:
        print(f"not replayed {job_id}: {why}")
    return 0 if not refused else 1


def cmd_dead_purge(args: argparse.Namespace) -> int:
    dead = get_runtime().dead
    if not (args.ids or args.all or args.portal or args.code or args.kind):
        print("name job ids, a filter (--portal/--code/--kind) or --all", file=sys.stderr)
        return 2
    ids = args.ids or [d.id for d in dead.iter(args.portal, args.code, args.kind)]
    print(f"purged {sum(dead.remove(i) for i in ids)}")
    return 0


# --- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="b24q", description="Deliver message-state updates to Bitrix24 portals.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("enqueue", help="validate and enqueue a job (or a file of jobs)")
    p.add_argument("kind", nargs="?", choices=list(KINDS), help="job kind")
    p.add_argument("--file", help="JSON array or JSON-lines file of jobs ('-' for stdin), each with a kind field")
    p.add_argument("--json", help="the job's fields as a JSON object")
    p.add_argument("--portal")
    p.add_argument("--code")
    p.add_argument("--message-id", dest="message_id")
    p.add_argument("--status")
    p.add_argument("--connector")
    p.add_argument("--line", type=int)
    p.add_argument("--messages", help="delivery-confirmation MESSAGES as a JSON array")
    p.add_argument("--handler")
    p.add_argument("--name")
    p.add_argument("--description")
    p.add_argument("--dialog-id", dest="dialog_id")
    p.set_defaults(func=cmd_enqueue)

    job = sub.add_parser("job", help="show a job's state and history").add_subparsers(dest="sub", required=True)
    p = job.add_parser("show")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_job_show)

    p = sub.add_parser("status", help="queues, workers, portals and dead letters on one screen")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.add_argument("--portal", action="append", help="only this portal (repeatable)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for workers to answer")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("metrics", help="serve Prometheus metrics: this host's worker counters and Redis gauges")
    p.add_argument("--port", type=int, default=9808)
    p.add_argument("--address", default="0.0.0.0", help="address to listen on")
    p.add_argument("--no-redis", action="store_true", help="leave out the Redis gauges (another host serves them)")
    p.add_argument("--no-workers", action="store_true", help="leave out the worker counters (B24Q_METRICS_DIR)")
    p.add_argument("--once", action="store_true", help="print the metrics once and exit")
    p.set_defaults(func=cmd_metrics)

    portal = sub.add_parser("portal", help="manage portals").add_subparsers(dest="sub", required=True)
    p = portal.add_parser("add", help="add or replace a portal")
    p.add_argument("key", help="stable portal key (member_id or domain); jobs name this")
    p.add_argument("--endpoint", help="client_endpoint, e.g. https://acme.bitrix24.com/rest/")
    p.add_argument("--access-token", dest="access_token")
    p.add_argument("--refresh-token", dest="refresh_token")
    p.add_argument("--expires", type=float, help="access token expiry, unix time")
    p.add_argument("--member-id", dest="member_id")
    p.add_argument("--webhook", help="incoming webhook URL instead of OAuth")
    p.add_argument("--plan", choices=["standard", "enterprise", "box"], help="box: self-hosted, no rate limit")
    p.add_argument("--rate", type=float, help="custom drain rate, requests/s")
    p.add_argument("--burst", type=int, help="custom burst threshold")
    p.set_defaults(func=cmd_portal_add)
    p = portal.add_parser("list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_portal_list)
    p = portal.add_parser("remove")
    p.add_argument("key")
    p.set_defaults(func=cmd_portal_remove)
    p = portal.add_parser("auth", help="store a fresh token pair and resume parked jobs")
    p.add_argument("key")
    p.add_argument("--json", help="Bitrix24 auth block as JSON")
    p.add_argument("--access-token", dest="access_token")
    p.add_argument("--refresh-token", dest="refresh_token")
    p.add_argument("--expires", type=float)
    p.add_argument("--endpoint")
    p.set_defaults(func=cmd_portal_auth)
    p = portal.add_parser("resume", help="mark a portal active and resume its parked jobs")
    p.add_argument("key")
    p.set_defaults(func=cmd_portal_resume)
    p = portal.add_parser("providers", help="the SMS providers a portal should have (re-added after app updates)")
    p.add_argument("key")
    p.add_argument("--set", help='JSON list [{"code", "name", "handler", "description"?}] ("" = B24Q_PROVIDERS)')
    p.add_argument("--register", action="store_true", help="enqueue messageservice.sender.add for them now")
    p.set_defaults(func=cmd_portal_providers)
    p = portal.add_parser("genkey", help="print a new key for B24Q_TOKEN_KEYS (tokens encrypted at rest)")
    p.set_defaults(func=cmd_portal_genkey)
    p = portal.add_parser("rekey", help="re-encrypt every portal record with the first key of B24Q_TOKEN_KEYS")
    p.set_defaults(func=cmd_portal_rekey)

    dead = sub.add_parser("dead", help="dead letters").add_subparsers(dest="sub", required=True)
    for name, func in (("list", cmd_dead_list), ("replay", cmd_dead_replay), ("purge", cmd_dead_purge)):
        p = dead.add_parser(name)
        if name != "list":
            p.add_argument("ids", nargs="*")
            p.add_argument("--all", action="store_true")
        else:
            p.add_argument("--json", action="store_true")
        p.add_argument("--portal")
        p.add_argument("--code")
        p.add_argument("--kind")
        p.set_defaults(func=func)
    p = dead.add_parser("show")
    p.add_argument("id")
    p.set_defaults(func=cmd_dead_show)

    p = sub.add_parser("serve", help="serve the HTTP app: the Bitrix24 application's install and event handlers")
    p.add_argument("--host", help="address (default B24Q_HTTP_HOST)")
    p.add_argument("--port", type=int, help="port (default B24Q_HTTP_PORT)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("schema", help="print the JSON Schema of a job kind (all kinds if none is named)")
    p.add_argument("kind", nargs="?", choices=list(KINDS))
    p.set_defaults(func=cmd_schema)

    apikey = sub.add_parser("apikey", help="API keys of the HTTP intake").add_subparsers(dest="sub", required=True)
    p = apikey.add_parser("new", help="print a new API key once, and its B24Q_API_KEYS entry")
    p.add_argument("--portals", help="comma-separated portals the key may post and read (default: every portal)")
    p.set_defaults(func=cmd_apikey_new)

    p = sub.add_parser("demo", help="run the main job on the embedded default: Redis, emulator, workers, jobs")
    p.add_argument("--jobs", type=int, default=6000, help="how many jobs to enqueue")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--keep", action="store_true", help="keep everything running at the end (for Flower)")
    p.add_argument(
        "--broker",
        default=os.environ.get("B24Q_BROKER_URL", ""),
        help="amqp://... : the jobs' messages in this RabbitMQ (queues of the demo's own, deleted at the end); "
        "default B24Q_BROKER_URL, or the demo's Redis",
    )
    p.set_defaults(func=demo.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except B24QError as exc:
        print(f"b24q: {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"b24q: bad JSON: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
