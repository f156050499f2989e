"""PHP-style query parsing/building and PHP value semantics."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator import build_query, max_in_window, parse_query, php
from emulator.querystring import php_array, php_json


def test_flat_and_nested() -> None:
    qs = "CODE=sms&MESSAGE_ID=abc&A%5B0%5D%5Bb%5D=1&A[0][c]=2&A[1][b]=x+y"
    assert parse_query(qs) == {"CODE": "sms", "MESSAGE_ID": "abc", "A": [{"b": "1", "c": "2"}, {"b": "x y"}]}


def test_append_and_mixed_keys() -> None:
    assert parse_query("a[]=1&a[]=2&a[5]=3&a[]=4") == {"a": {"0": "1", "1": "2", "5": "3", "6": "4"}}
    assert parse_query("a[]=1&a[]=2") == {"a": ["1", "2"]}
    assert parse_query("a[x][]=1&a[x][]=2&a[y]=z") == {"a": {"x": ["1", "2"], "y": "z"}}


def test_php_quirks() -> None:
    assert parse_query("a.b=1&c d=2") == {"a_b": "1", "c_d": "2"}
    assert parse_query("x&y=") == {"x": "", "y": ""}
    assert parse_query("[a]=1&&=2") == {}
    assert parse_query("a=1&a=2") == {"a": "2"}
    assert parse_query("a[b]c=1") == {"a": {"b": "1"}}
    assert parse_query("a[b=1") == {"a_b": "1"}
    assert parse_query("0=a&1=b") == {"0": "a", "1": "b"}  # the top level stays a dict


def test_scalar_overwritten_by_array() -> None:
    assert parse_query("a=1&a[b]=2") == {"a": {"b": "2"}}


def test_batch_command_double_encoding() -> None:
    inner = build_query({"CODE": "sms", "MESSAGE_ID": "m&1", "STATUS": "sent"})
    outer = build_query({"cmd": {"k1": f"messageservice.message.status.update?{inner}"}, "halt": 0})
    parsed = parse_query(outer)
    method, _, query = parsed["cmd"]["k1"].partition("?")
    assert method == "messageservice.message.status.update"
    assert parse_query(query) == {"CODE": "sms", "MESSAGE_ID": "m&1", "STATUS": "sent"}
    assert parsed["halt"] == "0"


def test_build_query_nested() -> None:
    params = {"CONNECTOR": "c", "LINE": 7, "MESSAGES": [{"im": {"chat_id": 1, "message_id": 2}}], "F": True}
    assert parse_query(build_query(params)) == {
        "CONNECTOR": "c",
        "LINE": "7",
        "MESSAGES": [{"im": {"chat_id": "1", "message_id": "2"}}],
        "F": "1",
    }


def test_php_json_rules() -> None:
    assert php_array({}) == []
    assert php_array({"0": 1, "1": 2}) == [1, 2]
    assert php_array({"1": 1, "0": 2}) == {"1": 1, "0": 2}
    assert php_array({"0": 1, "2": 2}) == {"0": 1, "2": 2}
    assert php_json({"a": {"0": {"0": "x"}}}) == {"a": [["x"]]}


_key = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,5}", fullmatch=True)
_value: st.SearchStrategy[Any] = st.recursive(
    st.text(max_size=8),
    lambda inner: st.dictionaries(_key, inner, min_size=1, max_size=4) | st.lists(inner, min_size=1, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_key, _value, max_size=5))
def test_build_then_parse_round_trips(params: dict[str, Any]) -> None:
    assert parse_query(build_query(params)) == params


@pytest.mark.parametrize(
    ("value", "is_empty", "as_int"),
    [
        (None, True, 0),
        ("", True, 0),
        ("0", True, 0),
        (0, True, 0),
        ([], True, 0),
        ({}, True, 0),
        ("12abc", False, 12),
        (" 7", False, 7),
        ("abc", False, 0),
        (3.9, False, 3),
        (True, False, 1),
        ("-5", False, -5),
        ([1], False, 1),
        ("0.0", False, 0),
    ],
)
def test_php_empty_and_intval(value: Any, is_empty: bool, as_int: int) -> None:
    assert php.empty(value) is is_empty
    assert php.intval(value) == as_int


def test_max_in_window() -> None:
    assert max_in_window([], 1.0) == 0
    assert max_in_window([0.0, 0.1, 0.2, 1.0, 1.05, 1.1, 1.15], 1.0) == 5
    assert max_in_window([0.0, 1.0, 2.0], 1.0) == 1
