"""`b24q enqueue` and `b24q job show`: jobs into the queue, and one job's state and history out of the ledger."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

from edges import jobreport
from edges.cli.output import Progress, print_json
from tasks.jobs import KINDS
from tasks.producer import check, enqueue, enqueue_many
from workers.errors import JobRefused
from workers.runtime import get_runtime


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


def cmd_job_show(args: argparse.Namespace) -> int:
    rt = get_runtime()
    report = jobreport.data(rt, args.id) if args.json else jobreport.text(rt, args.id)
    if report is None:
        print(f"no job {args.id}", file=sys.stderr)
        return 1
    if isinstance(report, str):
        print(report)
    else:
        print_json(report)
    return 0


def add_enqueue(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def add_job(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    job = sub.add_parser("job", help="show a job's state and history").add_subparsers(dest="sub", required=True)
    p = job.add_parser("show", help="a job's state, attempts, last error, history, dead letter or parked payload")
    p.add_argument("id", help="the job id (printed at enqueue)")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.set_defaults(func=cmd_job_show)
