"""The published contract of the job kinds: a JSON Schema per kind, generated from the models in `tasks.models`
(never written by hand). `b24q schema [KIND]` prints it; the HTTP intake's OpenAPI document carries it.

In this form a job names its kind: `{"kind": "status-update", "portal": "acme", ...fields}`, as a POST to
/v1/jobs or a line of `b24q enqueue --file` sends it. The schema states every rule of a job's fields, each from the same
declaration the model validates with (control characters, what PHP's empty() calls empty, a handler URL: a
`Refuse` or a pattern in `tasks.fields`), so a job is schema-valid exactly when the model accepts it
(tests/security/test_input.py holds them to edge examples). The producer (`tasks.producer.check`) adds what
no schema can say: the portal registry, and an `at` no later than its clock plus B24Q_CLOCK_SKEW.

Examples:
    >>> job_schema("mark-unread")["required"]
    ['portal', 'dialog_id', 'message_id', 'kind']
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, create_model

from tasks.jobs import KINDS
from tasks.models import Job

DIALECT = "https://json-schema.org/draft/2020-12/schema"


@cache
def kind_model(kind: str) -> type[Job]:
    """The kind's model with its `kind` field (e.g. `StatusUpdateJob`): validates the tagged form."""
    k = KINDS[kind]
    tag: Any = Literal[kind]  # type: ignore[valid-type]  # one Literal per kind, built from the table
    return create_model(
        f"{k.model.__name__}Job",
        __base__=k.model,
        __doc__=k.model.__doc__,
        kind=(tag, Field(description=f"The job kind: `{kind}` calls `{k.method}`.")),
    )


def job_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one kind's jobs, a document of its own."""
    return {"$schema": DIALECT, **kind_model(kind).model_json_schema()}


def job_schemas() -> dict[str, dict[str, Any]]:
    """Every kind's schema, keyed by kind."""
    return {kind: job_schema(kind) for kind in KINDS}


def components(ref_template: str = "#/components/schemas/{model}") -> dict[str, Any]:
    """Schemas for an OpenAPI document's components: each kind's (`StatusUpdateJob`, ...), the objects they
    nest, and `Job`, a job of any kind (one of them, told apart by `kind`)."""
    models: Any = tuple(kind_model(kind) for kind in KINDS)
    job = TypeAdapter(Annotated[Union[models], Field(discriminator="kind")])  # noqa: UP007 - a runtime tuple
    schema = job.json_schema(ref_template=ref_template)
    return {**schema.pop("$defs"), "Job": {"title": "Job", **schema}}
