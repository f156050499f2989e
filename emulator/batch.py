"""``batch``: up to 50 calls in one HTTP request (facts §3; ``CRestProvider::methodsBatch``).

* ``cmd`` is an object or array of ``key → "method?urlencoded params"``; ``halt`` (0/1) stops at the first error.
* Commands past the 50th each get ``ERROR_BATCH_LENGTH_EXCEEDED`` (with ``halt`` only the first of them, since
  execution stops there).  A nested ``batch`` gets ``ERROR_BATCH_METHOD_NOT_ALLOWED``.
* The caller's auth and app context carry into every sub-call; each sub-call is rate-free (the batch counted once)
  but is checked and counted against its own method's operating limit, and gets its own ``result_time[key]``.
* Sub-call errors go to ``result_error[key]`` (code, description and extra keys) and the HTTP status stays 200.
* Collections are PHP arrays: empty ones are ``[]``, ones keyed 0..n-1 are lists (e.g. ``cmd`` sent as a list).
* Later commands may use ``$result[key][field]`` / ``$error[key]`` references to earlier results
  (``CRestUtil::ParseBatchQuery``); a reference that resolves to nothing is left as written.
* ``result_time`` has entries for sub-calls that succeeded; a failed sub-call has only its ``result_error``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from . import errors, php
from .auth import CallContext
from .querystring import parse_query, php_array

BATCH_MAX_LENGTH = 50

SubCall = Callable[[CallContext, str, dict[str, Any]], tuple[Any, dict[str, Any] | None]]
ErrorHook = Callable[[errors.RestError], None]

_REF = re.compile(r"\$(result|error)\[([^\]]+)\]((?:\[[^\]]*\])*)")
_SEG = re.compile(r"\[([^\]]*)\]")


def normalize_method(name: str) -> str:
    """Lower-case and drop a ``.json``/``.xml`` transport suffix, as ``rest.server`` does."""
    method = name.strip().strip("/").lower()
    for suffix in (".json", ".xml"):
        if method.endswith(suffix):
            return method[: -len(suffix)]
    return method


def _lookup(root: Mapping[str, Any], key: str, path: str) -> tuple[bool, Any]:
    if key not in root:
        return False, None
    value: Any = root[key]
    for seg in _SEG.findall(path):
        if isinstance(value, Mapping) and seg in value:
            value = value[seg]
        elif isinstance(value, list) and seg.isdigit() and int(seg) < len(value):
            value = value[int(seg)]
        else:
            return False, None
    return True, value


def _substitute(value: Any, results: Mapping[str, Any], errs: Mapping[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, results, errs) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, results, errs) for v in value]
    if not isinstance(value, str) or "$" not in value:
        return value

    def resolve(m: re.Match[str]) -> tuple[bool, Any]:
        root = results if m.group(1) == "result" else errs
        return _lookup(root, m.group(2), m.group(3))

    whole = _REF.fullmatch(value)
    if whole:
        found, resolved = resolve(whole)
        return resolved if found else value

    def repl(m: re.Match[str]) -> str:
        found, resolved = resolve(m)
        return str(resolved) if found and not isinstance(resolved, Mapping | list) else m.group(0)

    return _REF.sub(repl, value)


def parse_command(command: Any, results: Mapping[str, Any], errs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``"method?query"`` → (normalized method, params with references resolved)."""
    if not isinstance(command, str) or not command.strip():
        raise errors.method_not_found()
    path, _, query = command.partition("?")
    params = parse_query(query)
    for name in ("auth", "access_token"):  # the outer call's auth replaces any in the command
        params.pop(name, None)
    return normalize_method(path), _substitute(params, results, errs)


def _commands(cmd: Any) -> list[tuple[str, Any]]:
    if isinstance(cmd, Mapping):
        return [(str(k), v) for k, v in cmd.items()]
    if isinstance(cmd, list):
        return [(str(i), v) for i, v in enumerate(cmd)]
    return []


def run_batch(ctx: CallContext, params: Mapping[str, Any], call: SubCall, on_error: ErrorHook) -> dict[str, Any]:
    """Execute the commands and build the ``result`` object of the batch response."""
    p = php.upper_keys(params)
    halt = php.truthy(p.get("HALT"))
    commands = _commands(p.get("CMD"))
    results: dict[str, Any] = {}
    errs: dict[str, Any] = {}
    times: dict[str, Any] = {}
    for n, (key, command) in enumerate(commands):
        failure: errors.RestError | None = None
        if n >= BATCH_MAX_LENGTH:
            failure = errors.batch_length_exceeded()
        else:
            try:
                method, sub_params = parse_command(command, results, errs)
                if method == "batch":
                    raise errors.batch_method_not_allowed()
                result, timing = call(ctx, method, sub_params)
                results[key] = result
                if timing is not None:
                    times[key] = timing
            except errors.RestError as exc:
                failure = exc
        if failure is not None:
            errs[key] = failure.body()
            on_error(failure)
            if halt:
                break
    with ctx.portal.lock:
        ctx.portal.log_batch(len(commands))
    return {
        "result": php_array(results),
        "result_error": php_array(errs),
        "result_total": [],
        "result_next": [],
        "result_time": php_array(times),
    }
