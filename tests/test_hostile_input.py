"""Hostile and malformed input at the producer API and the CLI: refused with a field-level message, and
nothing of it ever reaches the queue.

tests/test_jobs.py holds the model's table of bad fields; this file adds what reaches the *public* entry
points (wrong types for whole payloads, unknown portals and kinds, webhook portals, oversize and unicode
edge cases, bulk enqueues, the CLI's flags and files), and two properties checked with hypothesis:

- nothing valid is refused: jobs generated from the documented rules (not from the models) are enqueued;
- nothing invalid is enqueued: whatever the producer accepts, the emulator (an independent, PHP-faithful
  implementation of the four methods) applies without an error.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edges import cli
from emulator import Emulator
from emulator.auth import CallContext
from emulator.errors import RestError as PortalRefused
from emulator.methods import METHODS
from tasks import producer
from tasks.jobs import KINDS
from tests.test_jobs import BAD as MODEL_TABLE
from tests.test_jobs import DELIVERED
from workers import keys
from workers.celery import configure
from workers.errors import JobRefused, UnknownPortal
from workers.runtime import Runtime
from workers.settings import Settings, get_settings

OAUTH, HOOK = "acme.bitrix24.test", "hook.bitrix24.test"


@pytest.fixture
def rt(runtime: Runtime, settings: Settings) -> Iterator[Runtime]:
    """The shared test Runtime, the Celery producer pointed at the same private Redis, two portals."""
    configure(settings)
    runtime.registry.add_oauth(OAUTH, "http://127.0.0.1:9/acme/rest/", "acc-token-1", "ref-token-1", 4102444800.0)
    runtime.registry.add_webhook(HOOK, "http://127.0.0.1:9/hook/rest/1/c0dec0de/")
    yield runtime
    configure(get_settings())


def enqueued(rt: Runtime) -> int:
    """Messages in the queue plus job records in the ledger (both must stay 0 after a refusal)."""
    queue = rt.settings.queue
    messages = sum(int(rt.redis.llen(keys.queue(queue, step))) for step in keys.PRIORITY_STEPS)
    return messages + rt.ledger.count()


MSG = dict(DELIVERED)
# (kind, payload, field named in the refusal, words of the rule). Every payload names a registered portal
# unless the case is about the portal.
TABLE: list[tuple[str, Any, str, str]] = [
    # not a job at all
    ("status-update", ["not", "a", "mapping"], "(job)", "a job is a JSON object of fields, not list"),
    ("status-update", "portal=acme", "(job)", "a job is a JSON object of fields, not str"),
    ("status-update", None, "(job)", "a job is a JSON object of fields, not NoneType"),
    ("no-such-kind", {"portal": OAUTH}, "kind", "unknown job kind"),
    # the portal
    ("mark-unread", {"dialog_id": "1", "message_id": 1}, "portal", "required"),
    ("mark-unread", {"portal": 123, "dialog_id": "1", "message_id": 1}, "portal", "valid string"),
    ("mark-unread", {"portal": [OAUTH], "dialog_id": "1", "message_id": 1}, "portal", "valid string"),
    ("mark-unread", {"portal": None, "dialog_id": "1", "message_id": 1}, "portal", "valid string"),
    ("mark-unread", {"portal": "", "dialog_id": "1", "message_id": 1}, "portal", "at least 1"),
    ("mark-unread", {"portal": "p" * 256, "dialog_id": "1", "message_id": 1}, "portal", "at most 255"),
    ("mark-unread", {"portal": "nowhere.bitrix24.test", "dialog_id": "1", "message_id": 1}, "portal", "unknown portal"),
    ("mark-unread", {"portal": "acme\u200b.bitrix24.test", "dialog_id": "1", "message_id": 1}, "portal", "pattern"),
    ("mark-unread", {"portal": "acme/../x", "dialog_id": "1", "message_id": 1}, "portal", "pattern"),
    (
        "status-update",
        {"portal": HOOK, "code": "c", "message_id": "1", "status": "sent"},
        "portal",
        "OAuth application",
    ),
    # status-update
    ("status-update", {"portal": OAUTH}, "code", "required"),
    ("status-update", {"portal": OAUTH, "code": "c", "message_id": "1", "status": "DELIVERED"}, "status", "'queued'"),
    ("status-update", {"portal": OAUTH, "code": "c", "message_id": "1", "status": " sent"}, "status", "'queued'"),
    ("status-update", {"portal": OAUTH, "code": "c", "message_id": "1", "status": "sent\n"}, "status", "'queued'"),
    ("status-update", {"portal": OAUTH, "code": "c", "message_id": "1", "status": ""}, "status", "'queued'"),
    ("status-update", {"portal": OAUTH, "code": "c", "message_id": "1", "status": 1}, "status", "'queued'"),
    ("status-update", {"portal": OAUTH, "code": "c", "message_id": "1", "status": None}, "status", "'queued'"),
    (
        "status-update",
        {"portal": OAUTH, "code": "c", "message_id": "   ", "status": "sent"},
        "message_id",
        "begin or end with whitespace",
    ),
    (
        "status-update",
        {"portal": OAUTH, "code": "c", "message_id": "m" * 256, "status": "sent"},
        "message_id",
        "at most 255",
    ),
    (
        "status-update",
        {"portal": OAUTH, "code": "c", "message_id": None, "status": "sent"},
        "message_id",
        "valid string",
    ),
    (
        "status-update",
        {"portal": OAUTH, "code": "c", "message_id": "a\ud800b", "status": "sent"},
        "message_id",
        "unicode",
    ),
    (
        "status-update",
        {"portal": OAUTH, "code": "c", "message_id": "a\x1bb", "status": "sent"},
        "message_id",
        "control",
    ),
    ("status-update", {"portal": OAUTH, "code": "sms gw", "message_id": "1", "status": "sent"}, "code", "pattern"),
    ("status-update", {"portal": OAUTH, "code": "смс", "message_id": "1", "status": "sent"}, "code", "pattern"),
    (
        "status-update",
        {"portal": OAUTH, "code": "sms\U0001f600", "message_id": "1", "status": "sent"},
        "code",
        "pattern",
    ),
    # delivery-confirmation
    ("delivery-confirmation", {"portal": OAUTH, "connector": "c", "line": 1}, "messages", "required"),
    (
        "delivery-confirmation",
        {"portal": OAUTH, "connector": "c", "line": 1, "messages": "x"},
        "messages",
        "valid list",
    ),
    (
        "delivery-confirmation",
        {"portal": OAUTH, "connector": "c", "line": 1, "messages": [None]},
        "messages.0",
        "DeliveredMessage",
    ),
    (
        "delivery-confirmation",
        {"portal": OAUTH, "connector": "c", "line": 1, "messages": [{}]},
        "messages.0.im",
        "required",
    ),
    (
        "delivery-confirmation",
        {"portal": OAUTH, "connector": "c", "line": 1, "messages": [MSG] * 51},
        "messages",
        "at most 50",
    ),
    (
        "delivery-confirmation",
        {"portal": OAUTH, "connector": "c", "line": 1.5, "messages": [MSG]},
        "line",
        "valid integer",
    ),
    (
        "delivery-confirmation",
        {"portal": OAUTH, "connector": "c", "line": True, "messages": [MSG]},
        "line",
        "valid integer",
    ),
    (
        "delivery-confirmation",
        {"portal": OAUTH, "connector": "c", "line": 2**63, "messages": [MSG]},
        "line",
        "less than or equal",
    ),
    (
        "delivery-confirmation",
        {"portal": OAUTH, "connector": "c" * 101, "line": 1, "messages": [MSG]},
        "connector",
        "at most 100",
    ),
    (
        "delivery-confirmation",
        {"portal": OAUTH, "connector": "c", "line": 1, "messages": [{**MSG, "im": {"chat_id": -1, "message_id": 1}}]},
        "messages.0.im.chat_id",
        "greater than 0",
    ),
    (
        "delivery-confirmation",
        {"portal": OAUTH, "connector": "c", "line": 1, "messages": [{**MSG, "message": {"id": [""], "date": 1}}]},
        "messages.0.message.id.0",
        "at least 1",
    ),
    (
        "delivery-confirmation",
        {"portal": OAUTH, "connector": "c", "line": 1, "messages": [{**MSG, "extra": 1}]},
        "messages.0.extra",
        "unknown field",
    ),
    # sender-update
    ("sender-update", {"portal": OAUTH, "code": "p", "handler": "javascript:alert(1)"}, "handler", "http(s) URL"),
    ("sender-update", {"portal": OAUTH, "code": "p", "handler": "https://"}, "handler", "http(s) URL"),
    ("sender-update", {"portal": OAUTH, "code": "p", "handler": "//sms.example.com/h"}, "handler", "http(s) URL"),
    ("sender-update", {"portal": OAUTH, "code": "p", "handler": "https://sms example.com/h"}, "handler", "http(s) URL"),
    ("sender-update", {"portal": OAUTH, "code": "p", "handler": "mailto:ops@example.com"}, "handler", "http(s) URL"),
    (
        "sender-update",
        {"portal": OAUTH, "code": "p", "handler": "https://x.example/" + "h" * 2000},
        "handler",
        "at most 2000",
    ),
    ("sender-update", {"portal": OAUTH, "code": "p", "handler": 123}, "handler", "valid string"),
    ("sender-update", {"portal": OAUTH, "code": "p", "name": "n" * 1001}, "name", "at most 1000"),
    ("sender-update", {"portal": OAUTH, "code": "p", "name": ""}, "name", "at least 1"),
    ("sender-update", {"portal": OAUTH, "code": "p", "name": 5}, "name", "valid"),
    ("sender-update", {"portal": OAUTH, "code": "p", "description": {"en": ""}}, "description.en", "at least 1"),
    # what the models let through and a portal refuses (PHP empty(), HandlerHelper::checkCallback)
    ("status-update", {"portal": OAUTH, "code": "0", "message_id": "1", "status": "sent"}, "code", "empty"),
    ("status-update", {"portal": OAUTH, "code": "c", "message_id": "0", "status": "sent"}, "message_id", "empty"),
    ("sender-update", {"portal": OAUTH, "code": "p", "name": {}}, "name", "empty"),
    ("sender-update", {"portal": OAUTH, "code": "p", "description": "0"}, "description", "empty"),
    ("mark-unread", {"portal": OAUTH, "dialog_id": "0", "message_id": 1}, "dialog_id", "empty"),
    # ordering: `at` is unix seconds
    ("mark-unread", {"portal": OAUTH, "dialog_id": "1", "message_id": 1, "at": -1}, "at", "greater than or equal"),
    ("mark-unread", {"portal": OAUTH, "dialog_id": "1", "message_id": 1, "at": "soon"}, "at", "valid number"),
    ("sender-update", {"portal": OAUTH, "code": "p", "handler": "https://localhost/h"}, "handler", "dot"),
    ("sender-update", {"portal": OAUTH, "code": "p", "handler": "https://sms.example.com:99999/h"}, "handler", "port"),
    # mark-unread: DIALOG_IDs
    *[
        ("mark-unread", {"portal": OAUTH, "dialog_id": bad, "message_id": 1}, "dialog_id", rule)
        for bad, rule in (
            ("chat-1", "pattern"),
            ("chat1 ", "pattern"),
            (" 1", "pattern"),
            ("-5", "pattern"),
            ("0x10", "pattern"),
            ("1e5", "pattern"),
            ("sg", "pattern"),
            ("user5", "pattern"),
            ("", "pattern"),
            ("chat1\n", "pattern"),
            ("\uff11\uff12", "pattern"),
            ("chat1;DROP", "pattern"),
            ("9" * 41, "at most 40"),
            (12, "valid string"),
        )
    ],
    ("mark-unread", {"portal": OAUTH, "dialog_id": "chat1", "message_id": -1}, "message_id", "greater than 0"),
    ("mark-unread", {"portal": OAUTH, "dialog_id": "chat1", "message_id": 1.5}, "message_id", "valid integer"),
    ("mark-unread", {"portal": OAUTH, "dialog_id": "chat1", "message_id": 2**63}, "message_id", "less than or equal"),
    ("mark-unread", {"portal": OAUTH, "dialog_id": "chat1", "message_id": None}, "message_id", "valid integer"),
]


@pytest.mark.parametrize(("kind", "payload", "field", "rule"), TABLE)
def test_the_producer_refuses_bad_input_naming_the_field(
    rt: Runtime, kind: str, payload: Any, field: str, rule: str
) -> None:
    with pytest.raises(JobRefused) as info:
        producer.enqueue(kind, payload)
    errors: dict[str, str] = {}
    for name, message in info.value.errors:  # a union field has one message per branch
        errors[name] = f"{errors.get(name, '')}; {message}"
    assert field in errors, info.value.errors
    assert rule in errors[field], errors[field]
    assert enqueued(rt) == 0


@pytest.mark.parametrize(("kind", "fields", "field", "rule"), MODEL_TABLE)
def test_the_model_table_is_refused_at_the_public_api_too(
    rt: Runtime, kind: str, fields: dict[str, Any], field: str, rule: str
) -> None:
    with pytest.raises(JobRefused) as info:
        producer.enqueue(kind, {"portal": OAUTH, **fields})
    assert rule in dict(info.value.errors)[field]
    assert enqueued(rt) == 0


def test_the_helpers_refuse_too(rt: Runtime) -> None:
    with pytest.raises(UnknownPortal):
        producer.enqueue_status_update(portal="nowhere", code="c", message_id="1", status="sent")
    with pytest.raises(JobRefused, match="messages"):
        producer.enqueue_delivery_confirmation(portal=OAUTH, connector="c", line=1, messages=[])
    with pytest.raises(JobRefused, match="at least one of handler, name, description"):
        producer.enqueue_sender_update(portal=OAUTH, code="c")
    with pytest.raises(JobRefused, match="dialog_id"):
        producer.enqueue_mark_unread(portal=OAUTH, dialog_id="user1", message_id=1)
    assert enqueued(rt) == 0


def test_a_bulk_enqueue_with_one_bad_job_enqueues_nothing(rt: Runtime) -> None:
    good = [("mark-unread", {"portal": OAUTH, "dialog_id": "chat1", "message_id": i}) for i in range(1, 6)]
    bad = ("status-update", {"portal": OAUTH, "code": "c", "message_id": "1", "status": "read"})
    with pytest.raises(JobRefused) as info:
        producer.enqueue_many([*good[:3], bad, *good[3:]])
    assert "[3].status" in dict(info.value.errors)
    assert enqueued(rt) == 0


# --- the CLI ---------------------------------------------------------------------------------------------

CLI_TABLE: list[tuple[list[str], str | None, str]] = [
    (
        ["enqueue", "status-update", "--portal", OAUTH, "--code", "c", "--message-id", "1", "--status", "read"],
        None,
        "status:",
    ),
    (["enqueue", "mark-unread", "--portal", OAUTH, "--dialog-id", "user1", "--message-id", "1"], None, "dialog_id:"),
    (["enqueue", "mark-unread", "--dialog-id", "chat1", "--message-id", "1"], None, "portal:"),
    (
        ["enqueue", "mark-unread", "--portal", "nowhere", "--dialog-id", "chat1", "--message-id", "1"],
        None,
        "unknown portal",
    ),
    (["enqueue", "mark-unread", "--portal", OAUTH, "--dialog-id", "chat1", "--message-id", "x"], None, "message_id:"),
    (
        ["enqueue", "delivery-confirmation", "--portal", OAUTH, "--connector", "c", "--line", "1", "--messages", "[]"],
        None,
        "messages:",
    ),
    (
        [
            "enqueue",
            "delivery-confirmation",
            "--portal",
            OAUTH,
            "--connector",
            "c",
            "--line",
            "1",
            "--messages",
            "{oops",
        ],
        None,
        "bad JSON",
    ),
    (["enqueue", "sender-update", "--portal", OAUTH, "--code", "c", "--handler", "not a url"], None, "handler:"),
    (
        [
            "enqueue",
            "status-update",
            "--json",
            json.dumps({"portal": OAUTH, "code": "c", "message_id": "1", "status": "sent", "x": 1}),
        ],
        None,
        "x: unknown field",
    ),
    (
        ["enqueue", "status-update", "--portal", HOOK, "--code", "c", "--message-id", "1", "--status", "sent"],
        None,
        "OAuth application",
    ),
    (["enqueue"], None, "kind:"),
    (["enqueue", "--file", "-"], json.dumps({"portal": OAUTH}) + "\n", '"kind" field'),
    (
        ["enqueue", "--file", "-"],
        "\n".join(
            json.dumps({"kind": "mark-unread", "portal": OAUTH, "dialog_id": "chat1", "message_id": i}) for i in (1, 0)
        ),
        "line 2: message_id",
    ),
    (["enqueue", "--file", "-"], "[1, 2]", '"kind" field'),
    (["enqueue", "--file", "-"], "not json at all", "bad JSON"),
]


@pytest.mark.parametrize(("argv", "stdin", "message"), CLI_TABLE)
def test_the_cli_refuses_bad_input_naming_the_field(
    rt: Runtime,
    argv: list[str],
    stdin: str | None,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = cli.main(argv)
    out = capsys.readouterr()
    assert code == 2, (out.out, out.err)
    assert message in out.err, out.err
    assert "Traceback" not in out.err and out.out == ""
    assert enqueued(rt) == 0


@pytest.mark.parametrize(
    "argv",
    [
        [
            "enqueue",
            "delivery-confirmation",
            "--portal",
            OAUTH,
            "--connector",
            "c",
            "--line",
            "abc",
            "--messages",
            "[]",
        ],
        ["enqueue", "no-such-kind", "--portal", OAUTH],
        ["portal", "add"],
    ],
)
def test_the_cli_refuses_malformed_flags(rt: Runtime, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert enqueued(rt) == 0


# --- properties ------------------------------------------------------------------------------------------

CODE = st.from_regex(r"\A[A-Za-z0-9._-]{1,20}\Z").filter(lambda c: c != "0")  # "0" is empty to PHP
# printable text without control characters and without surrogates, as the docs' string fields take
TEXT_ALPHABET = st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\u2028\u2029\x85")
POSITIVE = st.integers(min_value=1, max_value=2**63 - 1)


def text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(TEXT_ALPHABET, min_size=1, max_size=max_size).filter(lambda s: s.strip() == s and s not in ("0",))


HOST = st.from_regex(r"\A[a-z0-9]{1,10}\.(com|example|bitrix24\.test)\Z")
HANDLER = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}/{path}",
    st.sampled_from(["http", "https"]),
    HOST,
    st.text(string.ascii_letters + string.digits + "/-_.", max_size=40),
)
LOCALIZED = st.one_of(text(100), st.dictionaries(st.from_regex(r"\A[a-z]{2}\Z"), text(100), min_size=1, max_size=3))


def valid_jobs() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """Jobs as the documented rules describe them (independently of the pydantic models)."""
    message = st.fixed_dictionaries(
        {
            "im": st.fixed_dictionaries({"chat_id": POSITIVE, "message_id": POSITIVE}),
            "message": st.fixed_dictionaries(
                {"id": st.lists(text(50), min_size=1, max_size=3), "date": st.integers(min_value=0, max_value=2**40)}
            ),
            "chat": st.fixed_dictionaries({"id": text(50)}),
        }
    )
    status = st.fixed_dictionaries(
        {
            "code": CODE,
            "message_id": text(255),
            "status": st.sampled_from(["queued", "sent", "delivered", "undelivered", "failed"]),
        }
    )
    delivery = st.fixed_dictionaries(
        {"connector": CODE, "line": POSITIVE, "messages": st.lists(message, min_size=1, max_size=5)}
    )
    sender = st.fixed_dictionaries(
        {"code": CODE}, optional={"handler": HANDLER, "name": LOCALIZED, "description": LOCALIZED}
    ).filter(lambda d: len(d) > 1)
    unread = st.fixed_dictionaries(
        {"dialog_id": st.from_regex(r"\A(chat|sg)?[1-9][0-9]{0,17}\Z"), "message_id": POSITIVE}
    )
    return st.one_of(
        st.tuples(st.just("status-update"), status),
        st.tuples(st.just("delivery-confirmation"), delivery),
        st.tuples(st.just("sender-update"), sender),
        st.tuples(st.just("mark-unread"), unread),
    )


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(["", " ", "0", "\x00", "\ud800", "ｓｅｎｔ", "https://localhost/h", "chat", "-1"]),
)


@st.composite
def mutated_jobs(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid job with one field dropped, replaced by junk, or joined by an unknown one (or left valid)."""
    kind, payload = draw(valid_jobs())
    payload = dict(payload)
    how = draw(st.sampled_from(["drop", "junk", "extra", "nested", "none"]))
    keys = sorted(payload)
    if how == "drop":
        payload.pop(draw(st.sampled_from(keys)))
    elif how == "junk":
        payload[draw(st.sampled_from(keys))] = draw(JUNK)
    elif how == "extra":
        payload[draw(st.text(min_size=1, max_size=8))] = draw(JUNK)
    elif how == "nested" and kind == "delivery-confirmation":
        item = json.loads(json.dumps(payload["messages"][0]))
        part = draw(st.sampled_from(["im", "message", "chat"]))
        item[part][draw(st.sampled_from(sorted(item[part])))] = draw(JUNK)
        payload["messages"] = [item, *payload["messages"][1:]]
    return kind, payload


@pytest.fixture(scope="module")
def portal_oracle() -> Iterator[Emulator]:
    """The emulator, in process, as the judge of what a portal accepts (no HTTP needed)."""
    emu = Emulator(port=0)
    emu.add_portal(OAUTH, auto_messages=True, auto_connectors=True)
    yield emu
    emu.stop()


def portal_accepts(emu: Emulator, kind: str, params: dict[str, Any]) -> str | None:
    """None if the emulator applies the call; its error code if it refuses it."""
    portal = emu.registry.portal(OAUTH)
    assert portal is not None
    if "CODE" in params and isinstance(params["CODE"], str):
        emu.add_sender(OAUTH, params["CODE"])  # the app registered this sender earlier
    ctx = CallContext(portal=portal, auth_type="oauth", client_id=emu.client_id, user_id=1, subject="app")
    try:
        with portal.lock:
            METHODS[KINDS[kind].method](ctx, json.loads(json.dumps(params)))
    except PortalRefused as exc:
        return exc.code
    return None


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(job=valid_jobs())
def test_nothing_valid_is_refused(rt: Runtime, job: tuple[str, dict[str, Any]]) -> None:
    kind, fields = job
    job_id = producer.enqueue(kind, {"portal": OAUTH, **fields})
    assert rt.ledger.get(job_id) is not None


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(job=mutated_jobs())
def test_nothing_invalid_is_enqueued(rt: Runtime, portal_oracle: Emulator, job: tuple[str, dict[str, Any]]) -> None:
    kind, fields = job
    payload = {"portal": OAUTH, **fields}
    before = enqueued(rt)
    try:
        kwargs = producer.check(kind, payload)
    except JobRefused as exc:
        assert exc.errors and all(field and message for field, message in exc.errors)
        with pytest.raises(JobRefused):
            producer.enqueue(kind, payload)
        assert enqueued(rt) == before
        return
    params = KINDS[kind].validate(kwargs).params()
    refused = portal_accepts(portal_oracle, kind, params)
    assert refused is None, f"enqueued, but a portal refuses it with {refused}: {params!r}"
