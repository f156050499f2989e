"""The ``time`` object every cloud response carries (facts §1.3; ``api-reference/data-types.md#time``).

``start``/``finish`` are unix times, ``duration`` the whole request, ``processing`` the method itself,
``date_start``/``date_finish`` ISO 8601, ``operating`` the method's accumulated seconds for this app or webhook
and ``operating_reset_at`` the unix time the oldest one-minute bucket drops out.  Self-hosted portals omit the
object (portal option ``time_block=False``).

``operating_reset_at`` is a whole unix second, sent as an integer ("Usually returned as an integer",
``data-types.md#time``; every example in the docs is one): the meter computes it as the oldest bucket's first
call cut to its second plus the window (see :mod:`emulator.operating`), so it is passed through, not rounded
here.  Only a test window that is not whole seconds makes it fractional, and then it is sent as it is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


def whole_or_exact(ts: float) -> int | float:
    """An integer when ``ts`` is a whole second (always, with a whole-second window), else ``ts`` itself."""
    return int(ts) if float(ts).is_integer() else round(ts, 6)


def time_block(
    start: float, finish: float, processing: float, operating: float, operating_reset_at: float
) -> dict[str, Any]:
    return {
        "start": round(start, 6),
        "finish": round(finish, 6),
        "duration": round(max(0.0, finish - start), 6),
        "processing": round(max(0.0, processing), 6),
        "date_start": iso(start),
        "date_finish": iso(finish),
        "operating_reset_at": whole_or_exact(operating_reset_at),
        "operating": round(operating, 6),
    }
