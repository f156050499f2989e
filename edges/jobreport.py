"""A job as an operator reads it: its ledger record and history, its dead letter or parked payload. `b24q job
show` prints it and the operator's console shows it (`edges.http.console`), so both tell the same story."""

from __future__ import annotations

import json
import time
from typing import Any

from workers.broker.recovery import Presence
from workers.runtime import Runtime


def when(ts: Any) -> str:
    """A unix time as local `YYYY-MM-DD HH:MM:SS`, `-` when there is none."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))
    except (TypeError, ValueError):
        return "-"


def running_on(rt: Runtime, record: dict[str, Any]) -> str:
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
    return f"{worker} (dead since {when(last)})" if last else f"{worker} (no heartbeat)"


def data(rt: Runtime, job_id: str) -> dict[str, Any] | None:
    """The job as plain data (`b24q job show --json`), or None when b24q knows nothing of it."""
    record = rt.ledger.get(job_id)
    letter = rt.dead.get(job_id)
    if record is None and letter is None:
        return None
    portal = (record or {}).get("portal") or (letter.portal if letter else "")
    return {
        **(record or {"id": job_id, "events": []}),
        "dead_letter": letter.as_dict() if letter else None,
        "parked": rt.parking.get(portal, job_id) if portal else None,
    }


def text(rt: Runtime, job_id: str) -> str | None:
    """The job as `b24q job show` prints it, or None when b24q knows nothing of it."""
    found = data(rt, job_id)
    if found is None:
        return None
    letter, parked = found["dead_letter"], found["parked"]
    out: list[str] = []
    if not found.get("kind") and letter is not None:
        out.append(f"job {job_id}: its ledger record has expired (ledger_ttl); the dead letter is kept")
    else:
        for key in ("id", "kind", "portal", "state", "runs", "failures", "last_error"):
            out.append(f"{key:>10}: {found.get(key, '')}")
        if found.get("state") == "running":
            out.append(f"{'worker':>10}: {running_on(rt, found)}")
        out.append(f"{'created':>10}: {when(found.get('created'))}")
        out.append(f"{'updated':>10}: {when(found.get('updated'))}")
        created = float(found.get("created") or 0)
        events = found["events"]
        trimmed = " (the ledger keeps the last 50 events)" if len(events) >= 50 else ""
        out.append(f"   history:{trimmed}")
        for event in events:
            extra = {k: v for k, v in event.items() if k not in ("t", "state")}
            offset = f"+{max(0.0, float(event['t']) - created):.3f}s" if created else ""
            out.append(
                f"    {when(event['t'])} {offset:>10}  {event['state']:<9} "
                f"{json.dumps(extra, ensure_ascii=False) if extra else ''}".rstrip()
            )
    if letter is not None:
        out.append(
            f"dead letter: {letter['code']} after {letter['attempts']} run(s); first {when(letter['first_seen'])}, "
            f"last {when(letter['last_seen'])}"
        )
        out.append(f"             {letter['description']}")
        out.append(f"    payload: {json.dumps(letter['payload'], ensure_ascii=False)}")
    if parked is not None:
        portal = found.get("portal") or (letter or {}).get("portal", "")
        out.append(f"     parked: until portal {portal} is re-authorised (b24q portal auth {portal} …)")
        out.append(f"    payload: {json.dumps(parked.get('kwargs'), ensure_ascii=False)}")
    return "\n".join(out)
