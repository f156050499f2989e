"""Rate limit (503) and operating limit (429) over HTTP, driven by the injected clock."""

from __future__ import annotations

import time

import httpx
import pytest

from emulator import Emulator, PortalInfo, max_in_window

from .conftest import DOMAIN, FakeClock, call, error_of

UNREAD = "im.dialog.unread"
OK = {"DIALOG_ID": "chat1", "MESSAGE_ID": 1}


def test_burst_then_503_then_recovery(emu: Emulator, clock: FakeClock, client: httpx.Client) -> None:
    info = emu.add_portal("rl.bitrix24.test", rate=1.0, burst=5, refused_fill_bucket=False)
    assert [call(client, info, UNREAD, OK).status_code for _ in range(5)] == [200] * 5
    r = call(client, info, UNREAD, OK)
    assert r.status_code == 503
    assert r.json() == {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}
    assert error_of(call(client, info, UNREAD, OK, token="bogus")) == (
        503,
        "QUERY_LIMIT_EXCEEDED",
    )  # before auth
    clock.advance(1.0)
    assert call(client, info, UNREAD, OK).status_code == 200
    assert call(client, info, UNREAD, OK).status_code == 503
    state = emu.state("rl.bitrix24.test")
    assert state["counters"]["accepted"] == 6 and state["counters"]["refused_503"] == 3
    assert state["counters"]["requests"] == 9
    assert len(state["accepted_times"]) == 6 and len(state["refused_times"]) == 3
    assert state["counters"]["by_error_code"]["QUERY_LIMIT_EXCEEDED"] == 3


@pytest.mark.parametrize(
    ("refused_fill", "after_3s", "recovery"),
    [
        # the docs' wording (the default): the 3 refused requests filled the bucket to 8; 3 s drain it to 5, so
        # all 4 are refused and each adds one more (9): one more fits only once it is down to 4, 5 s later
        (True, [503, 503, 503, 503], 5.0),
        # the other reading: refused requests never counted, 3 s drain 5 to 2, room for 3; then 1 s for one more
        (False, [200, 200, 200, 503], 1.0),
    ],
    ids=["refused-fill (default)", "refused-do-not-fill"],
)
def test_refused_requests_and_the_bucket(
    emu: Emulator, clock: FakeClock, client: httpx.Client, refused_fill: bool, after_3s: list[int], recovery: float
) -> None:
    domain = "burst.bitrix24.test"
    info = emu.add_portal(domain, rate=1.0, burst=5)
    assert emu.state(domain)["options"]["refused_fill_bucket"] is True  # the default
    if not refused_fill:  # the other reading, chosen through the admin API as another process would
        r = client.post(f"{emu.url}/_emulator/portals/{domain}/options", json={"refused_fill_bucket": False})
        assert r.status_code == 200 and r.json()["refused_fill_bucket"] is False
    burst = [call(client, info, UNREAD, OK).status_code for _ in range(8)]
    assert burst == [200] * 5 + [503] * 3
    clock.advance(3.0)
    assert [call(client, info, UNREAD, OK).status_code for _ in range(4)] == after_3s
    clock.advance(recovery - 0.25)
    assert call(client, info, UNREAD, OK).status_code == 503  # not yet (and under refused-fill this one counts)
    clock.advance(1.25 if refused_fill else 0.25)  # the refusal just sent cost refused-fill another second
    assert [call(client, info, UNREAD, OK).status_code for _ in range(2)] == [200, 503]
    counters = emu.state(domain)["counters"]
    assert counters["accepted"] == 5 + after_3s.count(200) + 1
    assert counters["refused_503"] == 3 + after_3s.count(503) + 2


def test_refused_fill_bucket_must_be_a_bool(emu: Emulator, portal: PortalInfo) -> None:
    with pytest.raises(ValueError, match="refused_fill_bucket"):
        emu.set_options(DOMAIN, refused_fill_bucket="no")


def test_plan_presets(emu: Emulator, client: httpx.Client) -> None:
    std = emu.add_portal("std.bitrix24.test")
    ent = emu.add_portal("ent.bitrix24.test", plan="enterprise")
    assert emu.state("ent.bitrix24.test")["options"]["rate"] == 5.0
    codes = [call(client, std, UNREAD, OK).status_code for _ in range(51)]
    assert codes.count(200) == 50 and codes[-1] == 503
    assert all(call(client, ent, UNREAD, OK).status_code == 200 for _ in range(60))  # other portal unaffected
    hook_codes = client.post(std.webhook_url + UNREAD, json=OK).status_code
    assert hook_codes == 503  # webhooks share the portal+IP bucket


def test_unlimited(emu: Emulator, client: httpx.Client) -> None:
    info = emu.add_portal("free.bitrix24.test", rate=0)
    assert all(call(client, info, UNREAD, OK).status_code == 200 for _ in range(120))


def test_real_clock_window(client: httpx.Client) -> None:
    """With the real clock: no window holds more than ``burst + rate * window`` accepted requests.

    Only upper bounds are asserted, so a slow or busy machine cannot make this flaky.
    """
    with Emulator() as emu:
        info = emu.add_portal("rt.bitrix24.test", rate=20.0, burst=10)
        deadline = time.monotonic() + 1.0
        sent = 0
        while time.monotonic() < deadline:
            call(client, info, UNREAD, OK)
            sent += 1
        state = emu.state("rt.bitrix24.test")
    accepted = state["accepted_times"]
    assert len(accepted) + len(state["refused_times"]) == sent
    assert len(accepted) >= min(sent, 10)
    assert max_in_window(accepted, 0.5) <= 10 + 20 * 0.5 + 1
    assert len(accepted) <= 10 + 20 * 1.2 + 1


def test_operating_block_and_reset(emu: Emulator, clock: FakeClock, client: httpx.Client) -> None:
    info = emu.add_portal("op.bitrix24.test", op_cost=100.0, operating_limit=250.0)
    seen = [call(client, info, UNREAD, OK).json()["time"] for _ in range(3)]
    assert [t["operating"] for t in seen] == [100, 200, 300]  # the third pushed it over and still completed
    assert seen[0]["operating_reset_at"] == pytest.approx(time.time() + 600, abs=5)
    assert all(type(t["operating_reset_at"]) is int for t in seen)  # a whole unix second (data-types.md#time)
    r = call(client, info, UNREAD, OK)
    assert r.status_code == 429
    assert r.json() == {
        "error": "OPERATION_TIME_LIMIT",
        "error_description": "Method is blocked due to operation time limit.",
    }
    assert call(client, info, "messageservice.sender.list").status_code == 200  # other methods still work
    assert client.post(info.webhook_url + UNREAD, json=OK).status_code == 200  # so does the webhook
    clock.advance(599)
    assert call(client, info, UNREAD, OK).status_code == 429
    clock.advance(1)  # the only bucket (all three calls fell in the first minute) expired
    assert call(client, info, UNREAD, OK).json()["time"]["operating"] == 100
    assert emu.state("op.bitrix24.test")["operating"][f"app:{info.client_id} {UNREAD}"] == 100


def test_operating_reset_at_is_the_first_calls_whole_second_plus_ten_minutes(client: httpx.Client) -> None:
    """limits.md: ``start`` 1778747192.910734 goes with ``operating_reset_at`` 1778747792 (cut, not rounded), and
    "when the time from operating_reset_at arrives, the sum of the time in the oldest basket is excluded": the
    bucket is gone at the reported second itself, not at the first call's fraction of a second after it."""
    clock = FakeClock(1000.0)
    offset = 1_700_000_000.75 - 1000.0  # the wall clock reads …000.75 when the fake monotonic one reads 1000
    with Emulator(clock=clock, wall_clock=lambda: clock.now + offset) as emu:
        info = emu.add_portal("reset.bitrix24.test", op_cost=100.0, operating_limit=150.0)
        r = call(client, info, UNREAD, OK)
        first = r.json()["time"]
        assert first["start"] == 1_700_000_000.75
        assert first["operating_reset_at"] == 1_700_000_600 and '"operating_reset_at":1700000600,' in r.text
        clock.advance(30.5)  # the same minute: the same bucket, the same reset
        second = call(client, info, UNREAD, OK).json()["time"]
        assert (second["operating"], second["operating_reset_at"]) == (200, 1_700_000_600)
        assert call(client, info, UNREAD, OK).status_code == 429
        clock.now = 1599.0  # wall …599.75: a quarter second before the reported reset
        assert call(client, info, UNREAD, OK).status_code == 429
        clock.now = 1599.25  # wall 1_700_000_600.0, the reported reset: the bucket is gone
        after = call(client, info, UNREAD, OK).json()["time"]
        assert (after["operating"], after["operating_reset_at"]) == (100, 1_700_001_200)


def test_op_costs_per_method(emu: Emulator, client: httpx.Client) -> None:
    info = emu.add_portal("opm.bitrix24.test", op_costs={UNREAD: 2.5})
    assert call(client, info, UNREAD, OK).json()["time"]["operating"] == 2.5
    assert call(client, info, "messageservice.sender.list").json()["time"]["operating"] == 0


def test_set_options_at_runtime(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    emu.set_options(DOMAIN, burst=1)
    assert call(client, portal, UNREAD, OK).status_code == 200
    assert call(client, portal, UNREAD, OK).status_code == 503
    emu.set_options(DOMAIN, rate=0)
    assert call(client, portal, UNREAD, OK).status_code == 200
