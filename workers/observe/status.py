"""What the pool looks like right now, read from Redis (and from the workers, for `b24q status`).

`snapshot()` reads queues, portals and dead letters in a few pipelined round trips, never a token:
the metrics endpoint's collector (`workers.observe.gauges`) builds its gauges from it at every scrape,
and `b24q status` shows it, together with the workers that answer a broadcast within `timeout`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from celery import Celery

from workers import keys, rabbitmq
from workers.portals.limits import Limits
from workers.redaction import redis_url
from workers.runtime import Runtime
from workers.settings import Settings

_PORTAL_FIELDS = ("kind", "state", "reason", "plan", "rate", "burst", "expires")


def snapshot(rt: Runtime, portals: Sequence[str] | None = None, dead_letters: bool = True) -> dict[str, Any]:
    """Queues, portals and dead letters as plain data (see `b24q status --json`); without `dead_letters`, their
    counts by reason are left out (a read of every letter: a view that does not show them need not pay it)."""
    s = rt.settings
    names = rt.registry.keys() if portals is None else list(portals)
    held = rt.holds.holds(names)
    replies = _read(rt, names)

    seconds, micros = next(replies)
    now = seconds + micros / 1e6
    by_priority = {str(step): int(next(replies)) for step in keys.PRIORITY_STEPS}
    unacked = int(next(replies))
    token_stats: dict[str, int] = {k.decode(): int(v) for k, v in next(replies).items()}
    open_jobs = int(next(replies))
    stalest = next(replies)

    rows: list[dict[str, Any]] = []
    for key in names:
        row = _portal_row(key, replies, now, held.get(key, {}), token_stats, s)
        if row is not None:
            rows.append(row)
    dead = rt.dead.counts() if dead_letters else {}
    queues: list[dict[str, Any]] = [{"name": s.queue, "depth": sum(by_priority.values()), "by_priority": by_priority}]
    broker = "redis"
    if s.on_rabbitmq:
        queues, unacked_or_none, broker = _rabbitmq_queues(s.broker_url, s.queue), None, redis_url(s.broker_url)
    return {
        "time": now,
        "redis": redis_url(s.redis_url),
        "broker": broker,
        "queues": queues,
        "unacked": unacked if not s.on_rabbitmq else unacked_or_none,
        "open_jobs": {"count": open_jobs, "oldest_idle_s": round(max(0.0, now - stalest[0][1]), 1) if stalest else 0.0},
        "portals": rows,
        "dead_letters": {"total": sum(dead.values()), "by_reason": dict(sorted(dead.items()))},
    }


def _read(rt: Runtime, names: Sequence[str]) -> Iterator[Any]:
    """One pipelined round trip: the server's clock, the queue, the open jobs, then six replies per portal
    (read in this order by `snapshot` and `_portal_row`)."""
    s = rt.settings
    pipe = rt.redis.pipeline(transaction=False)
    pipe.time()
    for step in keys.PRIORITY_STEPS:
        pipe.llen(keys.queue(s.queue, step))
    pipe.hlen(keys.UNACKED)
    pipe.hgetall(rt.keys.token_stats())
    pipe.zcard(rt.keys.open_jobs())
    pipe.zrange(rt.keys.open_jobs(), 0, 0, withscores=True)  # the job longest without progress
    for key in names:
        pipe.hmget(rt.keys.portal(key), list(_PORTAL_FIELDS))
        pipe.get(rt.keys.backlog(key))
        pipe.hlen(rt.keys.parked(key))
        pipe.get(rt.keys.bucket(key))
        pipe.llen(rt.keys.calls(key))
        pipe.hgetall(rt.keys.outcomes(key))
    return iter(pipe.execute())


def _portal_row(
    key: str,
    replies: Iterator[Any],
    now: float,
    held: Mapping[str, float],
    token_stats: Mapping[str, int],
    s: Settings,
) -> dict[str, Any] | None:
    """A portal's row from its six replies (always taken), or None when it is in the index but its record is gone."""
    fields = dict(zip(_PORTAL_FIELDS, (v.decode() if v is not None else None for v in next(replies)), strict=True))
    backlog, parked, tat, waiting, ended = (next(replies) for _ in range(5))
    if fields["kind"] is None:  # in the index but its record is gone
        return None
    rate, burst = float(fields["rate"] or 0), int(float(fields["burst"] or 0))
    limits = Limits.of(fields["plan"] or "standard", rate, burst, s)
    level = max(0.0, (float(tat) - now) * limits.our_rate) if tat is not None and limits.our_rate > 0 else 0.0
    expires = float(fields["expires"] or 0)
    return {
        "key": key,
        "kind": fields["kind"],
        "state": fields["state"] or "active",
        "reason": fields["reason"] or "",
        "rate": limits.rate,
        "burst": limits.burst,
        "limiter_level": round(level, 2),
        "limiter_capacity": limits.our_burst,
        "held": {m: until for m, until in held.items() if until > now},
        "token_expires": expires if fields["kind"] == "oauth" and expires else None,
        "token_refreshed": token_stats.get(f"{key}:refreshed", 0),
        "token_refresh_failed": token_stats.get(f"{key}:refresh_failed", 0),
        "token_refresh_unavailable": token_stats.get(f"{key}:refresh_unavailable", 0),
        "backlog": int(backlog or 0),
        "waiting_calls": int(waiting or 0),
        "parked": int(parked or 0),
        "outcomes": {k.decode(): int(v) for k, v in sorted(ended.items())},
    }


def _rabbitmq_queues(url: str, queue: str) -> list[dict[str, Any]]:
    """b24q's queues on RabbitMQ, ready messages in each (a lane is a queue there, not a priority step).
    RabbitMQ does not tell an AMQP client how many messages its consumers hold: see its own tools for that."""
    try:
        found = rabbitmq.depths(url, queue)
    except Exception:  # RabbitMQ unreachable: the rest of the view still shows
        return [{"name": name, "depth": None, "by_priority": {"-": None}} for name in rabbitmq.names(queue)]
    return [{"name": name, "depth": n, "by_priority": {"-": n}} for name, n in found.items()]


def workers(app: Celery, timeout: float = 1.0) -> dict[str, Any]:
    """The workers that answer a `stats` broadcast within `timeout` seconds."""
    started = time.monotonic()
    try:
        replies = app.control.inspect(timeout=timeout).stats() or {}
    except Exception as exc:  # broker unreachable: report it, do not fail the whole view
        return {"error": f"{type(exc).__name__}: {exc}", "answered": []}
    answered = []
    for name, stats in sorted(replies.items()):
        pool = stats.get("pool") or {}
        answered.append(
            {
                "name": name,
                "pid": stats.get("pid"),
                "concurrency": pool.get("max-concurrency"),
                "processed": sum((stats.get("total") or {}).values()),
                "uptime": stats.get("uptime"),
            }
        )
    return {"answered": answered, "timeout": timeout, "seconds": round(time.monotonic() - started, 2)}


def collect(rt: Runtime, app: Celery, timeout: float = 1.0, portals: Sequence[str] | None = None) -> dict[str, Any]:
    """Everything `b24q status` shows."""
    status = snapshot(rt, portals)
    status["workers"] = workers(app, timeout)
    return status


# --- text ----------------------------------------------------------------------------------------


def text_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    if seconds < 90:
        return f"{sign}{seconds:.0f}s"
    if seconds < 5400:
        return f"{sign}{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{sign}{seconds / 3600:.1f}h"
    return f"{sign}{seconds / 86400:.1f}d"


def render(status: dict[str, Any]) -> str:
    """One screen of text."""
    now = float(status["time"])
    out = [f"b24q status  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}  redis {status['redis']}", ""]
    out += _render_queues(status)
    out.append("")
    out += _render_workers(status.get("workers") or {})
    out.append("")
    out += _render_portals(status["portals"], now)
    out.append("")
    dead = status["dead_letters"]
    by_reason = ", ".join(f"{code} {n}" for code, n in dead["by_reason"].items())
    out.append(f"dead letters: {dead['total']}" + (f" ({by_reason})" if by_reason else ""))
    return "\n".join(out)


def _render_queues(status: dict[str, Any]) -> list[str]:
    steps = list(status["queues"][0]["by_priority"]) if status["queues"] else []
    rows = [[q["name"], q["depth"], *(q["by_priority"][p] for p in steps)] for q in status["queues"]]
    out = [text_table(rows, ["queue", "depth", *(f"p{p}" for p in steps)])]
    if status["unacked"] is None:
        out.append(f"broker {status.get('broker')}: messages held by workers are not reported over AMQP")
    else:
        out.append(f"unacked (with workers, incl. scheduled retries): {status['unacked']}")
    return out


def _render_workers(w: dict[str, Any]) -> list[str]:
    if w.get("error"):
        return [f"workers: broker error: {w['error']}"]
    if not w.get("answered"):
        return [f"workers: none answered within {w.get('timeout', '?')}s"]
    rows = [
        [x["name"], x["pid"], x["concurrency"], x["processed"], _duration(float(x["uptime"] or 0))]
        for x in w["answered"]
    ]
    return [f"workers: {len(rows)} answered", text_table(rows, ["worker", "pid", "concurrency", "processed", "uptime"])]


#: the columns of the portals' table, in the order `_portal_cells` gives them
_PORTAL_COLUMNS = (
    "portal",
    "kind",
    "state",
    "limiter",
    "held",
    "token expires",
    "backlog",
    "waiting",
    "parked",
    "applied/superseded/dead",
    "reason",
)


def _render_portals(portals: list[dict[str, Any]], now: float) -> list[str]:
    if not portals:
        return ["portals: none registered"]
    rows = [_portal_cells(p, now) for p in portals]
    return [f"portals: {len(rows)}", text_table(rows, _PORTAL_COLUMNS)]


def _portal_cells(p: dict[str, Any], now: float) -> list[Any]:
    held = ", ".join(f"{m} {_duration(u - now)}" for m, u in sorted(p["held"].items())) or "-"
    token = "-"
    if p["token_expires"]:
        left = p["token_expires"] - now
        token = f"in {_duration(left)}" if left >= 0 else f"expired {_duration(-left)} ago"
    if p["token_refreshed"] or p["token_refresh_failed"]:
        token += f" ({p['token_refreshed']} refreshed, {p['token_refresh_failed']} refused)"
    return [
        p["key"],
        p["kind"],
        p["state"],
        f"{p['limiter_level']:g}/{p['limiter_capacity']} @{p['rate']:g}/s",
        held,
        token,
        p["backlog"],
        p["waiting_calls"],
        p["parked"],
        "/".join(str(p["outcomes"].get(o, 0)) for o in ("applied", "superseded", "dead")),
        p["reason"][:50],
    ]
