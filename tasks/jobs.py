"""The four job kinds, each a declaration: a pydantic model that mirrors the method's docs, the REST
method it calls, how its params are built, and whether its calls may merge. Everything else (limit,
call, classify, retry, dead letter) is one shared pipeline in `workers.pipeline`.

Field names are the method's parameters in lower case; the Celery message carries exactly these
fields plus `portal` as JSON kwargs, so any Celery-protocol client can produce jobs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from workers.delivery.calls import MergeRule
from workers.delivery.ordering import OrderRule, StateKey
from workers.errors import JobRefused, ResultFailed
from workers.portals.registry import PortalRegistry

#: C0 controls, DEL and C1 controls: refused in every string of a job, at any depth (a portal stores and
#: shows what it is given, and a NUL or an escape sequence in it breaks pages, logs and terminals) ...
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: ... except in free text (a sender's name and description), which may break lines: TAB, LF and CR.
CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
#: A sender's handler: http(s), a host name with a dot (Bitrix24 wants one), a port 1-65535, no spaces.
HANDLER_URL = re.compile(
    r"^[Hh][Tt][Tt][Pp][Ss]?://([^ /?#@]*@)?[A-Za-z0-9\-_]+(\.[A-Za-z0-9\-_]+)+\.?"
    r"(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?([/?#][^ ]*)?$"
)


@dataclass(frozen=True)
class Refuse:
    """A rule a string breaks when `pattern` finds something in it (or it equals `const`), stated once: the
    model refuses the value with `why`, and the published schema says the same (`not: {anyOf: [...]}`),
    so that what the schema allows the producer accepts.

    Examples:
        >>> Code = Annotated[str, Refuse("is empty", const="0")]
    """

    why: str
    pattern: re.Pattern[str] | None = None
    const: str | None = None

    def check(self, value: str) -> str:
        found = self.pattern.search(value) if self.pattern is not None else None
        if found is not None:
            raise ValueError(f"{self.why}: U+{ord(found.group()[:1] or ' '):04X} at {found.start()}")
        if value == self.const:
            raise ValueError(self.why)
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        earlier = out.get("not")
        refused = [
            *(earlier.get("anyOf", [earlier]) if earlier else []),
            {"pattern": self.pattern.pattern} if self.pattern is not None else {"const": self.const},
        ]
        out["not"] = refused[0] if len(refused) == 1 else {"anyOf": refused}
        return out


NO_CONTROL = Refuse("must not contain control characters (U+0000-U+001F, U+007F-U+009F)", CONTROL)
NO_CONTROL_IN_TEXT = Refuse("must not contain control characters other than TAB, LF and CR", CONTROL_IN_TEXT)
#: Bitrix24 checks required params with PHP's empty(): "0" counts as missing there (found by the property test
#: in tests/test_hostile_input.py against the emulator)
PHP_EMPTY = Refuse('is empty to Bitrix24 (PHP empty(): "0" and {} count as empty)', const="0")
#: an identifier the portal matches exactly: " m1" would be another message than "m1"
NO_EDGE_SPACE = Refuse("must not begin or end with whitespace", re.compile(r"^\s|\s$"))


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: After an integer's constraints: 12.0 is taken as 12 (the same number to JSON and its Schema); "12", true
#: and 12.5 stay refused.
INTEGRAL = BeforeValidator(_integral)
#: A messageservice provider code: `^[a-z0-9.\-_]+$`, case-insensitive (bitrix24-facts.md §4.1).
ProviderCode = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9.\-_]+$", min_length=1, max_length=100), NO_CONTROL, PHP_EMPTY
]
PortalKey = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.\-_:]+$"), NO_CONTROL]
PositiveInt = Annotated[int, Field(gt=0, le=2**63 - 1, strict=True), INTEGRAL]
#: An identifier of the source's (a message id, a chat id): anything printable, no control characters.
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=255), NO_CONTROL]
Text = Annotated[str, StringConstraints(min_length=1, max_length=1000), NO_CONTROL_IN_TEXT, PHP_EMPTY]
#: a text, or texts by two-letter language code (the schema says no other keys, as the validator does)
LocalizedText = (
    Text
    | Annotated[
        dict[Annotated[str, StringConstraints(pattern=r"^[a-z]{2}$"), NO_CONTROL], Text],
        Field(json_schema_extra={"additionalProperties": False, "minProperties": 1}),
    ]
)
Handler = Annotated[
    str, StringConstraints(max_length=2000), NO_CONTROL, Field(json_schema_extra={"pattern": HANDLER_URL.pattern})
]


@dataclass(frozen=True)
class Horizon:
    """The latest `at` a job entering the queue may carry: the producer's clock plus the skew allowed
    between its source's clock and ours (B24Q_CLOCK_SKEW). A job already queued is not held to it again
    (a worker's clock may run behind the producer's)."""

    now: float
    skew: float

    @property
    def latest(self) -> float:
        return self.now + self.skew


class Job(BaseModel):
    """Fields common to every job: the portal it goes to (a registry key, never a token)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    portal: PortalKey
    #: When the source learned this state (unix seconds, fractions allowed), e.g. a delivery report's own
    #: timestamp: reports of one message are ordered by it instead of by enqueue order (README: Ordering).
    #: A JSON number (strict: "12" and true are refused, as the published schema says). Bounded by the
    #: `Horizon` when it enters the queue: a report from the future would outrank every real one.
    at: (
        Annotated[
            float,
            Field(
                ge=0.0,
                le=4_102_444_800.0,
                strict=True,
                description="When the source learned this state, in unix seconds: no later than the producer's "
                "clock plus B24Q_CLOCK_SKEW (300 s by default) when the job is enqueued.",
            ),
        ]
        | None
    ) = None

    def params(self) -> dict[str, Any]:
        """The REST method's parameters."""
        raise NotImplementedError

    def check_result(self, result: Any) -> None:
        """Raise if a 200 answer still means failure."""

    @field_validator("at", mode="after")
    @classmethod
    def _not_ahead(cls, value: float | None, info: ValidationInfo) -> float | None:
        horizon = (info.context or {}).get("horizon")
        if value is not None and isinstance(horizon, Horizon) and value > horizon.latest:
            raise ValueError(
                f"is {value - horizon.now:.0f} s ahead of now; at most B24Q_CLOCK_SKEW ({horizon.skew:g} s) is allowed"
            )
        return value

    @field_validator("name", "description", mode="after", check_fields=False)
    @classmethod
    def _not_empty_to_php(cls, value: Any) -> Any:
        # the schema says it with minProperties (a "0" text is refused by PHP_EMPTY)
        if value == {}:
            raise ValueError(PHP_EMPTY.why)
        return value


class StatusUpdate(Job):
    """`messageservice.message.status.update`: report an SMS's delivery state to the portal."""

    code: ProviderCode
    message_id: Annotated[Identifier, NO_EDGE_SPACE, PHP_EMPTY]
    status: Literal["queued", "sent", "delivered", "undelivered", "failed"]

    def params(self) -> dict[str, Any]:
        return {"CODE": self.code, "MESSAGE_ID": self.message_id, "STATUS": self.status}


class ImIds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    chat_id: PositiveInt
    message_id: PositiveInt


class ExternalMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: Annotated[list[Identifier], Field(min_length=1)]
    date: Annotated[int, Field(ge=0, strict=True), INTEGRAL]


class ExternalChat(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: Identifier


class DeliveredMessage(BaseModel):
    """One `MESSAGES` item; `im` ids come from the OnImConnectorMessageAdd event."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    im: ImIds
    message: ExternalMessage
    chat: ExternalChat


#: Delivery confirmations for the same CONNECTOR and LINE share one call (up to B24Q_MERGE_MAX messages);
#: imconnector can answer HTTP 200 with SUCCESS: false (bitrix24-facts.md §4.2).
DELIVERY_MERGE = MergeRule(keys=("CONNECTOR", "LINE"), items="MESSAGES", success="SUCCESS")


class DeliveryConfirmation(Job):
    """`imconnector.send.status.delivery`: mark open-line messages delivered (and read)."""

    connector: Annotated[
        str, StringConstraints(pattern=r"^[A-Za-z0-9.\-_]+$", min_length=1, max_length=100), NO_CONTROL
    ]
    line: PositiveInt
    messages: Annotated[list[DeliveredMessage], Field(min_length=1, max_length=50)]

    def params(self) -> dict[str, Any]:
        return {
            "CONNECTOR": self.connector,
            "LINE": self.line,
            "MESSAGES": [m.model_dump() for m in self.messages],
        }

    def check_result(self, result: Any) -> None:
        if not DELIVERY_MERGE.succeeded(result):
            raise ResultFailed("SUCCESS_FALSE", f"imconnector answered {str(result)[:200]}", 200)


class SenderUpdate(Job):
    """`messageservice.sender.update`: change a provider's handler URL, name or description."""

    # `_one_change` in the published schema: a field given as null changes nothing
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [field], "properties": {field: {"not": {"type": "null"}}}}
                for field in ("handler", "name", "description")
            ]
        }
    )

    code: ProviderCode
    handler: Handler | None = None
    name: LocalizedText | None = None
    description: LocalizedText | None = None

    @field_validator("handler")
    @classmethod
    def _handler_is_url(cls, value: str | None) -> str | None:
        if value is not None and not HANDLER_URL.fullmatch(value):
            raise ValueError(
                "must be an http(s) URL with a host name such as https://sms.example.com/handler (Bitrix24 wants a "
                "dot in it), a port 1-65535 if any, no spaces"
            )
        return value

    @model_validator(mode="after")
    def _one_change(self) -> SenderUpdate:
        if self.handler is None and self.name is None and self.description is None:
            raise ValueError("give at least one of handler, name, description")
        return self

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"CODE": self.code}
        for key in ("handler", "name", "description"):
            value = getattr(self, key)
            if value is not None:
                params[key.upper()] = value
        return params


class SenderAdd(Job):
    """`messageservice.sender.add`: register an SMS provider (bitrix24-facts.md §5.1). The application's
    lifecycle enqueues these at install and after every update, which deletes the app's providers (§7.2)."""

    code: ProviderCode
    handler: Handler
    name: LocalizedText
    description: LocalizedText | None = None
    type: Literal["SMS"] = "SMS"

    _handler_is_url = field_validator("handler")(SenderUpdate._handler_is_url.__func__)  # type: ignore[attr-defined]

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"CODE": self.code, "TYPE": self.type, "HANDLER": self.handler, "NAME": self.name}
        if self.description is not None:
            params["DESCRIPTION"] = self.description
        return params


class MarkUnread(Job):
    """`im.dialog.unread`: mark a dialog unread from MESSAGE_ID on, for the token's user."""

    dialog_id: Annotated[
        str, StringConstraints(pattern=r"^(chat[0-9]+|sg[0-9]+|[0-9]+)$", max_length=40), NO_CONTROL, PHP_EMPTY
    ]
    message_id: PositiveInt

    def params(self) -> dict[str, Any]:
        return {"DIALOG_ID": self.dialog_id, "MESSAGE_ID": self.message_id}


# --- ordering: which portal state each kind sets (workers.delivery.ordering) ---------------------------

#: A message's status only moves forward: queued < sent < a final status (delivered, undelivered, failed).
STATUS_RANK = {"queued": 0, "sent": 1, "delivered": 2, "undelivered": 2, "failed": 2}


def _status_keys(job: Mapping[str, Any]) -> tuple[StateKey, ...]:
    return (StateKey(f"status:{str(job['code']).lower()}:{job['message_id']}"),)


def _status_rank(job: Mapping[str, Any]) -> int:
    return STATUS_RANK.get(str(job.get("status")), 0)


def _sender_keys(job: Mapping[str, Any]) -> tuple[StateKey, ...]:
    code = str(job["code"]).lower()
    return tuple(StateKey(f"sender:{code}:{f}", (f.upper(),)) for f in ("handler", "name", "description") if f in job)


def _unread_keys(job: Mapping[str, Any]) -> tuple[StateKey, ...]:
    return (StateKey(f"unread:{job['dialog_id']}"),)


STATUS_ORDER = OrderRule(_status_keys, _status_rank)
#: per field: an older job's name still goes out after a newer job changed only the handler
SENDER_ORDER = OrderRule(_sender_keys)
UNREAD_ORDER = OrderRule(_unread_keys)


_UNION_TAG = re.compile(r"^(constrained-\w+|[\w-]+\[.*\]|function-\w+|str|int|dict|list|\[key\])$")


def _field_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """(field path, message) pairs; for a union, only the branch that got furthest is reported: a deeper
    error, or one of a branch whose type the value has, says more than another branch's type."""
    found: list[tuple[tuple[str, ...], bool, bool, str]] = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        path = tuple(p for p in loc if not _UNION_TAG.match(p))
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        found.append((path, len(path) != len(loc), err["type"].endswith("_type"), msg))
    out: list[tuple[str, str]] = []
    for path, in_union, wrong_type, msg in found:
        if in_union and any(
            p[: len(path)] == path and (len(p) > len(path) or (wrong_type and not t)) for p, u, t, _ in found if u
        ):
            continue
        out.append((".".join(path) or "(job)", msg))
    return out


@dataclass(frozen=True)
class JobKind:
    """A job kind: its public name, Celery task name, REST method and model.

    `app_only` methods need application (OAuth) context and refuse webhook portals; `merge` says how
    calls of this kind may share one command of a batch (None: never); `order` which portal state a job
    sets, so that an older job never overwrites a newer one (None: repeats are harmless, e.g. delivery
    confirmations).
    """

    name: str
    task_name: str
    method: str
    model: type[Job]
    app_only: bool
    merge: MergeRule | None = None
    order: OrderRule | None = None
    #: held while the portal's SMS providers are being registered again after an app update
    waits_for_providers: bool = False
    #: error codes that mean the portal already is in the state the job wanted
    applied_codes: frozenset[str] = frozenset()
    #: what else an applied job means for the portal's record
    on_applied: Callable[[PortalRegistry, str, Job], None] | None = None

    def applied(self, registry: PortalRegistry, portal: str, job: Job) -> None:
        if self.on_applied is not None:
            self.on_applied(registry, portal, job)

    def validate(self, payload: Mapping[str, Any], horizon: Horizon | None = None) -> Job:
        """The job, or `JobRefused` naming each bad field and the rule it broke; with a `horizon`, an `at`
        beyond it is refused too (a job entering the queue)."""
        if not isinstance(payload, Mapping):
            raise JobRefused(self.name, [("(job)", f"a job is a JSON object of fields, not {type(payload).__name__}")])
        try:
            return self.model.model_validate(dict(payload), context={"horizon": horizon})
        except ValidationError as exc:
            raise JobRefused(self.name, _field_errors(exc)) from None
        except TypeError as exc:  # payload not a mapping
            raise JobRefused(self.name, [("(job)", str(exc))]) from None

    ALL: ClassVar[dict[str, JobKind]]


STATUS_UPDATE = JobKind(
    "status-update",
    "b24q.status_update",
    "messageservice.message.status.update",
    StatusUpdate,
    app_only=True,
    order=STATUS_ORDER,
    waits_for_providers=True,
)
DELIVERY_CONFIRMATION = JobKind(
    "delivery-confirmation",
    "b24q.delivery_confirmation",
    "imconnector.send.status.delivery",
    DeliveryConfirmation,
    app_only=True,
    merge=DELIVERY_MERGE,
)
SENDER_UPDATE = JobKind(
    "sender-update",
    "b24q.sender_update",
    "messageservice.sender.update",
    SenderUpdate,
    app_only=True,
    order=SENDER_ORDER,
    waits_for_providers=True,
)


def _provider_ready(registry: PortalRegistry, portal: str, job: Job) -> None:
    registry.provider_ready(portal, str(getattr(job, "code", "")))


SENDER_ADD = JobKind(
    "sender-add",
    "b24q.sender_add",
    "messageservice.sender.add",
    SenderAdd,
    app_only=True,
    applied_codes=frozenset({"ERROR_SENDER_ALREADY_INSTALLED"}),
    on_applied=_provider_ready,
)
MARK_UNREAD = JobKind(
    "mark-unread", "b24q.mark_unread", "im.dialog.unread", MarkUnread, app_only=False, order=UNREAD_ORDER
)

KINDS: dict[str, JobKind] = {
    k.name: k for k in (STATUS_UPDATE, DELIVERY_CONFIRMATION, SENDER_UPDATE, SENDER_ADD, MARK_UNREAD)
}
KINDS_BY_TASK: dict[str, JobKind] = {k.task_name: k for k in KINDS.values()}
JobKind.ALL = KINDS
