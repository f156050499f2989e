"""Each method over HTTP: success, every documented error (code + status), app vs webhook context."""

from __future__ import annotations

import httpx
import pytest

from emulator import Emulator, PortalInfo

from .conftest import CONNECTOR, DOMAIN, SENDER, call, error_of, hook

STATUS_UPDATE = "messageservice.message.status.update"
DELIVERY = "imconnector.send.status.delivery"
SENDER_UPDATE = "messageservice.sender.update"
UNREAD = "im.dialog.unread"

TIME_KEYS = {
    "start",
    "finish",
    "duration",
    "processing",
    "date_start",
    "date_finish",
    "operating",
    "operating_reset_at",
}


def _statuses(emu: Emulator, message_id: str) -> list[str]:
    rows = [r for r in emu.state(DOMAIN)["statuses"] if r["message_id"] == message_id]
    return rows[0]["statuses"] if rows else []


# --- messageservice.message.status.update -----------------------------------------------------------------


def test_status_update_success_records_and_has_time(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    emu.seed_messages(DOMAIN, SENDER, ["m1"])
    r = call(client, portal, STATUS_UPDATE, {"CODE": SENDER, "MESSAGE_ID": "m1", "STATUS": "delivered"})
    assert r.status_code == 200
    body = r.json()
    assert body["result"] is True
    assert set(body["time"]) == TIME_KEYS
    assert body["time"]["operating"] == 0
    r = call(
        client,
        portal,
        STATUS_UPDATE + ".json",
        {"code": SENDER.upper(), "message_id": "m1", "status": "delivered"},
    )
    assert r.status_code == 200  # keys and CODE are case-insensitive; duplicates are visible
    row = next(r for r in emu.state(DOMAIN)["statuses"] if r["message_id"] == "m1")
    assert row["statuses"] == ["delivered", "delivered"] and row["count"] == 2


@pytest.mark.parametrize(
    ("params", "code", "text"),
    [
        ({"MESSAGE_ID": "m1", "STATUS": "sent"}, "ERROR_SENDER_VALIDATION_FAILURE", "Empty sender code!"),
        (
            {"CODE": "bad code!", "MESSAGE_ID": "m1", "STATUS": "sent"},
            "ERROR_SENDER_VALIDATION_FAILURE",
            "Wrong sender code!",
        ),
        ({"CODE": SENDER, "STATUS": "sent"}, "ERROR_MESSAGE_NOT_FOUND", "Message not found!"),
        (
            {"CODE": SENDER, "MESSAGE_ID": "m1", "STATUS": "read"},
            "ERROR_MESSAGE_STATUS_INCORRECT",
            "Message status incorrect!",
        ),
        ({"CODE": SENDER, "MESSAGE_ID": "m1"}, "ERROR_MESSAGE_STATUS_INCORRECT", "Message status incorrect!"),
        (
            {"CODE": SENDER, "MESSAGE_ID": "nope", "STATUS": "sent"},
            "ERROR_MESSAGE_NOT_FOUND",
            "Message not found!",
        ),
        (
            {"CODE": "", "MESSAGE_ID": "", "STATUS": "x"},
            "ERROR_SENDER_VALIDATION_FAILURE",
            "Empty sender code!",
        ),
        ({"CODE": SENDER, "MESSAGE_ID": "", "STATUS": "x"}, "ERROR_MESSAGE_NOT_FOUND", "Message not found!"),
    ],
)
def test_status_update_errors(
    emu: Emulator, portal: PortalInfo, client: httpx.Client, params: dict[str, str], code: str, text: str
) -> None:
    emu.seed_messages(DOMAIN, SENDER, ["m1"])
    r = call(client, portal, STATUS_UPDATE, params)
    assert r.status_code == 400
    assert r.json() == {"error": code, "error_description": text}
    assert _statuses(emu, "m1") == []


def test_status_update_is_scoped_to_the_app(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    emu.seed_messages(DOMAIN, SENDER, ["m9"], client_id="other.app")
    r = call(client, portal, STATUS_UPDATE, {"CODE": SENDER, "MESSAGE_ID": "m9", "STATUS": "sent"})
    assert error_of(r) == (400, "ERROR_MESSAGE_NOT_FOUND")


def test_status_update_via_webhook_is_denied(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    emu.seed_messages(DOMAIN, SENDER, ["m1"])
    r = hook(client, portal, STATUS_UPDATE, {"CODE": SENDER, "MESSAGE_ID": "m1", "STATUS": "sent"})
    assert r.status_code == 403
    assert r.json() == {
        "error": "ACCESS_DENIED",
        "error_description": "Access denied! Application context required",
    }


def test_status_update_auto_messages(emu: Emulator, client: httpx.Client) -> None:
    info = emu.add_portal("auto.bitrix24.test", auto_messages=True, senders=["prov"])
    r = call(client, info, STATUS_UPDATE, {"CODE": "prov", "MESSAGE_ID": "anything-1", "STATUS": "sent"})
    assert r.status_code == 200
    r = call(client, info, STATUS_UPDATE, {"CODE": "unregistered", "MESSAGE_ID": "x", "STATUS": "sent"})
    assert error_of(r) == (400, "ERROR_MESSAGE_NOT_FOUND")
    rows = emu.state("auto.bitrix24.test")["statuses"]
    assert rows == [
        {
            "client_id": info.client_id,
            "code": "prov",
            "message_id": "anything-1",
            "seeded": False,
            "statuses": ["sent"],
            "count": 1,
        }
    ]


def test_status_update_non_author_needs_admin(emu: Emulator, client: httpx.Client) -> None:
    info = emu.add_portal("noadmin.bitrix24.test", admin=False, senders=["prov"])
    emu.seed_messages("noadmin.bitrix24.test", "prov", ["mine"])
    emu.seed_messages("noadmin.bitrix24.test", "prov", ["theirs"], author_id=99)
    assert (
        call(client, info, STATUS_UPDATE, {"CODE": "prov", "MESSAGE_ID": "mine", "STATUS": "sent"}).status_code == 200
    )
    r = call(client, info, STATUS_UPDATE, {"CODE": "prov", "MESSAGE_ID": "theirs", "STATUS": "sent"})
    assert r.status_code == 403
    assert r.json() == {"error": "ACCESS_DENIED", "error_description": "Access denied!"}


def test_form_encoded_and_get(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    emu.seed_messages(DOMAIN, SENDER, ["f1", "g1"])
    r = client.post(
        portal.client_endpoint + STATUS_UPDATE,
        data={"CODE": SENDER, "MESSAGE_ID": "f1", "STATUS": "sent", "auth": portal.access_token},
    )
    assert r.status_code == 200
    r = client.get(
        portal.client_endpoint + STATUS_UPDATE + ".json",
        params={"CODE": SENDER, "MESSAGE_ID": "g1", "STATUS": "failed", "auth": portal.access_token},
    )
    assert r.status_code == 200
    assert _statuses(emu, "f1") == ["sent"] and _statuses(emu, "g1") == ["failed"]


# --- imconnector.send.status.delivery ---------------------------------------------------------------------

MESSAGES = [
    {
        "im": {"chat_id": 323, "message_id": 85911},
        "message": {"id": ["ext-1"], "date": 1738065600},
        "chat": {"id": "channel-123"},
    }
]


def test_delivery_success_and_record(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    params = {"CONNECTOR": CONNECTOR, "LINE": 107, "MESSAGES": MESSAGES}
    r = call(client, portal, DELIVERY, params)
    assert r.status_code == 200
    assert r.json()["result"] == {"SUCCESS": True, "DATA": []}
    upper = {
        "connector": CONNECTOR.upper(),
        "line": "107",
        "messages": [{"IM": {"CHAT_ID": "323", "MESSAGE_ID": "85911"}}],
    }
    assert call(client, portal, DELIVERY, upper).status_code == 200  # MESSAGES keys are lower-cased
    assert emu.state(DOMAIN)["deliveries"] == [
        {"connector": CONNECTOR, "line": 107, "chat_id": 323, "message_id": 85911, "count": 2}
    ]


def test_delivery_form_encoded_php_arrays(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    form = {
        "CONNECTOR": CONNECTOR,
        "LINE": "5",
        "MESSAGES[0][im][chat_id]": "1",
        "MESSAGES[0][im][message_id]": "2",
        "auth": portal.access_token,
    }
    r = client.post(portal.client_endpoint + DELIVERY, data=form)
    assert r.status_code == 200, r.text
    assert emu.state(DOMAIN)["deliveries"][0]["message_id"] == 2


@pytest.mark.parametrize(
    ("params", "argument"),
    [
        ({}, "CONNECTOR"),
        ({"CONNECTOR": None, "LINE": 1, "MESSAGES": MESSAGES}, "CONNECTOR"),
        ({"CONNECTOR": CONNECTOR, "MESSAGES": MESSAGES}, "LINE"),
        ({"CONNECTOR": CONNECTOR, "LINE": "", "MESSAGES": MESSAGES}, "LINE"),
        ({"CONNECTOR": CONNECTOR, "LINE": 1}, "MESSAGES"),
        ({"CONNECTOR": CONNECTOR, "LINE": 1, "MESSAGES": []}, "MESSAGES"),
    ],
)
def test_delivery_argument_errors(portal: PortalInfo, client: httpx.Client, params: dict, argument: str) -> None:
    r = call(client, portal, DELIVERY, params)
    assert r.status_code == 400
    assert r.json() == {
        "error": "ERROR_ARGUMENT",
        "error_description": f"Argument '{argument}' is null or empty",
        "argument": argument,
    }


def test_delivery_unknown_connector(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    r = call(client, portal, DELIVERY, {"CONNECTOR": "nope", "LINE": 1, "MESSAGES": MESSAGES})
    assert r.status_code == 400
    assert r.json() == {
        "error": "IMCONNECTOR_NO_CORRECT_PROVIDER",
        "error_description": "Unable to find a suitable provider for the connector",
    }
    auto = emu.add_portal("auto.bitrix24.test", auto_connectors=True)
    assert call(client, auto, DELIVERY, {"CONNECTOR": "any", "LINE": 1, "MESSAGES": MESSAGES}).status_code == 200


def test_delivery_via_webhook_wrong_auth_type(portal: PortalInfo, client: httpx.Client) -> None:
    r = hook(client, portal, DELIVERY, {"CONNECTOR": CONNECTOR, "LINE": 1, "MESSAGES": MESSAGES})
    assert r.status_code == 403
    assert r.json() == {
        "error": "WRONG_AUTH_TYPE",
        "error_description": "Current authorization type is denied for this method Application context required",
    }


def test_delivery_success_false_fault(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    emu.set_faults(DOMAIN, delivery_success_false=True)
    r = call(client, portal, DELIVERY, {"CONNECTOR": CONNECTOR, "LINE": 1, "MESSAGES": MESSAGES})
    assert r.status_code == 200
    assert r.json()["result"] == {"SUCCESS": False, "DATA": []}
    assert emu.state(DOMAIN)["deliveries"] == []


# --- messageservice.sender.update -------------------------------------------------------------------------


def test_sender_update_success(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    r = call(client, portal, SENDER_UPDATE, {"CODE": SENDER, "HANDLER": "https://new.example.com/h"})
    assert r.status_code == 200 and r.json()["result"] is True
    r = call(
        client,
        portal,
        SENDER_UPDATE,
        {"CODE": SENDER, "NAME": {"en": "New", "de": "Neu"}, "DESCRIPTION": "desc"},
    )
    assert r.status_code == 200
    state = emu.state(DOMAIN)
    assert state["sender_updates"] == [
        {
            "client_id": portal.client_id,
            "code": SENDER,
            "count": 2,
            "updates": [
                {"HANDLER": "https://new.example.com/h"},
                {"NAME": {"en": "New", "de": "Neu"}, "DESCRIPTION": "desc"},
            ],
        }
    ]
    sender = state["senders"][0]
    assert sender["handler"] == "https://new.example.com/h" and sender["name"] == {"en": "New", "de": "Neu"}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"HANDLER": "https://a.example.com"}, "ERROR_SENDER_CODE_REQUIRED"),
        ({"CODE": SENDER}, "ERROR_SENDER_OTHER_PARAMS_REQUIRED"),
        ({"CODE": SENDER, "NAME": ""}, "ERROR_SENDER_OTHER_PARAMS_REQUIRED"),
        ({"CODE": "unknown", "NAME": "x"}, "ERROR_SENDER_NOT_FOUND"),
        ({"CODE": SENDER, "HANDLER": "not a url"}, "ERROR_WRONG_HANDLER_URL"),
        ({"CODE": SENDER, "HANDLER": "https://localhost/h"}, "ERROR_WRONG_HANDLER_URL"),
        ({"CODE": SENDER, "HANDLER": "ftp://files.example.com/h"}, "ERROR_UNSUPPORTED_PROTOCOL"),
        ({"CODE": SENDER, "NAME": ["a", "b"]}, "ERROR_SENDER_UPDATE_FAILURE"),
    ],
)
def test_sender_update_errors(emu: Emulator, portal: PortalInfo, client: httpx.Client, params: dict, code: str) -> None:
    assert error_of(call(client, portal, SENDER_UPDATE, params)) == (400, code)
    assert emu.state(DOMAIN)["sender_updates"] == []


def test_sender_update_texts(portal: PortalInfo, client: httpx.Client) -> None:
    texts = {
        "ERROR_SENDER_CODE_REQUIRED": ({"NAME": "x"}, "CODE is required!"),
        "ERROR_SENDER_OTHER_PARAMS_REQUIRED": ({"CODE": SENDER}, "At least one other parameter is required!"),
        "ERROR_SENDER_NOT_FOUND": ({"CODE": "zz", "NAME": "x"}, "Sender not found!"),
    }
    for code, (params, text) in texts.items():
        assert call(client, portal, SENDER_UPDATE, params).json() == {
            "error": code,
            "error_description": text,
        }


def test_sender_update_access(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    r = hook(client, portal, SENDER_UPDATE, {"CODE": SENDER, "NAME": "x"})
    assert r.status_code == 403
    assert r.json()["error_description"] == "Access denied! Application context required"
    info = emu.add_portal("noadmin.bitrix24.test", admin=False, senders=["prov"])
    r = call(client, info, SENDER_UPDATE, {"CODE": "prov", "NAME": "x"})
    assert r.status_code == 403 and r.json()["error_description"] == "Access denied!"


# --- im.dialog.unread -------------------------------------------------------------------------------------


def test_unread_success_oauth_and_webhook(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    for dialog in ("chat29", "sg3", "256", "CHAT7", "crm12"):
        assert call(client, portal, UNREAD, {"DIALOG_ID": dialog, "MESSAGE_ID": 12}).status_code == 200
    r = hook(client, portal, UNREAD, {"dialog_id": "chat29", "message_id": "14"})
    assert r.status_code == 200 and r.json()["result"] is True
    other = emu.issue_tokens(DOMAIN, user_id=42)
    assert call(client, other, UNREAD, {"DIALOG_ID": "chat29", "MESSAGE_ID": 3}).status_code == 200
    unread = {(u["user_id"], u["dialog_id"]): u["message_ids"] for u in emu.state(DOMAIN)["unread"]}
    assert unread[(1, "chat29")] == [12, 14]  # the webhook's user is the portal user (1)
    assert unread[(42, "chat29")] == [3]


@pytest.mark.parametrize(
    ("params", "code", "text"),
    [
        ({"DIALOG_ID": "chat1"}, "MESSAGE_ID_ERROR", "First unread message id can't be empty"),
        (
            {"DIALOG_ID": "chat1", "MESSAGE_ID": 0},
            "MESSAGE_ID_ERROR",
            "First unread message id can't be empty",
        ),
        (
            {"DIALOG_ID": "chat1", "MESSAGE_ID": "abc"},
            "MESSAGE_ID_ERROR",
            "First unread message id can't be empty",
        ),
        (
            {"DIALOG_ID": "chat1", "MESSAGE_ID": -4},
            "MESSAGE_ID_ERROR",
            "First unread message id can't be empty",
        ),
        ({}, "MESSAGE_ID_ERROR", "First unread message id can't be empty"),
        ({"MESSAGE_ID": 5}, "DIALOG_ID_EMPTY", "Dialog ID can't be empty"),
        ({"MESSAGE_ID": 5, "DIALOG_ID": ""}, "DIALOG_ID_EMPTY", "Dialog ID can't be empty"),
        ({"MESSAGE_ID": 5, "DIALOG_ID": "chat"}, "DIALOG_ID_EMPTY", "Dialog ID can't be empty"),
        ({"MESSAGE_ID": 5, "DIALOG_ID": "group12"}, "DIALOG_ID_EMPTY", "Dialog ID can't be empty"),
        ({"MESSAGE_ID": 5, "DIALOG_ID": "0"}, "DIALOG_ID_EMPTY", "Dialog ID can't be empty"),
    ],
)
def test_unread_errors(
    emu: Emulator, portal: PortalInfo, client: httpx.Client, params: dict, code: str, text: str
) -> None:
    r = call(client, portal, UNREAD, params)
    assert r.status_code == 400
    assert r.json() == {"error": code, "error_description": text}
    assert emu.state(DOMAIN)["unread"] == []


# --- sender.add / list / delete ---------------------------------------------------------------------------


def test_sender_add_list_delete(portal: PortalInfo, client: httpx.Client) -> None:
    add = {"CODE": "new_one", "TYPE": "SMS", "HANDLER": "https://h.example.com/x", "NAME": "N"}
    assert call(client, portal, "messageservice.sender.add", add).json()["result"] is True
    assert error_of(call(client, portal, "messageservice.sender.add", add)) == (
        400,
        "ERROR_SENDER_ALREADY_INSTALLED",
    )
    assert sorted(call(client, portal, "messageservice.sender.list").json()["result"]) == ["new_one", SENDER]
    assert call(client, portal, "messageservice.sender.delete", {"CODE": "new_one"}).json()["result"] is True
    assert error_of(call(client, portal, "messageservice.sender.delete", {"CODE": "new_one"})) == (
        400,
        "ERROR_SENDER_NOT_FOUND",
    )
    assert error_of(hook(client, portal, "messageservice.sender.list")) == (403, "ACCESS_DENIED")


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({}, "Empty data!"),
        ({"TYPE": "SMS"}, "Empty sender code!"),
        ({"CODE": "a b", "TYPE": "SMS"}, "Wrong sender code!"),
        ({"CODE": "ok", "HANDLER": "https://h.example.com", "TYPE": "SMS"}, "Empty sender NAME!"),
        ({"CODE": "ok", "HANDLER": "https://h.example.com", "NAME": "n"}, "Empty sender message TYPE!"),
        (
            {"CODE": "ok", "HANDLER": "https://h.example.com", "NAME": "n", "TYPE": "VOICE"},
            "Unknown sender message TYPE!",
        ),
    ],
)
def test_sender_add_validation(portal: PortalInfo, client: httpx.Client, params: dict, text: str) -> None:
    r = call(client, portal, "messageservice.sender.add", params)
    assert r.status_code == 400
    assert r.json() == {"error": "ERROR_SENDER_VALIDATION_FAILURE", "error_description": text}


# --- general ----------------------------------------------------------------------------------------------


def test_unknown_method(portal: PortalInfo, client: httpx.Client) -> None:
    r = call(client, portal, "crm.lead.list")
    assert r.status_code == 404
    assert r.json() == {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"}


def test_bad_json_body(portal: PortalInfo, client: httpx.Client) -> None:
    r = client.post(
        portal.client_endpoint + UNREAD,
        content=b"{not json",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {portal.access_token}"},
    )
    assert error_of(r) == (400, "ERROR_ARGUMENT")
    r = client.post(
        portal.client_endpoint + UNREAD,
        content=b"[1, 2]",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {portal.access_token}"},
    )
    assert r.status_code == 400


def test_time_block_can_be_omitted(emu: Emulator, client: httpx.Client) -> None:
    info = emu.add_portal("selfhosted.bitrix24.test", time_block=False)
    body = call(client, info, UNREAD, {"DIALOG_ID": "1", "MESSAGE_ID": 1}).json()
    assert body == {"result": True}


def test_unknown_portal_and_route(emu: Emulator, client: httpx.Client) -> None:
    r = client.post(f"{emu.url}/nowhere.bitrix24.test/rest/{UNREAD}", json={})
    assert error_of(r) == (404, "PORTAL_NOT_FOUND")
    assert client.get(f"{emu.url}/favicon.ico").status_code == 404
