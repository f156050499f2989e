"""PHP array semantics: ``parse_str``-style nested query parsing, ``http_build_query``, and PHP's JSON rule.

Bitrix24 is PHP, so a query or form body like ``MESSAGES[0][im][chat_id]=1&cmd[a]=x`` arrives as nested PHP
arrays, and batch commands are ``"method?urlencoded"`` strings parsed the same way.  PHP arrays are ordered
maps; ``json_encode`` turns one into a JSON *list* only when its keys are exactly ``0..n-1`` in order, and into
an object otherwise.  That is why an empty batch collection comes back as ``[]`` (facts §3), and why a batch
sent with a list of commands may come back with list-shaped results.  :func:`php_json` applies that rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote_plus, unquote_plus

_INT_KEY = re.compile(r"^(0|-?[1-9][0-9]*)$")


def _is_int_key(key: str) -> bool:
    return bool(_INT_KEY.match(key))


def _split_key(raw: str) -> list[str | None] | None:
    """Split ``a[b][]`` into ``["a", "b", None]`` (``None`` = append).  ``None`` if the pair must be ignored.

    Like PHP: an unmatched ``[`` makes the whole name literal (with ``[`` turned into ``_``), text after the last
    ``]`` that does not open a new segment is dropped, and ``.``/space in the base name become ``_``.
    """
    bracket = raw.find("[")
    if bracket == -1 or "]" not in raw[bracket:]:
        base = raw
        segments: list[str | None] = []
    else:
        base = raw[:bracket]
        segments = []
        rest = raw[bracket:]
        while rest.startswith("["):
            close = rest.find("]")
            if close == -1:
                break
            inner = rest[1:close]
            segments.append(inner if inner != "" else None)
            rest = rest[close + 1 :]
    if base == "":
        return None
    base = base.replace(".", "_").replace(" ", "_").replace("[", "_")
    return [base, *segments]


def _next_index(container: dict[str, Any]) -> str:
    ints = [int(k) for k in container if _is_int_key(k)]
    return str(max(ints) + 1 if ints else 0)


def parse_query(qs: str) -> dict[str, Any]:
    """Parse a query string / form body the way PHP's ``parse_str`` does, then apply :func:`php_json`.

    Later duplicates win; ``a[]`` appends; values are strings.  Nested values use lists wherever PHP would
    JSON-encode a list, so they look like what a client would have sent as JSON; the top level stays a dict.
    """
    root: dict[str, Any] = {}
    if not qs:
        return root
    for pair in qs.split("&"):
        if not pair:
            continue
        name, sep, value = pair.partition("=")
        path = _split_key(unquote_plus(name))
        if path is None:
            continue
        val = unquote_plus(value) if sep else ""
        node = root
        for i, seg in enumerate(path):
            key = _next_index(node) if seg is None else seg
            if i == len(path) - 1:
                node[key] = val
                break
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
    return {k: php_json(v) for k, v in root.items()}


def php_json(value: Any) -> Any:
    """Recursively turn dicts keyed ``"0".."n-1"`` (in order) into lists, as PHP's ``json_encode`` would.

    An empty mapping stays ``{}``; use :func:`php_array` where PHP would send ``[]``.
    """
    if isinstance(value, Mapping):
        converted = {str(k): php_json(v) for k, v in value.items()}
        if converted and all(k == str(i) for i, k in enumerate(converted)):
            return list(converted.values())
        return converted
    if isinstance(value, list):
        return [php_json(v) for v in value]
    return value


def php_array(value: Mapping[str, Any]) -> Any:
    """A PHP array as ``json_encode`` renders it: ``[]`` when empty, a list when keyed 0..n-1, else an object."""
    if not value:
        return []
    return php_json(value)


def build_query(params: Mapping[str, Any], *, encode_brackets: bool = False) -> str:
    """``http_build_query``: nested mappings/lists become ``a[b][0]=v``; ``None`` is skipped, bools are 1/0.

    Brackets stay literal (readable, and what most clients send) unless ``encode_brackets``: PHP's own
    ``http_build_query`` sends ``a%5Bb%5D=v``.  Both parse to the same array.
    """
    parts: list[str] = []
    safe = "" if encode_brackets else "[]"

    def walk(prefix: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}[{k}]", v)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            if isinstance(value, bool):
                value = int(value)
            parts.append(f"{quote_plus(prefix, safe=safe)}={quote_plus(str(value))}")

    for key, val in params.items():
        walk(str(key), val)
    return "&".join(parts)
