"""Plain-text tables and the small bits of arithmetic every scenario shares.

Tables are aligned text (no dependency, pasteable into Markdown as a code block), so a run's output
can be recorded verbatim in `docs/benchmarks.md`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


def bucket_time(commands: int, rate: float, burst_used: int, per_request: int = 50) -> float:
    """Seconds to send `commands` from an empty bucket at full packing.

    R = ceil(commands / per_request) requests; the first `burst_used` go at once, then one every 1/rate s.
    (Without merging a job is one command; see `bench.workload.commands`.)
    """
    requests = math.ceil(commands / per_request)
    if rate <= 0:
        return 0.0
    return max(0.0, (requests - burst_used) / rate)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def fmt(value: float | int | str | None, digits: int = 1) -> str:
    """A number for a table cell: ints as is, floats with `digits` decimals, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ")
    if math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}".replace(",", " ")


def ratio(measured: float | None, limit: float | None, digits: int = 2) -> str:
    """measured / limit as a cell ('-' when there is no meaningful limit)."""
    if measured is None or limit is None or limit == 0 or math.isnan(measured) or math.isinf(limit):
        return "-"
    return f"{measured / limit:.{digits}f}"


@dataclass
class Table:
    """An aligned text table: the first column left-aligned, the others right-aligned."""

    title: str
    columns: Sequence[str] = ("metric", "limit", "measured", "ratio")
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        row = [str(c) for c in cells]
        row += [""] * (len(self.columns) - len(row))
        self.rows.append(row)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self) -> str:
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

        def line(cells: Sequence[str]) -> str:
            out = [cells[0].ljust(widths[0])]
            out += [cell.rjust(w) for cell, w in zip(cells[1:], widths[1:], strict=True)]
            return "  ".join(out).rstrip()

        rule = "  ".join("-" * w for w in widths)
        body = [self.title, line(list(self.columns)), rule, *(line(r) for r in self.rows)]
        body += [f"  {n}" for n in self.notes]
        return "\n".join(body)
