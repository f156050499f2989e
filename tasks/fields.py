"""The rules a job's fields follow, each stated once: what a string may not contain (`Refuse`), the field
types the job models are built of (a provider code, a portal key, a text, a handler URL), how far ahead a
job's `at` may be (`Horizon`), and how a refused field is reported (`field_errors`).

A `Refuse` is both the model's check and the published schema's `not`, so what the schema allows the
producer accepts (`tasks.schema`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
    ValidationError,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from workers.keys import PORTAL_KEY_CHARS, PORTAL_KEY_MAX

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
PortalKey = Annotated[
    str, StringConstraints(min_length=1, max_length=PORTAL_KEY_MAX, pattern=PORTAL_KEY_CHARS), NO_CONTROL
]
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


_UNION_TAG = re.compile(r"^(constrained-\w+|[\w-]+\[.*\]|function-\w+|str|int|dict|list|\[key\])$")


def field_errors(exc: ValidationError) -> list[tuple[str, str]]:
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
