"""The admin HTTP API and the ``python -m emulator`` READY handshake."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from emulator import Emulator, PortalInfo

from .conftest import call

ROOT = Path(__file__).resolve().parents[2]
UNREAD = "im.dialog.unread"


def test_admin_api_round_trip(emu: Emulator, client: httpx.Client) -> None:
    admin = f"{emu.url}/_emulator"
    assert client.get(f"{admin}/health").json() == {"ok": True, "url": emu.url}
    r = client.post(f"{admin}/portals", json={"domain": "adm.bitrix24.test", "plan": "enterprise", "op_cost": 1.5})
    assert r.status_code == 201
    data = r.json()
    assert set(data) == set(PortalInfo.__dataclass_fields__)
    assert data["webhook_url"].startswith(f"{emu.url}/adm.bitrix24.test/rest/1/") and data["oauth_url"] == emu.oauth_url
    info = PortalInfo(**data)
    assert client.post(f"{admin}/portals", json={"domain": "adm.bitrix24.test"}).status_code == 400
    assert client.get(f"{admin}/portals").json() == ["adm.bitrix24.test"]

    base = f"{admin}/portals/adm.bitrix24.test"
    assert client.post(f"{base}/senders", json={"code": "prov"}).json() == {"ok": True}
    assert client.post(f"{base}/messages", json={"code": "prov", "message_ids": ["a", "b"]}).json()["created"] == 2
    assert client.post(f"{base}/connectors", json={"connector": "Conn", "line": 3}).json() == {"ok": True}
    su = {"CODE": "prov", "MESSAGE_ID": "a", "STATUS": "sent"}
    assert call(client, info, "messageservice.message.status.update", su).status_code == 200
    delivery = {"CONNECTOR": "conn", "LINE": 3, "MESSAGES": [{"im": {"chat_id": 1, "message_id": 2}}]}
    assert call(client, info, "imconnector.send.status.delivery", delivery).status_code == 200

    state = client.get(f"{base}/state").json()
    assert state["options"]["plan"] == "enterprise" and state["options"]["burst"] == 250
    assert {r["message_id"]: r["count"] for r in state["statuses"]} == {"a": 1, "b": 0}
    assert state["connectors"] == [{"connector": "conn", "lines": [3]}]
    assert state["deliveries"][0]["count"] == 1
    assert state["counters"]["method_calls"] == {
        "messageservice.message.status.update": 1,
        "imconnector.send.status.delivery": 1,
    }

    assert client.post(f"{base}/faults", json={"latency": 0.01, "seed": 3}).json()["latency"] == 0.01
    assert client.post(f"{base}/faults", json={"nonsense": 1}).status_code == 400
    assert client.post(f"{base}/options", json={"burst": 7}).json()["burst"] == 7
    assert client.post(f"{base}/expire").json() == {"ok": True, "expired": 1}
    assert call(client, info, UNREAD, {"DIALOG_ID": "1", "MESSAGE_ID": 1}).status_code == 401
    second = PortalInfo(**client.post(f"{base}/tokens", json={"user_id": 5}).json())
    assert second.user_id == 5
    assert call(client, second, UNREAD, {"DIALOG_ID": "1", "MESSAGE_ID": 1}).status_code == 200
    # no handler bound for ONAPPUNINSTALL; the app's SMS provider goes with it (messageservice onRestAppDelete)
    uninstalled = client.post(f"{base}/uninstall", json={}).json()
    assert uninstalled == {"ok": True, "events": [], "handlers_removed": 0, "senders_removed": ["prov"]}
    assert call(client, second, UNREAD, {"DIALOG_ID": "1", "MESSAGE_ID": 1}).status_code == 401

    everything = client.get(f"{admin}/state").json()
    assert set(everything) == {"url", "portals", "oauth"} and list(everything["portals"]) == ["adm.bitrix24.test"]
    assert client.post(f"{admin}/reset", json={"keep_portals": True}).json() == {"ok": True}
    kept = client.get(f"{base}/state").json()
    assert kept["counters"]["requests"] == 0 and kept["statuses"][0]["count"] == 0
    client.post(f"{admin}/reset")
    assert client.get(f"{admin}/portals").json() == []
    assert client.get(f"{base}/state").status_code == 404
    assert client.post(f"{admin}/nope").status_code == 404
    assert client.post(f"{admin}/portals", content=b"not json").status_code == 400


def test_stop_cuts_keep_alive_connections(client: httpx.Client) -> None:
    emu = Emulator().start()
    info = emu.add_portal("ka.bitrix24.test")
    assert call(client, info, UNREAD, {"DIALOG_ID": "1", "MESSAGE_ID": 1}).status_code == 200
    emu.stop()
    try:
        call(client, info, UNREAD, {"DIALOG_ID": "1", "MESSAGE_ID": 1})
    except httpx.TransportError:
        pass
    else:
        raise AssertionError("a stopped emulator answered")


def test_cli_ready_handshake() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emulator",
            "--port",
            "0",
            "--portals",
            "2",
            "--sender",
            "sms",
            "--print-json",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        infos = [PortalInfo(**json.loads(proc.stdout.readline())) for _ in range(2)]
        ready = proc.stdout.readline().strip()
        assert ready.startswith("READY http://127.0.0.1:")
        url = ready.split(" ", 1)[1]
        assert [i.domain for i in infos] == ["portal-1.bitrix24.test", "portal-2.bitrix24.test"]
        assert all(i.client_endpoint.startswith(url) for i in infos)
        with httpx.Client(timeout=5) as client:
            su = {"CODE": "sms", "MESSAGE_ID": "any-1", "STATUS": "delivered"}  # auto_messages is on
            assert call(client, infos[1], "messageservice.message.status.update", su).status_code == 200
            dl = {"CONNECTOR": "whatever", "LINE": 1, "MESSAGES": [{"im": {"chat_id": 1, "message_id": 1}}]}
            assert call(client, infos[0], "imconnector.send.status.delivery", dl).status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        final = json.loads(out.strip().splitlines()[-1])
        assert final["portals"]["portal-2.bitrix24.test"]["statuses"][0]["statuses"] == ["delivered"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
