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
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from prometheus_client import generate_latest

from edges import demo, jobreport
from edges.http import apikeys, server
from edges.lifecycle import Lifecycle
from tasks.jobs import KINDS, SENDER_ADD
from tasks.producer import check, enqueue, enqueue_many, reactivate, replay, store_tokens
from tasks.schema import job_schema, job_schemas
from workers.celery import app
from workers.errors import B24QError, ConfigError, JobRefused
from workers.observe import exposition, logs, status
from workers.observe.status import text_table
from workers.portals.crypto import generate_key
from workers.redaction import redis_url
from workers.runtime import Runtime, get_runtime
from workers.settings import API_KEY_ENTRY, get_settings

log = logging.getLogger("edges.cli")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


_when = jobreport.when


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


def cmd_job_show(args: argparse.Namespace) -> int:
    rt = get_runtime()
    report = jobreport.data(rt, args.id) if args.json else jobreport.text(rt, args.id)
    if report is None:
        print(f"no job {args.id}", file=sys.stderr)
        return 1
    if isinstance(report, str):
        print(report)
    else:
        _print_json(report)
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
                p.domain or "-",
                p.kind,
                p.state,
                p.plan,
                f"{limits.rate:g}/s burst {limits.burst}" if limits.rate > 0 else "unlimited",
                _when(p.expires) if p.kind == "oauth" else "-",
                rt.parking.count(p.key),
                p.reason or "",
            ]
        )
    headers = ["portal", "domain", "kind", "state", "plan", "limit", "token expires", "parked", "reason"]
    print(text_table(rows, headers))
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
    print(f"{reactivate(args.key)} parked job(s) resumed")
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


# --- the published contract, the HTTP intake's keys ----------------------------------------------


def cmd_schema(args: argparse.Namespace) -> int:
    """The JSON Schema of one job kind, or of every kind (an object keyed by kind)."""
    _print_json(job_schema(args.kind) if args.kind else job_schemas())
    return 0


def cmd_apikey_new(args: argparse.Namespace) -> int:
    """A fresh API key, printed once, and its B24Q_API_KEYS entry (the key's hash, never the key)."""
    portals = [p.strip() for p in (args.portals or "").split(",") if p.strip()]
    if args.admin and portals:
        raise ConfigError("--admin: an operator's key acts for every portal; give no --portals")
    key, entry = apikeys.new(portals, admin=args.admin)
    if not API_KEY_ENTRY.fullmatch(entry):
        raise ConfigError("--portals: portals are named by key, member_id or domain (letters, digits, . - _ :)")
    who = "sign in to the console at /console with it" if args.admin else "give it to the producer"
    print(f"API key (shown only now: b24q keeps its hash, not the key; {who}):")
    print(f"  {key}")
    print("B24Q_API_KEYS entry (comma-separated with the others):")
    print(f"  {entry}")
    return 0


# --- dead letters --------------------------------------------------------------------------------


def _portal_filter(rt: Runtime, name: str | None) -> str | None:
    """The registry key of a --portal filter given by key, member_id, domain or alias (dead letters
    record the key)."""
    return (rt.registry.resolve(name) or name) if name else None


def cmd_dead_list(args: argparse.Namespace) -> int:
    rt = get_runtime()
    dead = rt.dead
    letters = list(dead.iter(_portal_filter(rt, args.portal), args.code, args.kind))
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

    rt = get_runtime()
    ids = args.ids or [d.id for d in rt.dead.iter(_portal_filter(rt, args.portal), args.code, args.kind)]
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
    rt = get_runtime()
    dead = rt.dead
    if not (args.ids or args.all or args.portal or args.code or args.kind):
        print("name job ids, a filter (--portal/--code/--kind) or --all", file=sys.stderr)
        return 2
    ids = args.ids or [d.id for d in dead.iter(_portal_filter(rt, args.portal), args.code, args.kind)]
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
    p.add_argument("--portal", help="the portal: its key, member_id, domain or alias (every kind)")
    p.add_argument("--code", help="the SMS provider's CODE (status-update, sender-update)")
    p.add_argument("--message-id", dest="message_id", help="the message's id (status-update, mark-unread)")
    p.add_argument("--status", help="queued, sent, delivered, undelivered or failed (status-update)")
    p.add_argument("--connector", help="the open-line connector's CONNECTOR (delivery-confirmation)")
    p.add_argument("--line", type=int, help="the open line's LINE id (delivery-confirmation)")
    p.add_argument("--messages", help="delivery-confirmation MESSAGES as a JSON array")
    p.add_argument("--handler", help="the provider's HANDLER URL (sender-update)")
    p.add_argument("--name", help="the provider's NAME (sender-update), a string or a JSON object by language")
    p.add_argument("--description", help="the provider's DESCRIPTION (sender-update)")
    p.add_argument("--dialog-id", dest="dialog_id", help="the dialog: chatN, sgN or a user id (mark-unread)")
    p.set_defaults(func=cmd_enqueue)

    job = sub.add_parser("job", help="show a job's state and history").add_subparsers(dest="sub", required=True)
    p = job.add_parser("show", help="a job's state, attempts, last error, history, dead letter or parked payload")
    p.add_argument("id", help="the job id (printed at enqueue)")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.set_defaults(func=cmd_job_show)

    p = sub.add_parser("status", help="queues, workers, portals and dead letters on one screen")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.add_argument("--portal", action="append", help="only this portal (repeatable)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for workers to answer")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("metrics", help="serve Prometheus metrics: this host's worker counters and Redis gauges")
    p.add_argument("--port", type=int, default=9808, help="port to listen on (default 9808)")
    p.add_argument("--address", default="0.0.0.0", help="address to listen on")
    p.add_argument("--no-redis", action="store_true", help="leave out the Redis gauges (another host serves them)")
    p.add_argument("--no-workers", action="store_true", help="leave out the worker counters (B24Q_METRICS_DIR)")
    p.add_argument("--once", action="store_true", help="print the metrics once and exit")
    p.set_defaults(func=cmd_metrics)

    portal = sub.add_parser("portal", help="manage portals").add_subparsers(dest="sub", required=True)
    p = portal.add_parser("add", help="add or replace a portal")
    p.add_argument("key", help="stable portal key (member_id or domain); jobs name this")
    p.add_argument("--endpoint", help="client_endpoint, e.g. https://acme.bitrix24.com/rest/")
    p.add_argument("--access-token", dest="access_token", help="the portal's OAuth access token")
    p.add_argument("--refresh-token", dest="refresh_token", help="the portal's OAuth refresh token")
    p.add_argument("--expires", type=float, help="access token expiry, unix time")
    p.add_argument("--member-id", dest="member_id", help="the portal's member_id (an alias of the key)")
    p.add_argument("--webhook", help="incoming webhook URL instead of OAuth")
    p.add_argument("--plan", choices=["standard", "enterprise", "box"], help="box: self-hosted, no rate limit")
    p.add_argument("--rate", type=float, help="custom drain rate, requests/s")
    p.add_argument("--burst", type=int, help="custom burst threshold")
    p.set_defaults(func=cmd_portal_add)
    p = portal.add_parser("list", help="every portal: key, domain, state, plan, limit, token expiry, parked jobs")
    p.add_argument("--json", action="store_true", help="machine-readable, every field but secrets")
    p.set_defaults(func=cmd_portal_list)
    p = portal.add_parser("remove", help="forget a portal (its jobs then end UNKNOWN_PORTAL)")
    p.add_argument("key", help="the portal's key")
    p.set_defaults(func=cmd_portal_remove)
    p = portal.add_parser("auth", help="store a fresh token pair and resume parked jobs")
    p.add_argument("key", help="the portal: its key, member_id, domain or alias")
    p.add_argument("--json", help="Bitrix24 auth block as JSON")
    p.add_argument("--access-token", dest="access_token", help="the new access token")
    p.add_argument("--refresh-token", dest="refresh_token", help="the new refresh token")
    p.add_argument("--expires", type=float, help="the access token's expiry, unix time")
    p.add_argument("--endpoint", help="the portal's client_endpoint, if it changed")
    p.set_defaults(func=cmd_portal_auth)
    p = portal.add_parser("resume", help="mark a portal active and resume its parked jobs")
    p.add_argument("key", help="the portal's key")
    p.set_defaults(func=cmd_portal_resume)
    p = portal.add_parser("providers", help="the SMS providers a portal should have (re-added after app updates)")
    p.add_argument("key", help="the portal: its key, member_id, domain or alias")
    p.add_argument("--set", help='JSON list [{"code", "name", "handler", "description"?}] ("" = B24Q_PROVIDERS)')
    p.add_argument("--register", action="store_true", help="enqueue messageservice.sender.add for them now")
    p.set_defaults(func=cmd_portal_providers)
    p = portal.add_parser("genkey", help="print a new key for B24Q_TOKEN_KEYS (tokens encrypted at rest)")
    p.set_defaults(func=cmd_portal_genkey)
    p = portal.add_parser("rekey", help="re-encrypt every portal record with the first key of B24Q_TOKEN_KEYS")
    p.set_defaults(func=cmd_portal_rekey)

    dead = sub.add_parser("dead", help="dead letters").add_subparsers(dest="sub", required=True)
    for name, func, what in (
        ("list", cmd_dead_list, "list dead letters, with counts per reason"),
        ("replay", cmd_dead_replay, "re-validate and re-enqueue dead letters under their job ids"),
        ("purge", cmd_dead_purge, "delete dead letters"),
    ):
        p = dead.add_parser(name, help=what)
        if name != "list":
            p.add_argument("ids", nargs="*", help="job ids (or a filter, or --all)")
            p.add_argument("--all", action="store_true", help="every dead letter")
        else:
            p.add_argument("--json", action="store_true", help="machine-readable")
        p.add_argument("--portal", help="only this portal's (its key, member_id, domain or alias)")
        p.add_argument("--code", help="only this reason, e.g. ERROR_MESSAGE_NOT_FOUND")
        p.add_argument("--kind", help="only this job kind, e.g. status-update")
        p.set_defaults(func=func)
    p = dead.add_parser("show", help="one dead letter: payload (secrets masked), reason, attempts, when")
    p.add_argument("id", help="the job id")
    p.set_defaults(func=cmd_dead_show)

    p = sub.add_parser("serve", help="serve the HTTP app: the Bitrix24 application's install and event handlers")
    p.add_argument("--host", help="address (default B24Q_HTTP_HOST)")
    p.add_argument("--port", type=int, help="port (default B24Q_HTTP_PORT)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("schema", help="print the JSON Schema of a job kind (all kinds if none is named)")
    p.add_argument("kind", nargs="?", choices=list(KINDS), help="the job kind (all kinds if none)")
    p.set_defaults(func=cmd_schema)

    apikey = sub.add_parser("apikey", help="API keys of the HTTP intake").add_subparsers(dest="sub", required=True)
    p = apikey.add_parser("new", help="print a new API key once, and its B24Q_API_KEYS entry")
    p.add_argument("--portals", help="comma-separated portals the key may post and read (default: every portal)")
    p.add_argument("--admin", action="store_true", help="an operator's key: signs in to the console at /console")
    p.set_defaults(func=cmd_apikey_new)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not logging.getLogger().handlers:  # a program that calls main() (a test) keeps its own logging
            logs.setup(get_settings().log_format)
        return int(args.func(args) or 0)
    except B24QError as exc:
        print(f"b24q: {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"b24q: bad JSON: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
