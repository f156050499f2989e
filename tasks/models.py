"""The job models: one pydantic model per kind that mirrors its REST method's docs (fields, params, what a
200 answer that still failed looks like), built of the field types in `tasks.fields`.

Field names are the method's parameters in lower case; the Celery message carries exactly these
fields plus `portal` as JSON kwargs, so any Celery-protocol client can produce jobs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tasks.fields import (
    HANDLER_URL,
    INTEGRAL,
    NO_CONTROL,
    NO_EDGE_SPACE,
    PHP_EMPTY,
    Handler,
    Horizon,
    Identifier,
    LocalizedText,
    PortalKey,
    PositiveInt,
    ProviderCode,
)
from workers.delivery.calls import MergeRule
from workers.errors import ResultFailed


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
