"""batch: mixed results, limits, nesting, halt, context carry-over, per-command time and operating."""

from __future__ import annotations

from typing import Any

import httpx

from emulator import Emulator, PortalInfo, build_query

from .conftest import DOMAIN, SENDER, call, error_of

SU = "messageservice.message.status.update"


def su(mid: str, status: str = "delivered") -> str:
    return f"{SU}?" + build_query({"CODE": SENDER, "MESSAGE_ID": mid, "STATUS": status})


def batch(client: httpx.Client, info: PortalInfo, cmd: Any, halt: int = 0, token: str | None = None) -> httpx.Response:
    return call(client, info, "batch", {"halt": halt, "cmd": cmd}, token=token)


def test_mixed_results(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    emu.seed_messages(DOMAIN, SENDER, ["m1"])
    cmd = {
        "ok": su("m1"),
        "missing": su("nope"),
        "unread": "im.dialog.unread?DIALOG_ID=chat5&MESSAGE_ID=9",
        "bad_unread": "im.dialog.unread?DIALOG_ID=chat5",
        "unknown": "crm.lead.list",
        "delivery": "imconnector.send.status.delivery?CONNECTOR=myconnector&LINE=1",
    }
    r = batch(client, portal, cmd)
    assert r.status_code == 200
    body = r.json()
    res = body["result"]
    assert res["result"] == {"ok": True, "unread": True}
    assert res["result_error"] == {
        "missing": {"error": "ERROR_MESSAGE_NOT_FOUND", "error_description": "Message not found!"},
        "bad_unread": {
            "error": "MESSAGE_ID_ERROR",
            "error_description": "First unread message id can't be empty",
        },
        "unknown": {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"},
        "delivery": {
            "error": "ERROR_ARGUMENT",
            "error_description": "Argument 'MESSAGES' is null or empty",
            "argument": "MESSAGES",
        },
    }
    assert res["result_total"] == [] and res["result_next"] == []
    assert set(res["result_time"]) == {"ok", "unread"}
    assert {"operating", "operating_reset_at", "start"} <= set(res["result_time"]["ok"])
    assert "time" in body
    state = emu.state(DOMAIN)
    assert state["counters"]["batches"] == 1 and state["counters"]["batch_commands"] == 6
    assert state["counters"]["accepted"] == 1  # one HTTP request for the rate limit
    assert state["counters"]["by_error_code"]["ERROR_MESSAGE_NOT_FOUND"] == 1


def test_empty_collections_are_lists_and_list_cmd(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    res = batch(client, portal, {"a": "crm.nothing"}).json()["result"]
    assert res["result"] == [] and res["result_time"] == []
    emu.seed_messages(DOMAIN, SENDER, ["x", "y"])
    res = batch(client, portal, [su("x"), su("y")]).json()["result"]
    assert res["result"] == [True, True]  # PHP array keyed 0..n-1 → JSON list
    assert res["result_error"] == []
    res = batch(client, portal, [su("x"), su("missing"), su("y")]).json()["result"]
    assert res["result"] == {"0": True, "2": True}
    assert list(res["result_error"]) == ["1"]


def test_more_than_fifty(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    emu.seed_messages(DOMAIN, SENDER, [f"m{i}" for i in range(55)])
    cmd = {f"c{i}": su(f"m{i}") for i in range(55)}
    res = batch(client, portal, cmd).json()["result"]
    assert len(res["result"]) == 50
    assert set(res["result_error"]) == {f"c{i}" for i in range(50, 55)}
    assert res["result_error"]["c50"] == {
        "error": "ERROR_BATCH_LENGTH_EXCEEDED",
        "error_description": "Max batch length exceeded",
    }
    applied = [r for r in emu.state(DOMAIN)["statuses"] if r["count"]]
    assert len(applied) == 50
    res = batch(client, portal, cmd, halt=1).json()["result"]
    assert len(res["result"]) == 50 and list(res["result_error"]) == ["c50"]


def test_halt_stops_at_first_error(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    emu.seed_messages(DOMAIN, SENDER, ["a", "c"])
    res = batch(client, portal, {"a": su("a"), "b": su("missing"), "c": su("c")}, halt=1).json()["result"]
    assert res["result"] == {"a": True} and list(res["result_error"]) == ["b"]
    assert [r["message_id"] for r in emu.state(DOMAIN)["statuses"] if r["count"]] == ["a"]


def test_nested_batch_not_allowed(portal: PortalInfo, client: httpx.Client) -> None:
    inner = "batch?" + build_query({"cmd": {"x": "im.dialog.unread?DIALOG_ID=1&MESSAGE_ID=1"}})
    res = batch(client, portal, {"nested": inner}).json()["result"]
    assert res["result_error"]["nested"] == {
        "error": "ERROR_BATCH_METHOD_NOT_ALLOWED",
        "error_description": "Method is not allowed for batch usage",
    }


def test_webhook_batch_has_no_app_context(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    emu.seed_messages(DOMAIN, SENDER, ["m1"])
    cmd = {
        "su": su("m1"),
        "unread": "im.dialog.unread?DIALOG_ID=1&MESSAGE_ID=1",
        "dl": "imconnector.send.status.delivery?CONNECTOR=c&LINE=1&MESSAGES[0][im][chat_id]=1",
    }
    res = client.post(portal.webhook_url + "batch.json", json={"cmd": cmd}).json()["result"]
    assert res["result"] == {"unread": True}
    assert res["result_error"]["su"]["error"] == "ACCESS_DENIED"
    assert res["result_error"]["dl"]["error"] == "WRONG_AUTH_TYPE"


def test_whole_batch_errors_are_top_level(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    emu.expire_tokens(DOMAIN)
    assert error_of(batch(client, portal, {"a": su("m1")})) == (401, "expired_token")
    emu.set_options(DOMAIN, burst=0)
    assert error_of(batch(client, portal, {"a": su("m1")})) == (503, "QUERY_LIMIT_EXCEEDED")


def test_batch_in_query_string_double_encoded(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    emu.seed_messages(DOMAIN, SENDER, ["q&1"])
    query = build_query({"cmd": {"k": su("q&1")}, "auth": portal.access_token})
    res = client.get(f"{portal.client_endpoint}batch.json?{query}").json()["result"]
    assert res["result"] == {"k": True}


def test_result_references(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    cmd = {
        "list": "messageservice.sender.list",
        "use": f"{SU}?CODE=$result[list][0]&MESSAGE_ID=r1&STATUS=sent",
    }
    emu.seed_messages(DOMAIN, SENDER, ["r1"])
    res = batch(client, portal, cmd).json()["result"]
    assert res["result"] == {"list": [SENDER], "use": True}


def test_sub_calls_count_against_their_own_operating(emu: Emulator, client: httpx.Client) -> None:
    info = emu.add_portal("op.bitrix24.test", op_cost=100.0, operating_limit=250.0)
    cmd = {f"u{i}": f"im.dialog.unread?DIALOG_ID=1&MESSAGE_ID={i + 1}" for i in range(4)}
    cmd["other"] = "messageservice.sender.list"
    body = batch(client, info, cmd).json()
    res = body["result"]
    assert [res["result_time"][f"u{i}"]["operating"] for i in range(3)] == [100, 200, 300]
    assert res["result_error"]["u3"]["error"] == "OPERATION_TIME_LIMIT"
    assert res["result_time"]["other"]["operating"] == 100
    assert body["time"]["operating"] == 0  # the outer batch is not counted
