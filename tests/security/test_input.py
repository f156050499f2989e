"""What a job's fields and a request's bytes may carry, at the public routes (a real uvicorn server and a
real client) and at the Python producer: a report from the future (its `at` beyond B24Q_CLOCK_SKEW) is
refused before it can freeze its message; control characters are refused at any depth of a job; a body that
is not strict UTF-8 JSON (NaN, Infinity, UTF-16/32) is 400 on /v1 and /b24; and for every job kind, the
published JSON Schema and the server agree on a table of edge examples (schema-valid ⇔ accepted)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from edges.http.app import create_app
from tasks import producer
from tasks.jobs import KINDS
from tasks.schema import job_schema
from tests.test_http_intake import ENTRY, KEY, Server, is_problem, queued
from workers.celery import configure
from workers.errors import JobRefused
from workers.runtime import Runtime
from workers.settings import Settings, get_settings

ACME = "acme.bitrix24.test"
DELIVERED = {
    "im": {"chat_id": 1807, "message_id": 86497},
    "message": {"id": ["ext-1"], "date": 1738065600},
    "chat": {"id": "channel-123"},
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_keys": ENTRY, "http_rate": 0.0})


@pytest.fixture
def rt(runtime: Runtime, settings: Settings) -> Iterator[Runtime]:
    """The test Runtime, the Celery producer pointed at its Redis, and one OAuth portal."""
    configure(settings)
    runtime.registry.add_oauth(ACME, "http://127.0.0.1:9/acme/rest/", "acc-token-1", "ref-token-1", 4102444800.0)
    yield runtime
    configure(get_settings())


@pytest.fixture
def server(rt: Runtime) -> Iterator[Server]:
    started = Server(create_app(lambda: rt))
    yield started
    started.stop()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c


def status(at: float | None = None) -> dict[str, Any]:
    job = {"kind": "status-update", "portal": ACME, "code": "smsgw", "message_id": "m1", "status": "sent"}
    return job if at is None else {**job, "at": at}


def fields(job: dict[str, Any]) -> dict[str, Any]:
    """A job's fields as the Python producer takes them (its kind named apart)."""
    return {k: v for k, v in job.items() if k != "kind"}


def errors_of(body: dict[str, Any]) -> dict[str, str]:
    return {str(e["field"]): str(e["message"]) for e in body["errors"]}


# --- item 5: `at` from the future --------------------------------------------------------------------------


def test_an_at_beyond_the_clock_skew_is_refused_over_http_naming_the_field(client: httpx.Client, rt: Runtime) -> None:
    body = is_problem(client.post("/v1/jobs", json=status(at=time.time() + 3600)), 422)
    assert "B24Q_CLOCK_SKEW" in errors_of(body)["at"]
    body = is_problem(client.post("/v1/jobs", json=[status(at=time.time()), status(at=4_000_000_000.0)]), 422)
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, "at")]
    assert not queued(rt)
    # within the skew (a source whose clock runs a minute ahead) and in the past: accepted
    accepted = client.post("/v1/jobs", json=[status(at=time.time() + 60), status(at=time.time() - 86400)])
    assert accepted.status_code == 202, accepted.text
    assert len(queued(rt)) == 2


def test_the_producer_refuses_an_at_beyond_now_plus_the_skew(rt: Runtime, settings: Settings) -> None:
    now = 1_800_000_000.0
    with pytest.raises(JobRefused) as info:
        producer.check("status-update", fields(status(at=now + 301)), rt, now=now)
    assert [field for field, _ in info.value.errors] == ["at"]
    producer.check("status-update", fields(status(at=now + 300)), rt, now=now)
    # the allowance is the setting's
    tight = Runtime(settings.model_copy(update={"clock_skew": 5.0}), rt.redis)
    try:
        with pytest.raises(JobRefused):
            producer.check("status-update", fields(status(at=now + 6)), tight, now=now)
    finally:
        tight.close()


def test_a_replayed_dead_letter_is_held_to_the_horizon_of_now(client: httpx.Client, rt: Runtime) -> None:
    """A letter accepted in its time replays later (time passing only moves the horizon on); one that came in
    from the future by another way (a raw Celery message) stays a dead letter."""
    rt.dead.add("past", "b24q.status_update", "status-update", ACME, fields(status(time.time() + 200)), "X", "", 1)
    rt.dead.add("ahead", "b24q.status_update", "status-update", ACME, fields(status(4e9)), "X", "", 1)
    assert client.post("/v1/dead/past/replay").status_code == 202
    body = is_problem(client.post("/v1/dead/ahead/replay"), 422)
    assert list(errors_of(body)) == ["at"]
    assert rt.dead.get("ahead") is not None and list(queued(rt)) == ["past"]


# --- item 6: control characters at any depth ----------------------------------------------------------------

MESSAGE_ID_1 = {**DELIVERED, "message": {"id": ["ext-1", "b\x1b[31m"], "date": 1}}
CHAT_ID = {**DELIVERED, "chat": {"id": "x\x00"}}
CONTROLS: list[tuple[dict[str, Any], str]] = [
    (
        {"kind": "delivery-confirmation", "connector": "wa", "line": 7, "messages": [MESSAGE_ID_1]},
        "messages.0.message.id.1",
    ),
    (
        {"kind": "delivery-confirmation", "connector": "wa", "line": 7, "messages": [DELIVERED, CHAT_ID]},
        "messages.1.chat.id",
    ),
    ({"kind": "sender-update", "code": "smsgw", "name": {"en": "SMS\u0000\u001bx"}}, "name.en"),
    ({"kind": "sender-update", "code": "smsgw", "description": "SMS\u0085x"}, "description"),  # C1
    ({"kind": "sender-update", "code": "smsgw", "description": {"de": "SMS\u009bx"}}, "description.de"),
    ({"kind": "status-update", "code": "smsgw", "message_id": "m\t1", "status": "sent"}, "message_id"),  # an id
]


@pytest.mark.parametrize(("job", "field"), CONTROLS)
def test_control_characters_are_refused_at_any_depth(
    client: httpx.Client, rt: Runtime, job: dict[str, Any], field: str
) -> None:
    body = is_problem(client.post("/v1/jobs", json={**job, "portal": ACME}), 422)
    assert "control characters" in errors_of(body)[field], body
    assert not queued(rt)


def test_free_text_keeps_its_line_breaks(client: httpx.Client, rt: Runtime) -> None:
    text = {"kind": "sender-update", "portal": ACME, "code": "smsgw", "description": {"en": "One\tline,\r\nanother"}}
    assert client.post("/v1/jobs", json=text).status_code == 202
    body = is_problem(client.post("/v1/jobs", json={**text, "description": {"en": "bell\x07"}}), 422)
    assert list(errors_of(body)) == ["description.en"]


# --- item 10: bodies that are not strict UTF-8 JSON ---------------------------------------------------------

NOT_JSON = [
    b'{"kind": "status-update", "portal": "acme.bitrix24.test", "code": "smsgw", "message_id": "m1", '
    b'"status": "sent", "at": NaN}',
    b'[{"kind": "mark-unread", "portal": "acme.bitrix24.test", "dialog_id": "chat1", "message_id": Infinity}]',
    b'{"kind": "status-update", "portal": "acme.bitrix24.test", "code": "smsgw", "message_id": "m1", '
    b'"status": "sent", "at": -Infinity}',
    json.dumps(status()).encode("utf-16"),
    json.dumps(status()).encode("utf-16-le"),
    json.dumps(status()).encode("utf-32"),
    b"\xef\xbb\xbf" + json.dumps(status()).encode(),  # a UTF-8 byte order mark: not JSON text either
]


@pytest.mark.parametrize("body", NOT_JSON)
def test_a_job_body_that_is_not_strict_utf8_json_is_400(client: httpx.Client, rt: Runtime, body: bytes) -> None:
    answer = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert is_problem(answer, 400)
    assert not queued(rt) and rt.ledger.count() == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"event": "ONIMCONNECTORMESSAGEADD", "data": {"N": NaN}}',
        b'{"event": "ONIMCONNECTORMESSAGEADD", "data": {"N": Infinity}}',
        json.dumps({"event": "ONIMCONNECTORMESSAGEADD"}).encode("utf-16"),
        json.dumps({"event": "ONIMCONNECTORMESSAGEADD"}).encode("utf-32"),
    ],
)
@pytest.mark.parametrize("route", ["/b24/events", "/b24/install"])
def test_an_event_body_that_is_not_strict_utf8_json_is_400(server: Server, route: str, body: bytes) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert is_problem(c.post(route, content=body, headers={"Content-Type": "application/json"}), 400)


@pytest.mark.parametrize(
    "body",
    [
        {"auth": {"member_id": "m1", "application_token": "t"}},
        {"event": "", "auth": {"member_id": "m1"}},
        {"event": 5, "auth": {"member_id": "m1"}},
        {"event": {"name": "ONAPPUNINSTALL"}},
    ],
    ids=["no event", "empty", "a number", "an object"],
)
def test_an_event_that_does_not_name_itself_is_400_and_looked_up_nowhere(
    server: Server, rt: Runtime, body: dict[str, Any]
) -> None:
    """Bitrix24 names every event it posts (§7.1): at /b24/events a body without its name is refused before
    any portal is looked up (only the installer page posts none, and it posts to /b24/install)."""
    before = rt.redis.info("commandstats")
    with httpx.Client(base_url=server.url, timeout=30) as c:
        answer = c.post("/b24/events", json=body)
    assert is_problem(answer, 400) and "names itself" in answer.json()["detail"]
    after = rt.redis.info("commandstats")
    assert after.get("cmdstat_get") == before.get("cmdstat_get")  # no alias read
    assert after.get("cmdstat_hgetall") == before.get("cmdstat_hgetall")  # no portal read


# --- item 10: the schema says what the server refuses ----------------------------------------------------

HANDLER = "https://sms.example.com/b24"
# per kind: the fields of a good job, then edge examples (fields changed from it; None is sent as JSON null).
# For each, the published schema's verdict must be the server's.
EDGES: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
    "status-update": (
        {"code": "smsgw", "message_id": "m1", "status": "sent"},
        [
            {},
            {"code": "0"},
            {"code": "00"},
            {"code": "smsgw\n"},
            {"message_id": "0"},
            {"message_id": " m1"},
            {"message_id": "m1 "},
            {"message_id": "m 1"},
            {"message_id": "   "},
            {"message_id": "m\u00a01"},
            {"message_id": "m\u007f"},
            {"message_id": "m" * 255},
            {"message_id": "m" * 256},
            {"at": 12},
            {"at": 12.5},
            {"at": None},
            {"at": "12"},
            {"status": "sent\n"},
            {"portal": ACME + "\n"},
        ],
    ),
    "delivery-confirmation": (
        {"connector": "wa", "line": 7, "messages": [DELIVERED]},
        [
            {},
            {"line": 12.0},
            {"line": 12.5},
            {"line": True},
            {"line": 0.0},
            {"line": 2.0**63},
            {"connector": "0"},
            {"connector": "wa\n"},
            {"messages": [{**DELIVERED, "im": {"chat_id": 1807.0, "message_id": 1}}]},
            {"messages": [{**DELIVERED, "message": {"id": ["a"], "date": 0.0}}]},
            {"messages": [{**DELIVERED, "message": {"id": ["a"], "date": -1}}]},
            {"messages": [{**DELIVERED, "message": {"id": ["0"], "date": 1}}]},
            {"messages": [{**DELIVERED, "message": {"id": ["a\nb"], "date": 1}}]},
            {"messages": [{**DELIVERED, "chat": {"id": "c\u2028d"}}]},
            {"messages": [{**DELIVERED, "chat": {"id": ""}}]},
        ],
    ),
    "sender-update": (
        {"code": "smsgw", "handler": HANDLER},
        [
            {},
            {"code": "0"},
            {"handler": None, "name": "SMS"},
            {"handler": None},
            {"handler": None, "name": None},
            {"handler": None, "description": None},
            {"handler": ""},
            {"handler": "https://localhost/b24"},
            {"handler": "https://.example.com/b24"},
            {"handler": "ftp://sms.example.com/b24"},
            {"handler": "HTTPS://SMS.Example.com"},
            {"handler": "http://sms.example.com:8080/b24?x=1#y"},
            {"handler": "https://sms.example.com:0/b24"},
            {"handler": "https://sms.example.com:65535/b24"},
            {"handler": "https://sms.example.com:65536/b24"},
            {"handler": "https://user:pw@sms.example.com/b24"},
            {"handler": "https://sms.example.com/b 24"},
            {"handler": "https://sms.example.com/\x00"},
            {"handler": "https://sms.example.com\n"},
            {"handler": "https://[::1]/b24"},
            {"name": "0"},
            {"name": {}},
            {"name": {"en": "0"}},
            {"name": {"en": "SMS", "de": ""}},
            {"name": {"english": "SMS"}},
            {"name": {"en\n": "SMS"}},
            {"description": "line one\nline two\r\n\tend"},
            {"description": "nul\x00"},
            {"description": "a" * 1001},
        ],
    ),
    "sender-add": (
        {"code": "smsgw", "handler": HANDLER, "name": "SMS"},
        [{}, {"name": None}, {"name": "0"}, {"handler": ""}, {"type": "MMS"}, {"description": None}],
    ),
    "mark-unread": (
        {"dialog_id": "chat12", "message_id": 5},
        [
            {},
            {"dialog_id": "0"},
            {"dialog_id": "00"},
            {"dialog_id": "chat0"},
            {"dialog_id": "12\n"},
            {"message_id": 5.0},
            {"message_id": 5.5},
            {"message_id": "5"},
            {"message_id": True},
            {"message_id": 2**63 - 1},
            {"message_id": 2**63},
        ],
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_schema_and_the_server_agree_on_edge_examples(client: httpx.Client, rt: Runtime, kind: str) -> None:
    base, edges = EDGES[kind]
    schema = Draft202012Validator(job_schema(kind))
    disagree = []
    for change in edges:
        job = {"kind": kind, "portal": ACME, **base, **change}
        valid = not list(schema.iter_errors(job))
        answer = client.post("/v1/jobs", json=job)
        assert answer.status_code in (202, 422), answer.text
        if valid != (answer.status_code == 202):
            disagree.append((change, "schema-valid" if valid else "schema-invalid", answer.status_code, answer.text))
    assert not disagree, "\n".join(map(str, disagree))
