"""The `b24q` program: its parser, put together from each group's commands, and `main`, which runs one."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from edges.cli import contract, deadletters, jobs, observe, portals, serve
from workers.errors import B24QError
from workers.observe import logs
from workers.settings import get_settings

#: Each adds one command (and its subcommands), in the order `b24q --help` lists them.
COMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    jobs.add_enqueue,
    jobs.add_job,
    observe.add_status,
    observe.add_metrics,
    portals.add_portal,
    deadletters.add_dead,
    serve.add_serve,
    contract.add_schema,
    contract.add_apikey,
    serve.add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="b24q", description="Deliver message-state updates to Bitrix24 portals.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
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
