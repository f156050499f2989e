"""Workloads: jobs of all four kinds whose effects the emulator records one by one.

Every job is built so that what it changes at the portal is unique to it (its own SMS message id,
its own open-line message, its own sender handler URL, its own unread message id). Then the
emulator's records answer both "was every job applied?" (lost) and "was any applied twice?"
(duplicates) without trusting b24q's own ledger.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Job = tuple[str, dict[str, Any]]

SENDER = "smsgw.bench"
CONNECTOR = "benchconnector"
LINE = 7

#: Shares of the mixed workload, close to what an SMS + open-lines integration sends.
MIX: tuple[tuple[str, float], ...] = (
    ("status-update", 0.40),
    ("delivery-confirmation", 0.25),
    ("sender-update", 0.10),
    ("mark-unread", 0.25),
)


def job(kind: str, portal: str, i: int) -> Job:
    """Job number `i` of `kind` for `portal`; `i` must be unique per portal (it keys the effect)."""
    if kind == "status-update":
        status = ("sent", "delivered", "undelivered", "failed")[i % 4]
        return kind, {"portal": portal, "code": SENDER, "message_id": f"sms-{i}", "status": status}
    if kind == "delivery-confirmation":
        message = {
            "im": {"chat_id": 1000 + i % 50, "message_id": i + 1},
            "message": {"id": [f"wa-{i}"], "date": 1_738_065_600 + i},
            "chat": {"id": f"chan-{i % 50}"},
        }
        return kind, {"portal": portal, "connector": CONNECTOR, "line": LINE, "messages": [message]}
    if kind == "sender-update":
        return kind, {"portal": portal, "code": SENDER, "handler": f"https://sms.example.com/b24/{i}"}
    if kind == "mark-unread":
        return kind, {"portal": portal, "dialog_id": f"chat{i + 1}", "message_id": i + 1}
    raise ValueError(f"unknown kind {kind!r}")


def mixed(portal: str, count: int, start: int = 0, seed: int = 7) -> list[Job]:
    """`count` jobs of all four kinds (shares in `MIX`), numbered from `start`."""
    rng = random.Random(f"{seed}:{portal}:{start}")
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    return [job(rng.choices(kinds, weights)[0], portal, start + n) for n in range(count)]


def portal_options() -> dict[str, Any]:
    """Emulator options that let every job of `mixed` succeed: the sender is registered, unknown SMS
    message ids and connectors are accepted (as if the portal had sent them)."""
    return {"auto_messages": True, "auto_connectors": True, "senders": [SENDER]}


@dataclass(frozen=True)
class Applied:
    """What a portal recorded: distinct effects, and extra applications of the same effect."""

    distinct: int
    duplicates: int

    def __add__(self, other: Applied) -> Applied:
        return Applied(self.distinct + other.distinct, self.duplicates + other.duplicates)


def _tally(keys: Iterable[Any]) -> Applied:
    counts = Counter(keys)
    return Applied(len(counts), sum(c - 1 for c in counts.values()))


def applied(state: Mapping[str, Any]) -> Applied:
    """Count effects in one portal's emulator state (`Emulator.state(domain)`)."""
    statuses = _tally((s["code"].lower(), s["message_id"]) for s in state["statuses"] for _ in range(int(s["count"])))
    deliveries = _tally(
        (d["connector"], d["line"], d["chat_id"], d["message_id"])
        for d in state["deliveries"]
        for _ in range(int(d["count"]))
    )
    senders = _tally(u.get("HANDLER") for s in state["sender_updates"] for u in s["updates"])
    unread = _tally((u["dialog_id"], m) for u in state["unread"] for m in u["message_ids"])
    return statuses + deliveries + senders + unread


#: Job kinds whose calls b24q merges into one command when they share these payload fields
#: (`tasks.models.DELIVERY_MERGE`: delivery confirmations for one CONNECTOR and LINE).
MERGED_BY: dict[str, tuple[str, ...]] = {"delivery-confirmation": ("connector", "line")}


def commands(jobs: Iterable[Job], merge_max: int) -> int:
    """Commands the jobs need at full packing: one per job, except mergeable ones, which share a
    command per `merge_max` items with the same key. R = ceil(commands / 50) requests."""
    plain = 0
    items: Counter[tuple[Any, ...]] = Counter()
    for kind, payload in jobs:
        key = MERGED_BY.get(kind)
        if key is None or merge_max <= 1:
            plain += 1
        else:
            items[(kind, *(payload[k] for k in key))] += len(payload.get("messages") or [1])
    return plain + sum(-(-n // merge_max) for n in items.values())


#: Each message's delivery reports, in the order an SMS gateway learns them.
REPORT_STORIES = (
    ("queued", "sent", "delivered"),
    ("queued", "sent", "undelivered"),
    ("sent", "delivered"),
    ("queued", "failed"),
    ("queued", "sent"),
)


def delivery_reports(portal: str, code: str, messages: int, seed: int = 5) -> tuple[list[Job], dict[str, str]]:
    """Status reports of `messages` SMS, interleaved across messages as a gateway receives them (each
    message's own in order); and each message's last reported status."""
    rng = random.Random(seed)
    pending = {f"sms-{i}": list(rng.choice(REPORT_STORIES)) for i in range(messages)}
    last = {m: story[-1] for m, story in pending.items()}
    jobs: list[Job] = []
    while pending:
        message = rng.choice(sorted(pending))
        status = pending[message].pop(0)
        if not pending[message]:
            del pending[message]
        jobs.append(("status-update", {"portal": portal, "code": code, "message_id": message, "status": status}))
    return jobs, last
