"""`b24q schema` and `b24q apikey new`: what a producer is given, the job kinds' JSON Schema (what /v1/jobs
accepts) and a key for the HTTP intake."""

from __future__ import annotations

import argparse

from edges.cli.output import print_json
from edges.http import apikeys
from tasks.jobs import KINDS
from tasks.schema import job_schema, job_schemas
from workers.errors import ConfigError
from workers.settings import API_KEY_ENTRY


def cmd_schema(args: argparse.Namespace) -> int:
    """The JSON Schema of one job kind, or of every kind (an object keyed by kind)."""
    print_json(job_schema(args.kind) if args.kind else job_schemas())
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


def add_schema(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of a job kind (all kinds if none is named)")
    p.add_argument("kind", nargs="?", choices=list(KINDS), help="the job kind (all kinds if none)")
    p.set_defaults(func=cmd_schema)


def add_apikey(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    apikey = sub.add_parser("apikey", help="API keys of the HTTP intake").add_subparsers(dest="sub", required=True)
    p = apikey.add_parser("new", help="print a new API key once, and its B24Q_API_KEYS entry")
    p.add_argument("--portals", help="comma-separated portals the key may post and read (default: every portal)")
    p.add_argument("--admin", action="store_true", help="an operator's key: signs in to the console at /console")
    p.set_defaults(func=cmd_apikey_new)
