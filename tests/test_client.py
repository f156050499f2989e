"""The REST client parses every documented answer into a typed error with the right action."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from workers.bitrix.client import CallResult, Credentials, RestClient
from workers.errors import ACTIONS, RestError, TransportError
from workers.retries import Action, classify

OAUTH = Credentials("https://acme.bitrix24.com/rest/", "ACCESS-SECRET-123")
WEBHOOK = Credentials("https://acme.bitrix24.com/rest/1/WEBHOOKCODE42/")


def client_answering(status: int, body: Any, seen: list[httpx.Request] | None = None) -> RestClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content)

    return RestClient(transport=httpx.MockTransport(handler))


def test_success_returns_result_and_time_and_sends_auth_in_body() -> None:
    seen: list[httpx.Request] = []
    time_block = {"operating": 0, "operating_reset_at": 1700000600}
    client = client_answering(200, {"result": True, "time": time_block}, seen)
    out = client.call(OAUTH, "im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 5})
    assert out == CallResult(True, time_block)
    assert str(seen[0].url) == "https://acme.bitrix24.com/rest/im.dialog.unread"
    assert json.loads(seen[0].content) == {"DIALOG_ID": "chat1", "MESSAGE_ID": 5, "auth": "ACCESS-SECRET-123"}


def test_webhook_calls_carry_no_auth_param() -> None:
    seen: list[httpx.Request] = []
    client_answering(200, {"result": True}, seen).call(WEBHOOK, "im.dialog.unread", {"X": 1})
    assert str(seen[0].url) == "https://acme.bitrix24.com/rest/1/WEBHOOKCODE42/im.dialog.unread"
    assert "auth" not in json.loads(seen[0].content)


DOCUMENTED = [
    (503, "QUERY_LIMIT_EXCEEDED", Action.FLOW),
    (429, "OPERATION_TIME_LIMIT", Action.FLOW),
    (401, "expired_token", Action.REFRESH),
    (401, "invalid_token", Action.REFRESH),
    (401, "NO_AUTH_FOUND", Action.PARK),
    (401, "APPLICATION_NOT_FOUND", Action.PARK),
    (401, "authorization_error", Action.PARK),
    (403, "user_access_error", Action.PARK),
    (401, "METHOD_CONFIRM_WAITING", Action.PARK),
    (500, "INTERNAL_SERVER_ERROR", Action.TRANSIENT),
    (500, "ERROR_UNEXPECTED_ANSWER", Action.TRANSIENT),
    (503, "OVERLOAD_LIMIT", Action.PERMANENT),
    (500, "PORTAL_DELETED", Action.PERMANENT),
    (403, "ACCESS_DENIED", Action.PERMANENT),
    (403, "WRONG_AUTH_TYPE", Action.PERMANENT),
    (403, "INVALID_CREDENTIALS", Action.PERMANENT),
    (403, "insufficient_scope", Action.PERMANENT),
    (400, "INVALID_REQUEST", Action.PERMANENT),
    (404, "ERROR_METHOD_NOT_FOUND", Action.PERMANENT),
    (400, "ERROR_ARGUMENT", Action.PERMANENT),
    (400, "ERROR_SENDER_VALIDATION_FAILURE", Action.PERMANENT),
    (400, "ERROR_MESSAGE_NOT_FOUND", Action.PERMANENT),
    (400, "ERROR_MESSAGE_STATUS_INCORRECT", Action.PERMANENT),
    (400, "IMCONNECTOR_NO_CORRECT_PROVIDER", Action.PERMANENT),
    (400, "ERROR_SENDER_CODE_REQUIRED", Action.PERMANENT),
    (400, "ERROR_SENDER_OTHER_PARAMS_REQUIRED", Action.PERMANENT),
    (400, "ERROR_SENDER_NOT_FOUND", Action.PERMANENT),
    (400, "ERROR_SENDER_UPDATE_FAILURE", Action.PERMANENT),
    (400, "MESSAGE_ID_ERROR", Action.PERMANENT),
    (400, "DIALOG_ID_EMPTY", Action.PERMANENT),
    (405, "ERROR_BATCH_METHOD_NOT_ALLOWED", Action.PERMANENT),
    (400, "ERROR_BATCH_LENGTH_EXCEEDED", Action.PERMANENT),
    (502, "SOMETHING_NEW", Action.TRANSIENT),  # unknown 5xx: transient
    (401, "SOMETHING_NEW", Action.PARK),  # unknown 401: credentials
    (400, "SOMETHING_NEW", Action.PERMANENT),
]


@pytest.mark.parametrize(("status", "code", "action"), DOCUMENTED)
def test_documented_errors_are_typed_with_their_action(status: int, code: str, action: Action) -> None:
    client = client_answering(status, {"error": code, "error_description": "text", "argument": "LINE"})
    with pytest.raises(RestError) as info:
        client.call(OAUTH, "m", {})
    assert info.value.code == code
    assert info.value.status == status
    assert info.value.description == "text"
    assert classify(info.value) is action


def test_every_code_in_the_table_has_a_description() -> None:
    assert all(desc for _, desc in ACTIONS.values())


@pytest.mark.parametrize(
    ("status", "body"),
    [(502, b"<html><body>Bad gateway</body></html>"), (200, b'{"result": tr'), (200, b"[1, 2]"), (200, b"{}")],
)
def test_garbage_answers_are_transient(status: int, body: bytes) -> None:
    with pytest.raises(TransportError) as info:
        client_answering(status, body).call(OAUTH, "m", {})
    assert classify(info.value) is Action.TRANSIENT


def test_network_errors_and_timeouts_are_transient_and_leak_no_secret() -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    client = RestClient(transport=httpx.MockTransport(boom))
    with pytest.raises(TransportError) as info:
        client.call(WEBHOOK, "im.dialog.unread", {})
    assert info.value.code == "TIMEOUT"
    assert "WEBHOOKCODE42" not in str(info.value)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {request.url}", request=request)

    with pytest.raises(TransportError) as info2:
        RestClient(transport=httpx.MockTransport(refused)).call(WEBHOOK, "im.dialog.unread", {})
    assert info2.value.code == "NETWORK"
    assert "WEBHOOKCODE42" not in str(info2.value)
    assert "ACCESS-SECRET" not in repr(OAUTH) and "WEBHOOKCODE42" not in repr(WEBHOOK)


def test_batch_fans_results_and_errors_back_per_command() -> None:
    seen: list[httpx.Request] = []
    body = {
        "result": {
            "result": {"a": True},
            "result_error": {"b": {"error": "ERROR_MESSAGE_NOT_FOUND", "error_description": "Message not found!"}},
            "result_total": [],
            "result_next": [],
            "result_time": {"a": {"operating": 1.5}},
        },
        "time": {},
    }
    client = client_answering(200, body, seen)
    out = client.batch(
        OAUTH,
        {
            "a": ("messageservice.message.status.update", {"CODE": "x", "MESSAGE_ID": "1", "STATUS": "sent"}),
            "b": (
                "imconnector.send.status.delivery",
                {
                    "CONNECTOR": "c",
                    "LINE": 1,
                    "MESSAGES": [{"im": {"chat_id": 1, "message_id": 2}, "message": {"id": ["e 1"], "date": 3}}],
                },
            ),
            "c": ("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 1}),
        },
    )
    assert out.results["a"] == CallResult(True, {"operating": 1.5})
    b = out.results["b"]
    assert isinstance(b, RestError) and b.code == "ERROR_MESSAGE_NOT_FOUND"
    c = out.results["c"]
    assert isinstance(c, RestError) and c.code == "BATCH_RESULT_MISSING"
    sent = json.loads(seen[0].content)
    assert sent["halt"] == 0 and sent["auth"] == "ACCESS-SECRET-123"
    assert sent["cmd"]["a"] == "messageservice.message.status.update?CODE=x&MESSAGE_ID=1&STATUS=sent"
    assert sent["cmd"]["b"] == (
        "imconnector.send.status.delivery?CONNECTOR=c&LINE=1&MESSAGES%5B0%5D%5Bim%5D%5Bchat_id%5D=1"
        "&MESSAGES%5B0%5D%5Bim%5D%5Bmessage_id%5D=2&MESSAGES%5B0%5D%5Bmessage%5D%5Bid%5D%5B0%5D=e%201"
        "&MESSAGES%5B0%5D%5Bmessage%5D%5Bdate%5D=3"
    )


def test_whole_batch_errors_are_raised() -> None:
    client = client_answering(
        401, {"error": "expired_token", "error_description": "The access token provided has expired"}
    )
    with pytest.raises(RestError) as info:
        client.batch(OAUTH, {"a": ("im.dialog.unread", {})})
    assert classify(info.value) is Action.REFRESH


def test_batch_refuses_more_than_fifty() -> None:
    with pytest.raises(ValueError):
        client_answering(200, {}).batch(OAUTH, {str(i): ("m", {}) for i in range(51)})
