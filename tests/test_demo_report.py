"""The demo's line per portal against its limit (`edges.demoreport.limit_line`): a steady rate only over a window
long enough to say one."""

from __future__ import annotations

from edges.demoreport import limit_line


def test_a_bucket_full_for_long_gives_the_steady_rate() -> None:
    burst = [i * 0.01 for i in range(45)]
    then = [0.45 + 0.5 * (i + 1) for i in range(40)]  # 2 requests/s for 20 s
    line = limit_line(burst + then, 2.0, 45, 50)
    assert line.startswith("steady state 2.00 requests/s of 2 allowed (1.00)"), line


def test_a_bucket_full_only_at_the_end_is_not_called_a_steady_rate() -> None:
    """Full only for its last seconds: over so short a window, the request or two the bucket still had room for
    read as a rate over the portal's (a demo printed "2.66 requests/s of 2 allowed"); the whole run is given."""
    burst = [i * 0.01 for i in range(45)]  # full at the 45th
    then = [0.44 + 0.5 * (i + 1) for i in range(7)]  # at the rate, for the last 3.5 s
    line = limit_line(burst + then, 2.0, 45, 50)
    assert line == (
        "whole run: 52 requests of the 58 its bucket allowed (0.90); full only for the last 3.5s, too short to give "
        "a steady rate"
    ), line


def test_a_bucket_never_full_says_the_pool_set_the_pace() -> None:
    line = limit_line([0.0, 1.0, 2.0], 2.0, 45, 50)
    assert (
        line
        == "never full: 3 requests of the 54 its bucket allowed (0.06); here the pool, not the portal, set the pace"
    )
