"""Hooks of the `schemathesis run` command that tests/security/test_contract.py runs (`SCHEMATHESIS_HOOKS`): what
the document cannot say, set as the property test sets it."""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis

from tests.security.test_contract import as_of_now


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Jobs posted name a registered portal and no `at` ahead of now; each request its own Idempotency-Key
    (the same key with another body is 422 by design, not a contract gap)."""
    if case.method == "POST" and case.path == "/v1/jobs" and isinstance(case.body, dict | list):
        for job in case.body if isinstance(case.body, list) else [case.body]:
            as_of_now(job)
    if case.headers and "Idempotency-Key" in case.headers and isinstance(case.headers["Idempotency-Key"], str):
        case.headers["Idempotency-Key"] = case.headers["Idempotency-Key"][:200] + uuid.uuid4().hex
