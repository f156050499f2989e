"""PHP-style query strings: how `batch` commands carry nested params (`MESSAGES[0][im][chat_id]=1`), and
how Bitrix24 posts application events (`auth[member_id]=...`, bitrix24-facts.md §7.1)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote

#: Bounds on what `decode` builds from untrusted input (an event body): keys, nesting depth.
MAX_FIELDS = 1000
MAX_DEPTH = 8


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


def decode(body: str) -> dict[str, Any]:
    """Parse a form body with PHP brackets into nested dicts (`a[b][c]=1` → `{"a": {"b": {"c": "1"}}}`).

    Keys stay strings (`[0]` is the key "0"); a later value wins; `a[]` appends under the next index.
    More than `MAX_FIELDS` fields or `MAX_DEPTH` levels raise ValueError.

    Examples:
        >>> decode("event=ONAPPINSTALL&auth%5Bmember_id%5D=m1&data%5BVERSION%5D=2")
        {'event': 'ONAPPINSTALL', 'auth': {'member_id': 'm1'}, 'data': {'VERSION': '2'}}
    """
    pairs = parse_qsl(body, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    out: dict[str, Any] = {}
    for name, value in pairs:
        head, _, rest = name.partition("[")
        path = [head] + (rest[:-1].split("][") if rest.endswith("]") else [])
        if len(path) > MAX_DEPTH:
            raise ValueError(f"field {name[:60]!r} is nested deeper than {MAX_DEPTH}")
        node = out
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if part == "" and i > 0:
                part = str(len(node))
            if last:
                node[part] = value
                break
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
    return out
