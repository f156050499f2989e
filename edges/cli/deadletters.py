"""`b24q dead …`: list, show, replay and purge dead letters, by id or by a filter (portal, reason, kind)."""

from __future__ import annotations

import argparse
import sys

from edges import jobreport
from edges.cli.output import Progress, print_json
from tasks.producer import replay
from workers.errors import JobRefused
from workers.observe.status import text_table
from workers.runtime import Runtime, get_runtime


def _portal_filter(rt: Runtime, name: str | None) -> str | None:
    """The registry key of a --portal filter given by key, member_id, domain or alias (dead letters
    record the key)."""
    return (rt.registry.resolve(name) or name) if name else None


def cmd_dead_list(args: argparse.Namespace) -> int:
    rt = get_runtime()
    dead = rt.dead
    letters = list(dead.iter(_portal_filter(rt, args.portal), args.code, args.kind))
    if args.json:
        print_json([d.as_dict() for d in letters])
        return 0
    rows = [
        [d.id, d.kind, d.portal, d.code, d.attempts, jobreport.when(d.last_seen), d.description[:60]] for d in letters
    ]
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
    print_json(letter.as_dict())
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


def add_dead(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
