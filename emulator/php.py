"""PHP value semantics the Bitrix source relies on (``empty()``, ``intval()``, ``array_change_key_case``).

The methods' validation is written in terms of these so that e.g. ``MESSAGE_ID: "0"`` or ``"12abc"`` behaves as
it would on a real portal rather than as Python truthiness would suggest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_LEADING_INT = re.compile(r"^\s*([+-]?\d+)")


def empty(value: Any) -> bool:
    """PHP ``empty()``: null, false, 0, 0.0, "", "0", and empty arrays."""
    if value is None or value is False:
        return True
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == 0
    if isinstance(value, str):
        return value in ("", "0")
    if isinstance(value, Mapping | list | tuple):
        return len(value) == 0
    return False


def intval(value: Any) -> int:
    """PHP ``intval()``: leading digits of a string, truncation of a float, 1/0 for non-empty/empty arrays."""
    if value is None or value is False:
        return 0
    if value is True:
        return 1
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value == value and abs(value) != float("inf") else 0
    if isinstance(value, str):
        m = _LEADING_INT.match(value)
        return int(m.group(1)) if m else 0
    if isinstance(value, Mapping | list | tuple):
        return 1 if value else 0
    return 0


def truthy(value: Any) -> bool:
    """PHP ``(bool)`` cast, as used for ``halt``."""
    return not empty(value)


def scalar_str(value: Any) -> str | None:
    """A scalar as PHP would stringify it; None for arrays/null (where string functions would fail)."""
    if value is None or isinstance(value, Mapping | list | tuple):
        return None
    if isinstance(value, bool):
        return "1" if value else ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def upper_keys(params: Mapping[str, Any]) -> dict[str, Any]:
    """``array_change_key_case($params, CASE_UPPER)``: top level only; later duplicates win, like PHP."""
    return {str(k).upper(): v for k, v in params.items()}


def lower_keys_recursive(value: Any) -> Any:
    """``Converter(TO_LOWER | KEYS | RECURSIVE)`` as applied to ``MESSAGES`` by imconnector."""
    if isinstance(value, Mapping):
        return {str(k).lower(): lower_keys_recursive(v) for k, v in value.items()}
    if isinstance(value, list):
        return [lower_keys_recursive(v) for v in value]
    return value
