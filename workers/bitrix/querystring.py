"""PHP-style query strings: how `batch` commands carry nested params (`MESSAGES[0][im][chat_id]=1`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote


def _pairs(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _pairs(f"{prefix}[{key}]" if prefix else str(key), item)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _pairs(f"{prefix}[{index}]", item)
    elif isinstance(value, bool):
        yield prefix, "1" if value else "0"
    elif value is None:
        yield prefix, ""
    else:
        yield prefix, str(value)


def encode(params: Mapping[str, Any]) -> str:
    """Encode params the way PHP's `http_build_query` does (RFC 3986 escaping).

    Examples:
        >>> encode({"A": 1, "M": [{"id": ["x y"]}]})
        'A=1&M%5B0%5D%5Bid%5D%5B0%5D=x%20y'
    """
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in _pairs("", params))
