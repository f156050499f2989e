"""`b24q portal …`: add, list, remove and re-authorise portals, their SMS providers, and the keys that encrypt
their tokens at rest."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from edges import jobreport
from edges.cli.output import print_json
from edges.lifecycle import Lifecycle
from tasks.jobs import SENDER_ADD
from tasks.producer import reactivate, store_tokens
from workers.errors import B24QError, JobRefused
from workers.observe.status import text_table
from workers.portals.crypto import generate_key
from workers.runtime import get_runtime


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
    print_json(portal.public())
    return 0


def cmd_portal_list(args: argparse.Namespace) -> int:
    rt = get_runtime()
    portals = rt.registry.list()
    if args.json:
        print_json([p.public() for p in portals])
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
                jobreport.when(p.expires) if p.kind == "oauth" else "-",
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
    print_json({"providers": life.providers_for(portal), "pending": portal.providers_pending.split()})
    return 0


def _add_add(portal: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _add_auth(portal: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = portal.add_parser("auth", help="store a fresh token pair and resume parked jobs")
    p.add_argument("key", help="the portal: its key, member_id, domain or alias")
    p.add_argument("--json", help="Bitrix24 auth block as JSON")
    p.add_argument("--access-token", dest="access_token", help="the new access token")
    p.add_argument("--refresh-token", dest="refresh_token", help="the new refresh token")
    p.add_argument("--expires", type=float, help="the access token's expiry, unix time")
    p.add_argument("--endpoint", help="the portal's client_endpoint, if it changed")
    p.set_defaults(func=cmd_portal_auth)


def add_portal(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    portal = sub.add_parser("portal", help="manage portals").add_subparsers(dest="sub", required=True)
    _add_add(portal)
    p = portal.add_parser("list", help="every portal: key, domain, state, plan, limit, token expiry, parked jobs")
    p.add_argument("--json", action="store_true", help="machine-readable, every field but secrets")
    p.set_defaults(func=cmd_portal_list)
    p = portal.add_parser("remove", help="forget a portal (its jobs then end UNKNOWN_PORTAL)")
    p.add_argument("key", help="the portal's key")
    p.set_defaults(func=cmd_portal_remove)
    _add_auth(portal)
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
