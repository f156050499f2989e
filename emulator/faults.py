"""Fault injection: the ways a real portal (or the network in front of it) misbehaves.

Faults are set per portal and drawn from the portal's own seeded ``random.Random`` so a failing test replays
the same sequence.  Each REST request draws once (see :func:`draw`), so what happened to request *n* depends only
on the seed and *n*, not on timing.

Where a fault strikes matters for idempotency tests, so each one is placed deliberately:

* ``drop_rate``: the connection is closed without an answer.  ``drop_phase="before"`` (default) drops it before
  anything is applied; ``"after"`` applies the call first (a reply lost on the way back).
* ``error_500_rate``: 500 ``INTERNAL_SERVER_ERROR`` before the call runs (nothing applied).
* ``slow_rate`` + ``slow_seconds``: the call IS applied, then the answer is held back; a client with a shorter
  timeout sees a timeout for a change that happened.
* ``garbage_rate``: ``garbage_kind="html"`` = an nginx-style 502 HTML page before the call runs; ``"truncated"`` =
  the call is applied and a 200 with half a JSON body is sent; ``"mixed"`` (default) picks one per hit.
* ``script``: a list of fault names (``drop``, ``error_500``, ``garbage_html``, ``garbage_truncated``, ``slow``)
  struck, one each, by the next REST requests before the rates are drawn, so a test can be sure every kind
  happened however its jobs were packed into requests.
* ``faults_left``: how many more faults the script and the rates may draw, one a request at most (``None``,
  the default: no bound).  A request refused before its fault could strike (deleted portal, overload, a 503,
  bad auth) still spends its draw, so a test's jobs meet at most this many faults, maybe fewer.  A seeded
  sequence can hold a dense run of faults that, reached late by one job retried alone, outlasts its retry
  budget; a bound below that budget lets a test say "every job is retried until applied" whatever the packing.
* ``latency``: seconds added to every REST answer (benchmarks).
* ``overload``: every call gets 503 ``OVERLOAD_LIMIT`` (a manual block; not counted by the rate limit).
* ``portal_deleted``: every call gets ``PORTAL_DELETED``.
* ``oauth_down``: the OAuth endpoint answers 503 (``True``/``"503"``) or drops the connection (``"drop"``) for
  refresh tokens of this portal.  ``oauth_delay``: seconds the OAuth server waits before handling a refresh.
* ``delivery_success_false``: ``imconnector.send.status.delivery`` answers ``SUCCESS: false`` with HTTP 200 and
  records nothing (the source can do this: facts §4.2).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

GARBAGE_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
OAUTH_DOWN_HTML = (
    b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    b"<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n"
)


@dataclass
class Faults:
    """The fault settings of one portal.  All off by default."""

    error_500_rate: float = 0.0
    drop_rate: float = 0.0
    drop_phase: str = "before"
    slow_rate: float = 0.0
    slow_seconds: float = 0.0
    garbage_rate: float = 0.0
    garbage_kind: str = "mixed"
    latency: float = 0.0
    overload: bool = False
    portal_deleted: bool = False
    oauth_down: bool | str = False
    oauth_delay: float = 0.0
    delivery_success_false: bool = False
    script: list[str] = field(default_factory=list)
    faults_left: int | None = None

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def update(self, **changes: Any) -> None:
        """Apply changes, rejecting unknown names and bad values early (a typo must not silently do nothing);
        a rejected change leaves every setting as it was."""
        unknown = set(changes) - self.names() - {"seed"}
        if unknown:
            raise ValueError(f"unknown fault(s): {sorted(unknown)}")
        changes.pop("seed", None)
        candidate = replace(self, **changes)
        candidate.script = list(candidate.script)
        candidate.check()
        for f in fields(self):
            setattr(self, f.name, getattr(candidate, f.name))

    def check(self) -> None:
        if self.drop_phase not in ("before", "after"):
            raise ValueError("drop_phase must be 'before' or 'after'")
        if self.garbage_kind not in ("mixed", "html", "truncated"):
            raise ValueError("garbage_kind must be 'mixed', 'html' or 'truncated'")
        unknown_script = set(self.script) - SCRIPTABLE
        if unknown_script:
            raise ValueError(f"script: unknown fault(s) {sorted(unknown_script)}; known: {sorted(SCRIPTABLE)}")
        if self.faults_left is not None and (
            isinstance(self.faults_left, bool) or not isinstance(self.faults_left, int) or self.faults_left < 0
        ):
            raise ValueError("faults_left must be a whole number >= 0, or null for no bound")
        if self.oauth_down not in (False, True, "503", "drop"):
            raise ValueError("oauth_down must be false, true, '503' or 'drop'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    """What the faults do to one REST request."""

    drop_before: bool = False
    drop_after: bool = False
    error_500: bool = False
    garbage_html: bool = False
    garbage_truncated: bool = False
    slow: float = 0.0
    latency: float = 0.0

    def any(self) -> bool:
        return self != Decision(latency=self.latency)


NO_FAULT = Decision()
SCRIPTABLE = {"drop", "error_500", "garbage_html", "garbage_truncated", "slow"}


def draw(faults: Faults, rng: random.Random) -> Decision:
    """One decision per request: the next scripted fault if any, else each rate drawn independently
    (precedence is applied by the caller), within ``faults_left``.  The caller holds the portal's lock."""
    if faults.faults_left is None:
        return _draw(faults, rng)
    if faults.faults_left == 0:
        return Decision(latency=faults.latency)
    decision = _draw(faults, rng)
    if decision.any():
        faults.faults_left -= 1
    return decision


def _draw(faults: Faults, rng: random.Random) -> Decision:
    if faults.script:
        name = faults.script.pop(0)
        return Decision(
            drop_before=name == "drop" and faults.drop_phase == "before",
            drop_after=name == "drop" and faults.drop_phase == "after",
            error_500=name == "error_500",
            garbage_html=name == "garbage_html",
            garbage_truncated=name == "garbage_truncated",
            slow=(faults.slow_seconds or 1.0) if name == "slow" else 0.0,
            latency=faults.latency,
        )
    if not (faults.error_500_rate or faults.drop_rate or faults.slow_rate or faults.garbage_rate):
        return Decision(latency=faults.latency) if faults.latency else NO_FAULT
    drop = faults.drop_rate > 0 and rng.random() < faults.drop_rate
    err = faults.error_500_rate > 0 and rng.random() < faults.error_500_rate
    garbage = faults.garbage_rate > 0 and rng.random() < faults.garbage_rate
    slow = faults.slow_rate > 0 and rng.random() < faults.slow_rate
    html = truncated = False
    if garbage:
        kind = faults.garbage_kind
        if kind == "mixed":
            kind = "html" if rng.random() < 0.5 else "truncated"
        html, truncated = kind == "html", kind == "truncated"
    return Decision(
        drop_before=drop and faults.drop_phase == "before",
        drop_after=drop and faults.drop_phase == "after",
        error_500=err,
        garbage_html=html,
        garbage_truncated=truncated,
        slow=faults.slow_seconds if slow else 0.0,
        latency=faults.latency,
    )
