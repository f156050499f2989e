"""Job models mirror the docs; bad input is refused with the field and the rule."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.jobs import KINDS
from workers.errors import JobRefused, ResultFailed

DELIVERED = {
    "im": {"chat_id": 323, "message_id": 85911},
    "message": {"id": ["ext-1"], "date": 1738065600},
    "chat": {"id": "channel-123"},
}

GOOD: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "status-update",
        {"code": "smsgw.pro", "message_id": "a1b2", "status": "delivered"},
        {"CODE": "smsgw.pro", "MESSAGE_ID": "a1b2", "STATUS": "delivered"},
    ),
    (
        "delivery-confirmation",
        {"connector": "myconnector", "line": 107, "messages": [DELIVERED]},
        {"CONNECTOR": "myconnector", "LINE": 107, "MESSAGES": [DELIVERED]},
    ),
    (
        "sender-update",
        {"code": "provider", "handler": "https://newhandler.com/", "name": {"en": "A", "de": "B"}},
        {"CODE": "provider", "HANDLER": "https://newhandler.com/", "NAME": {"en": "A", "de": "B"}},
    ),
    ("sender-update", {"code": "provider", "description": "New"}, {"CODE": "provider", "DESCRIPTION": "New"}),
    ("mark-unread", {"dialog_id": "chat29", "message_id": 12}, {"DIALOG_ID": "chat29", "MESSAGE_ID": 12}),
    ("mark-unread", {"dialog_id": "sg7", "message_id": 1}, {"DIALOG_ID": "sg7", "MESSAGE_ID": 1}),
    ("mark-unread", {"dialog_id": "256", "message_id": 3}, {"DIALOG_ID": "256", "MESSAGE_ID": 3}),
]


@pytest.mark.parametrize(("kind", "fields", "params"), GOOD)
def test_valid_jobs_build_the_documented_params(kind: str, fields: dict[str, Any], params: dict[str, Any]) -> None:
    job = KINDS[kind].validate({"portal": "acme", **fields})
    assert job.params() == params


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("status-update", {"code": "bad code", "message_id": "1", "status": "sent"}, "code", "pattern"),
    ("status-update", {"code": "c", "message_id": "", "status": "sent"}, "message_id", "at least 1"),
    ("status-update", {"code": "c", "message_id": "1", "status": "read"}, "status", "'queued'"),
    ("status-update", {"code": "c", "message_id": 5, "status": "sent"}, "message_id", "valid string"),
    ("status-update", {"code": "c", "status": "sent"}, "message_id", "required"),
    ("status-update", {"code": "c", "message_id": "1", "status": "sent", "extra": 1}, "extra", "unknown field"),
    ("status-update", {"code": "c" * 101, "message_id": "1", "status": "sent"}, "code", "at most 100"),
    ("status-update", {"code": "c", "message_id": "a\x00b", "status": "sent"}, "message_id", "control"),
    ("delivery-confirmation", {"connector": "c", "line": 1, "messages": []}, "messages", "at least 1"),
    ("delivery-confirmation", {"connector": "c", "line": 0, "messages": [DELIVERED]}, "line", "greater than 0"),
    ("delivery-confirmation", {"connector": "c", "line": "1", "messages": [DELIVERED]}, "line", "valid integer"),
    (
        "delivery-confirmation",
        {"connector": "c", "line": 1, "messages": [{**DELIVERED, "message": {"id": [], "date": 1}}]},
        "messages.0.message.id",
        "at least 1",
    ),
    (
        "delivery-confirmation",
        {"connector": "c", "line": 1, "messages": [{"im": {"chat_id": 1}}]},
        "messages.0.im.message_id",
        "required",
    ),
    ("sender-update", {"code": "p"}, "(job)", "at least one of handler, name, description"),
    ("sender-update", {"code": "p", "handler": "not a url"}, "handler", "http(s) URL"),
    ("sender-update", {"code": "p", "handler": "ftp://x.example/"}, "handler", "http(s) URL"),
    ("sender-update", {"code": "p", "name": {"english": "x"}}, "name.english", "pattern"),
    ("mark-unread", {"dialog_id": "chat", "message_id": 1}, "dialog_id", "pattern"),
    ("mark-unread", {"dialog_id": "user12", "message_id": 1}, "dialog_id", "pattern"),
    ("mark-unread", {"dialog_id": "chat1", "message_id": 0}, "message_id", "greater than 0"),
    ("mark-unread", {"dialog_id": "chat1", "message_id": True}, "message_id", "valid integer"),
    ("mark-unread", {"dialog_id": "chat1", "message_id": "12"}, "message_id", "valid integer"),
]


@pytest.mark.parametrize(("kind", "fields", "field", "rule"), BAD)
def test_bad_input_is_refused_naming_field_and_rule(kind: str, fields: dict[str, Any], field: str, rule: str) -> None:
    with pytest.raises(JobRefused) as info:
        KINDS[kind].validate({"portal": "acme", **fields})
    messages = dict(info.value.errors)
    assert field in messages, info.value.errors
    assert rule in messages[field]
    assert f"{field}:" in str(info.value)


def test_portal_is_required_and_is_a_key_not_a_url() -> None:
    with pytest.raises(JobRefused) as info:
        KINDS["mark-unread"].validate({"portal": "https://x/rest/1/abc/", "dialog_id": "1", "message_id": 1})
    assert dict(info.value.errors)["portal"].startswith("String should match pattern")


def test_delivery_success_false_is_a_failure() -> None:
    job = KINDS["delivery-confirmation"].validate({"portal": "p", "connector": "c", "line": 1, "messages": [DELIVERED]})
    job.check_result({"SUCCESS": True, "DATA": []})
    with pytest.raises(ResultFailed):
        job.check_result({"SUCCESS": False, "DATA": []})
