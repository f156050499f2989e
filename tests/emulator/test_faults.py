"""Fault injection: 500, dropped connections, garbage, slow-after-apply, latency, overload, deleted portal."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from emulator import Emulator, PortalInfo

from .conftest import DOMAIN, SENDER, call, error_of

SU = "messageservice.message.status.update"


def _applied(emu: Emulator, mid: str) -> list[str]:
    return next(r["statuses"] for r in emu.state(DOMAIN)["statuses"] if r["message_id"] == mid)


@pytest.fixture
def seeded(emu: Emulator, portal: PortalInfo) -> PortalInfo:
    emu.seed_messages(DOMAIN, SENDER, ["m1"])
    return portal


def _su(client: httpx.Client, info: PortalInfo) -> httpx.Response:
    return call(client, info, SU, {"CODE": SENDER, "MESSAGE_ID": "m1", "STATUS": "delivered"})


def test_error_500_applies_nothing(emu: Emulator, seeded: PortalInfo, client: httpx.Client) -> None:
    emu.set_faults(DOMAIN, error_500_rate=1.0)
    r = _su(client, seeded)
    assert r.status_code == 500 and r.json()["error"] == "INTERNAL_SERVER_ERROR"
    assert _applied(emu, "m1") == []


def test_drop_before_and_after(emu: Emulator, seeded: PortalInfo, client: httpx.Client) -> None:
    emu.set_faults(DOMAIN, drop_rate=1.0)
    with pytest.raises(httpx.TransportError):
        _su(client, seeded)
    assert _applied(emu, "m1") == []
    emu.set_faults(DOMAIN, drop_phase="after")
    with pytest.raises(httpx.TransportError):
        _su(client, seeded)
    assert _applied(emu, "m1") == ["delivered"]
    emu.set_faults(DOMAIN, drop_rate=0.0)
    assert _su(client, seeded).status_code == 200  # the client's pool recovers
    assert emu.state(DOMAIN)["counters"]["faults"] == {"drop": 1, "drop_after": 1}


def test_garbage(emu: Emulator, seeded: PortalInfo, client: httpx.Client) -> None:
    emu.set_faults(DOMAIN, garbage_rate=1.0, garbage_kind="html")
    r = _su(client, seeded)
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")
    assert _applied(emu, "m1") == []
    emu.set_faults(DOMAIN, garbage_kind="truncated")
    r = _su(client, seeded)
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        r.json()
    assert _applied(emu, "m1") == ["delivered"]


def test_slow_answer_after_apply(emu: Emulator, seeded: PortalInfo) -> None:
    emu.set_faults(DOMAIN, slow_rate=1.0, slow_seconds=1.0)
    with httpx.Client(timeout=0.3) as impatient, pytest.raises(httpx.ReadTimeout):
        _su(impatient, seeded)
    assert _applied(emu, "m1") == ["delivered"]  # applied although the client saw a timeout


def test_latency(emu: Emulator, seeded: PortalInfo, client: httpx.Client) -> None:
    emu.set_faults(DOMAIN, latency=0.2)
    started = time.monotonic()
    assert _su(client, seeded).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_overload_and_deleted(emu: Emulator, seeded: PortalInfo, client: httpx.Client) -> None:
    emu.set_faults(DOMAIN, overload=True)
    r = _su(client, seeded)
    assert r.status_code == 503
    assert r.json() == {"error": "OVERLOAD_LIMIT", "error_description": "REST API is blocked due to overload"}
    emu.set_faults(DOMAIN, overload=False, portal_deleted=True)
    assert error_of(_su(client, seeded)) == (500, "PORTAL_DELETED")
    assert _applied(emu, "m1") == []


def test_seeded_rng_is_reproducible(client: httpx.Client) -> None:
    def run() -> list[int]:
        with Emulator(seed=7) as emu:
            info = emu.add_portal("r.bitrix24.test", rate=0)
            emu.set_faults("r.bitrix24.test", error_500_rate=0.5)
            return [
                call(client, info, "im.dialog.unread", {"DIALOG_ID": "1", "MESSAGE_ID": 1}).status_code
                for _ in range(30)
            ]

    first, second = run(), run()
    assert first == second and 500 in first and 200 in first


def test_unknown_fault_rejected(emu: Emulator, portal: PortalInfo) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        emu.set_faults(DOMAIN, error_rate=1.0)


def test_script_strikes_each_named_fault_once_in_order(emu: Emulator, seeded: PortalInfo, client: httpx.Client) -> None:
    emu.set_faults(DOMAIN, script=["error_500", "garbage_html", "drop", "garbage_truncated"])
    assert _su(client, seeded).status_code == 500
    assert _su(client, seeded).status_code == 502
    with pytest.raises(httpx.TransportError):
        _su(client, seeded)
    truncated = _su(client, seeded)
    with pytest.raises(json.JSONDecodeError):
        truncated.json()
    assert _su(client, seeded).status_code == 200  # the script is spent: no rates set, no more faults
    assert emu.state(DOMAIN)["counters"]["faults"] == {
        "error_500": 1,
        "garbage_html": 1,
        "drop": 1,
        "garbage_truncated": 1,
    }
    with pytest.raises(ValueError, match="script"):
        emu.set_faults(DOMAIN, script=["meteor"])


def test_faults_left_bounds_how_many_requests_are_struck(
    emu: Emulator, seeded: PortalInfo, client: httpx.Client
) -> None:
    emu.set_faults(DOMAIN, error_500_rate=1.0, script=["garbage_html"], faults_left=3)
    assert [_su(client, seeded).status_code for _ in range(5)] == [502, 500, 500, 200, 200]
    assert emu.state(DOMAIN)["counters"]["faults"] == {"garbage_html": 1, "error_500": 2}
    assert _applied(emu, "m1") == ["delivered", "delivered"]
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="faults_left"):
            emu.set_faults(DOMAIN, error_500_rate=0.0, faults_left=bad)
    faults = emu.state(DOMAIN)["faults"]
    assert (faults["error_500_rate"], faults["faults_left"]) == (1.0, 0)  # a refused change changes nothing
    emu.set_faults(DOMAIN, faults_left=None)  # no bound again
    assert _su(client, seeded).status_code == 500
