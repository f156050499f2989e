"""The published job schemas (`tasks.schema`, `b24q schema`, the OpenAPI components): generated from the models,
met by every job the README and the demo show, and never stricter than the producer: what a schema refuses,
the producer refuses too (a table of cases; the producer also refuses what no schema can say)."""

from __future__ import annotations

import ast
import json
import random
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from edges import cli, demo
from edges.cli.jobs import job_fields
from edges.http.app import create_app
from tasks import producer
from tasks.jobs import KINDS
from tasks.schema import components, job_schema, job_schemas
from tests.test_jobs import DELIVERED
from workers.errors import JobRefused
from workers.runtime import Runtime

README = (Path(__file__).parent.parent / "README.md").read_text()
HELPERS = {
    "enqueue_status_update": "status-update",
    "enqueue_delivery_confirmation": "delivery-confirmation",
    "enqueue_sender_update": "sender-update",
    "enqueue_mark_unread": "mark-unread",
}


def any_job() -> Draft202012Validator:
    """A job of any kind, as the OpenAPI document's `Job` says (its components as a document of their own)."""
    return Draft202012Validator({"$defs": components("#/$defs/{model}"), "$ref": "#/$defs/Job"})


def readme_jobs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every job the README shows: the Python helpers' calls, `b24q enqueue`'s flags, the curl body."""
    section = README.split("## Producing jobs")[1]
    python = section.split("```python")[1].split("```")[0]
    calls = [node for node in ast.walk(ast.parse(python)) if isinstance(node, ast.Call)]
    for call in calls:
        if isinstance(call.func, ast.Name) and call.func.id in HELPERS:
            yield HELPERS[call.func.id], {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    for line in section.split("```sh")[1].split("```")[0].splitlines():
        argv = shlex.split(line, comments=True)
        if argv[:2] == ["b24q", "enqueue"] and len(argv) > 2 and not argv[2].startswith("-"):
            args = cli.build_parser().parse_args(argv[1:])
            yield args.kind, job_fields(args)
    body = re.search(r"-d '(.*?)'", README.split("## Producing over HTTP")[1], re.DOTALL)
    assert body is not None, "the README's curl example posts a body"
    for job in json.loads(body.group(1)):
        fields = dict(job)
        yield fields.pop("kind"), fields


def test_the_readme_shows_every_kind_it_documents() -> None:
    kinds = {kind for kind, _ in readme_jobs()}
    assert kinds >= {"status-update", "delivery-confirmation", "sender-update", "mark-unread"}


@pytest.mark.parametrize(("kind", "fields"), list(readme_jobs()))
def test_every_readme_job_meets_the_schema(kind: str, fields: dict[str, Any]) -> None:
    job = {"kind": kind, **fields}
    assert not list(Draft202012Validator(job_schema(kind)).iter_errors(job))
    assert not list(any_job().iter_errors(job))


def test_every_demo_job_meets_the_schema() -> None:
    jobs = demo._jobs(400, random.Random(7))
    assert {kind for kind, _ in jobs} == {"status-update", "delivery-confirmation", "sender-update", "mark-unread"}
    validator = any_job()
    for kind, fields in jobs:
        assert not list(validator.iter_errors({"kind": kind, **fields})), (kind, fields)


def test_schemas_are_generated_documents_with_the_kind_named() -> None:
    schemas = job_schemas()
    assert list(schemas) == list(KINDS)
    for kind, schema in schemas.items():
        Draft202012Validator.check_schema(schema)
        assert schema["properties"]["kind"]["const"] == kind
        assert "kind" in schema["required"] and schema["additionalProperties"] is False
        # generated from the model: every field of the model, its required ones required
        model = KINDS[kind].model
        assert set(schema["properties"]) == {*model.model_fields, "kind"}
        assert {n for n, f in model.model_fields.items() if f.is_required()} <= set(schema["required"])


def test_the_openapi_document_carries_the_same_schemas() -> None:
    document = create_app(lambda: pytest.fail("the document needs no runtime")).openapi()
    published = document["components"]["schemas"]
    for name, schema in components().items():
        assert published[name] == schema
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/Job"} in body["oneOf"]
    assert published["Job"]["discriminator"]["propertyName"] == "kind"


def test_b24q_schema_prints_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == job_schemas()
    assert cli.main(["schema", "mark-unread"]) == 0
    assert json.loads(capsys.readouterr().out) == job_schema("mark-unread")


OAUTH = "acme.bitrix24.test"
BASE: dict[str, dict[str, Any]] = {
    "status-update": {"code": "smsgw", "message_id": "m1", "status": "sent"},
    "delivery-confirmation": {"connector": "waconnector", "line": 7, "messages": [DELIVERED]},
    "sender-update": {"code": "smsgw", "handler": "https://sms.example.com/b24"},
    "sender-add": {"code": "smsgw", "handler": "https://sms.example.com/b24", "name": "SMS"},
    "mark-unread": {"dialog_id": "chat12", "message_id": 5},
}
MESSAGE = dict(DELIVERED)
# (kind, the fields changed from a good job, None to drop a field): each is refused by the schema
REFUSED: list[tuple[str, dict[str, Any]]] = [
    ("no-such-kind", {}),
    ("status-update", {"status": "read"}),
    ("status-update", {"status": 1}),
    ("status-update", {"message_id": None}),
    ("status-update", {"message_id": "m" * 256}),
    ("status-update", {"code": "bad code"}),
    ("status-update", {"extra": 1}),
    ("status-update", {"at": "12"}),
    ("status-update", {"at": True}),
    ("status-update", {"at": -1}),
    ("status-update", {"portal": ""}),
    ("status-update", {"portal": "acme/../x"}),
    ("delivery-confirmation", {"messages": []}),
    ("delivery-confirmation", {"messages": [MESSAGE] * 51}),
    ("delivery-confirmation", {"line": 0}),
    ("delivery-confirmation", {"line": "7"}),
    ("delivery-confirmation", {"line": 2**63}),
    ("delivery-confirmation", {"messages": [{**MESSAGE, "extra": 1}]}),
    ("delivery-confirmation", {"messages": [{**MESSAGE, "im": {"chat_id": 0, "message_id": 1}}]}),
    ("delivery-confirmation", {"messages": [{**MESSAGE, "message": {"id": [], "date": 1}}]}),
    ("sender-update", {"handler": None}),
    ("sender-update", {"name": {"english": "SMS"}}),
    ("sender-update", {"name": {"en": ""}}),
    ("sender-update", {"handler": 5}),
    ("sender-add", {"type": "MMS"}),
    ("sender-add", {"name": None}),
    ("mark-unread", {"dialog_id": "user1"}),
    ("mark-unread", {"message_id": True}),
    ("mark-unread", {"message_id": "5"}),
]


@pytest.mark.parametrize(("kind", "change"), REFUSED)
def test_what_the_schema_refuses_the_producer_refuses(kind: str, change: dict[str, Any], runtime: Runtime) -> None:
    runtime.registry.add_oauth(OAUTH, "http://127.0.0.1:9/acme/rest/", "acc-token-1", "ref-token-1", 4102444800.0)
    fields = {"portal": OAUTH, **BASE.get(kind, {}), **change}
    fields = {k: v for k, v in fields.items() if v is not None}
    assert list(any_job().iter_errors({"kind": kind, **fields})), "the schema accepts it: not a case for this table"
    with pytest.raises(JobRefused):
        producer.check(kind, fields, runtime)


def test_the_good_jobs_of_the_table_pass_both(runtime: Runtime) -> None:
    runtime.registry.add_oauth(OAUTH, "http://127.0.0.1:9/acme/rest/", "acc-token-1", "ref-token-1", 4102444800.0)
    for kind, fields in BASE.items():
        assert not list(any_job().iter_errors({"kind": kind, "portal": OAUTH, **fields}))
        producer.check(kind, {"portal": OAUTH, **fields}, runtime)
