"""The retry policy as a table: one row per error class, code and history, and what becomes of the job.

Jitter is made exact by a `Jitter` that always answers the top of its range (so each delay is the largest the
policy allows); the real `random` is checked against the bounds.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import pytest

from workers.errors import (
    AuthLost,
    Deferred,
    OAuthUnavailable,
    OperationTimeLimit,
    PortalMoved,
    QueryLimitExceeded,
    RestError,
    ResultFailed,
    ServerError,
    Superseded,
    TokenExpired,
    TransportError,
)
from workers.retries import (
    PRIORITY_BULK,
    RETRY_PRIORITY,
    Action,
    Applied,
    DeadLetter,
    Decision,
    History,
    Park,
    Providers,
    RequestStep,
    RetryAfter,
    Wait,
    backoff,
    classify,
    counts_as_failure,
    decide,
    moved_away,
    provider_gone,
    too_old,
    wait_for_providers,
    whole_request,
)
from workers.settings import Settings

#: The defaults that matter here: backoff 1 s doubling up to 60 s; 8 failures and 600 s; a day's age.
SETTINGS = Settings(backoff_base=1.0, backoff_max=60.0, max_failures=8, transient_window=600.0, job_max_age=86400.0)
NOW = 1_800_000_000.0


class Top:
    """Jitter at the top of its range."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass(frozen=True)
class Kind:
    waits_for_providers: bool = False
    applied_codes: frozenset[str] = field(default_factory=frozenset)


STATUS = Kind(waits_for_providers=True)  # status-update, sender-update
SENDER_ADD = Kind(applied_codes=frozenset({"ERROR_SENDER_ALREADY_INSTALLED"}))
UNREAD = Kind()

NOT_FOUND = RestError("ERROR_MESSAGE_NOT_FOUND", "Message not found!", 400)


def shape(decision: Decision) -> tuple[object, ...]:
    """What a decision does, without its prose."""
    match decision:
        case Wait():
            return ("wait", decision.code, decision.delay, decision.error)
        case RetryAfter():
            return ("retry", decision.status, decision.reason, decision.code, decision.delay, decision.failures)
        case Park():
            letter = decision.if_uninstalled
            return ("park", decision.reason, letter and (letter.code, letter.description))
        case DeadLetter():
            return ("dead", decision.code, decision.description)
        case Applied():
            return ("applied",)


#: error, kind, history, providers → counted as a failure?, what becomes of the job
ROWS: list[tuple[str, BaseException, Kind, History, Providers | None, bool, tuple[object, ...]]] = [
    # flow control: never a failure; the delay is the limit's own, between 0.2 s and backoff_max, + 0.5 s jitter
    ("503 bucket full", QueryLimitExceeded("QUERY_LIMIT_EXCEEDED", "Too many", 503), UNREAD, History(1), None, False,
     ("retry", "deferred", "flow", "QUERY_LIMIT_EXCEEDED", 1.5, None)),
    ("operating time, until its reset", OperationTimeLimit("OPERATION_TIME_LIMIT", "", 429, reset_at=NOW + 10),
     UNREAD, History(1), None, False, ("retry", "deferred", "flow", "OPERATION_TIME_LIMIT", 10.5, None)),
    ("operating time, no reset known", OperationTimeLimit("OPERATION_TIME_LIMIT", "", 429), UNREAD, History(1),
     None, False, ("retry", "deferred", "flow", "OPERATION_TIME_LIMIT", 1.5, None)),
    ("no slot soon enough", Deferred(3.0, "slot"), UNREAD, History(1), None, False,
     ("retry", "deferred", "flow", "Deferred", 3.5, None)),
    ("no slot, at least 0.2 s", Deferred(0.01, "slot"), UNREAD, History(1), None, False,
     ("retry", "deferred", "flow", "Deferred", 0.7, None)),
    ("no slot, at most backoff_max", Deferred(900.0, "slot"), UNREAD, History(1), None, False,
     ("retry", "deferred", "flow", "Deferred", 60.5, None)),
    # the OAuth server down: backoff by runs (at most 10 doublings), no budget spent
    ("OAuth down, 3rd run", OAuthUnavailable("OAUTH_DOWN", "503"), UNREAD, History(3), None, False,
     ("retry", "deferred", "flow", "OAUTH_DOWN", 4.0, None)),
    ("OAuth down, 40th run", OAuthUnavailable("OAUTH_DOWN", "503"), UNREAD, History(40), None, False,
     ("retry", "deferred", "flow", "OAUTH_DOWN", 60.0, None)),
    # transient: backoff by failures, and the budget: max_failures *and* transient_window since the first
    ("500, first failure", ServerError("INTERNAL_SERVER_ERROR", "down", 500), UNREAD, History(1, 1, 0.0), None,
     True, ("retry", "retrying", "transient", "INTERNAL_SERVER_ERROR", 1.0, 1)),
    ("500, 8 failures within the window", ServerError("INTERNAL_SERVER_ERROR", "down", 500), UNREAD,
     History(9, 8, 599.0), None, True, ("retry", "retrying", "transient", "INTERNAL_SERVER_ERROR", 60.0, 8)),
    ("500, 3 failures, the first long ago", ServerError("INTERNAL_SERVER_ERROR", "down", 500), UNREAD,
     History(3, 3, 3600.0), None, True, ("retry", "retrying", "transient", "INTERNAL_SERVER_ERROR", 4.0, 3)),
    ("500, 8 failures and the window passed", ServerError("INTERNAL_SERVER_ERROR", "down", 500), UNREAD,
     History(12, 8, 600.0), None, True, ("dead", "INTERNAL_SERVER_ERROR", "down (after 8 failures in 600 s)")),
    ("SUCCESS: false", ResultFailed("SUCCESS_FALSE", "no"), UNREAD, History(1, 2, 5.0), None, True,
     ("retry", "retrying", "transient", "SUCCESS_FALSE", 2.0, 2)),
    ("timeout", TransportError("TIMEOUT", "read timed out"), UNREAD, History(1, 1, 0.0), None, True,
     ("retry", "retrying", "transient", "TIMEOUT", 1.0, 1)),
    ("an unexpected exception", ValueError("odd"), UNREAD, History(1, 1, 0.0), None, True,
     ("retry", "retrying", "transient", "ValueError", 1.0, 1)),
    ("expired token the lane could not heal", TokenExpired("expired_token", "expired", 401), UNREAD,
     History(1, 2, 1.0), None, True, ("retry", "retrying", "transient", "expired_token", 2.0, 2)),
    # credentials lost: park (the portal marked first, unless the error says it is marked already)
    ("refresh refused", AuthLost("invalid_grant", "used"), UNREAD, History(1), None, False,
     ("park", "invalid_grant: used",
      ("APP_UNINSTALLED", "invalid_grant: used; the application was uninstalled from the portal"))),
    ("portal marked already", AuthLost("REAUTH_NEEDED", "portal acme needs re-authorisation"), UNREAD, History(1),
     None, False, ("park", "REAUTH_NEEDED: portal acme needs re-authorisation", None)),
    ("moved twice", PortalMoved("https://b.example/rest/", 301, "batch"), UNREAD, History(1), None, False,
     ("park", "PORTAL_MOVED: batch: the portal answered with a redirect",
      ("APP_UNINSTALLED",
       "PORTAL_MOVED: batch: the portal answered with a redirect; the application was uninstalled from the portal"))),
    # permanent: the dead letter, with its reason
    ("no permission", RestError("ACCESS_DENIED", "denied", 403), UNREAD, History(1), None, False,
     ("dead", "ACCESS_DENIED", "denied")),
    ("uninstalled", RestError("APP_UNINSTALLED", "gone", 401), UNREAD, History(1), None, False,
     ("dead", "APP_UNINSTALLED", "gone; replay after a reinstall")),
    ("a newer job", Superseded("j9"), UNREAD, History(1), None, False,
     ("dead", "Superseded", "superseded by job j9")),
    ("message unknown, a kind that never waits", NOT_FOUND, UNREAD, History(1), None, False,
     ("dead", "ERROR_MESSAGE_NOT_FOUND", "Message not found!")),
    # the state the job wanted
    ("sender already there", RestError("ERROR_SENDER_ALREADY_INSTALLED", "", 400), SENDER_ADD, History(1), None,
     False, ("applied",)),
    # a status whose SMS provider is gone: wait while it is added again, a few retries if b24q registers it
    ("provider being added again", NOT_FOUND, STATUS, History(1), Providers("smsgw", managed=True), False,
     ("wait", "PROVIDERS_PENDING", 3.0, "waiting for SMS providers to be registered again: smsgw")),
    ("provider b24q registers, 1st", NOT_FOUND, STATUS, History(1, 1, 0.0), Providers("", managed=True), True,
     ("retry", "retrying", "transient", "ERROR_MESSAGE_NOT_FOUND", 1.0, None)),
    ("provider b24q registers, 3rd", NOT_FOUND, STATUS, History(3, 3, 2.0), Providers("", managed=True), True,
     ("retry", "retrying", "transient", "ERROR_MESSAGE_NOT_FOUND", 1.0, None)),
    ("provider b24q registers, 4th", NOT_FOUND, STATUS, History(4, 4, 3.0), Providers("", managed=True), True,
     ("dead", "ERROR_MESSAGE_NOT_FOUND", "Message not found!")),
    ("provider someone else registers", NOT_FOUND, STATUS, History(1), Providers("", managed=False), False,
     ("dead", "ERROR_MESSAGE_NOT_FOUND", "Message not found!")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("error", "kind", "history", "providers", "counted", "expected"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_each_error_and_history_has_its_decision(
    error: BaseException,
    kind: Kind,
    history: History,
    providers: Providers | None,
    counted: bool,
    expected: tuple[object, ...],
) -> None:
    assert provider_gone(error, kind) is (providers is not None)
    assert counts_as_failure(error, kind, providers) is counted
    decision = decide(error, kind, history, SETTINGS, now=NOW, providers=providers, rng=Top())
    assert shape(decision) == expected
    assert decision.why  # every decision says why


def test_a_decision_that_spends_the_budget_needs_the_count() -> None:
    with pytest.raises(ValueError, match="count the job's failure first"):
        decide(ServerError("INTERNAL_SERVER_ERROR", "down", 500), UNREAD, History(1), SETTINGS, now=NOW)
    with pytest.raises(ValueError, match="read the portal's providers first"):
        decide(NOT_FOUND, STATUS, History(1, 1, 0.0), SETTINGS, now=NOW)


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (QueryLimitExceeded("QUERY_LIMIT_EXCEEDED"), Action.FLOW),
        (OperationTimeLimit("OPERATION_TIME_LIMIT"), Action.FLOW),
        (Deferred(1.0, "slot"), Action.FLOW),
        (TokenExpired("expired_token"), Action.REFRESH),
        (AuthLost("invalid_grant"), Action.PARK),
        (PortalMoved("https://b.example/", 301, "batch"), Action.PARK),
        (ServerError("INTERNAL_SERVER_ERROR"), Action.TRANSIENT),
        (ResultFailed("SUCCESS_FALSE"), Action.TRANSIENT),
        (TransportError("TIMEOUT", ""), Action.TRANSIENT),
        (OAuthUnavailable("OAUTH_DOWN", ""), Action.TRANSIENT),
        (RestError("ACCESS_DENIED"), Action.PERMANENT),
        (Superseded("j9"), Action.PERMANENT),
        (RuntimeError("odd"), Action.TRANSIENT),
    ],
)
def test_each_error_class_has_its_action(error: BaseException, action: Action) -> None:
    assert classify(error) is action


def test_backoff_doubles_with_full_jitter_up_to_its_cap() -> None:
    rng = random.Random(7)
    for failures, top in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (30, 60.0)]:
        samples = [backoff(failures, 1.0, 60.0, rng) for _ in range(200)]
        assert all(0.5 <= s <= top for s in samples)
        assert max(samples) > 0.5 + (top - 0.5) * 0.9  # the whole range is used
    assert min(backoff(1, 1.0, 60.0) for _ in range(50)) >= 0.5  # the module's own random


def test_a_wait_for_providers_is_seconds() -> None:
    waits = [wait_for_providers("a b", SETTINGS) for _ in range(50)]
    assert all(2.0 <= w.delay <= 3.0 and w.status == "deferred" and w.reason == "flow" for w in waits)
    assert wait_for_providers("a", Settings(backoff_max=0.5), Top()).delay == 1.5  # backoff_max caps it


def test_a_job_past_its_max_age_ends() -> None:
    assert too_old(86400.0, SETTINGS) is None
    assert too_old(86401.0, SETTINGS) == DeadLetter(
        "MAX_AGE", "job is 86401s old; job_max_age is 86400s", "too old to be worth sending"
    )


def test_retries_take_the_bulk_lane() -> None:
    assert RETRY_PRIORITY == PRIORITY_BULK


#: a whole request's error in a lane: error, portal kind, refreshes so far, moved already → step, error settled with
REQUEST_ROWS: list[tuple[str, Exception, str, int, bool, RequestStep, str]] = [
    ("a move", PortalMoved("https://b.example/rest/", 301, "batch"), "oauth", 0, False, RequestStep.MOVE,
     "PORTAL_MOVED"),
    ("a move after a move", PortalMoved("https://c.example/rest/", 301, "batch"), "oauth", 0, True,
     RequestStep.SETTLE, "PORTAL_MOVED"),
    ("a move the rules refuse", moved_away(), "oauth", 0, True, RequestStep.SETTLE, "PORTAL_MOVED_AWAY"),
    ("bucket full", QueryLimitExceeded("QUERY_LIMIT_EXCEEDED", "", 503), "oauth", 0, False, RequestStep.FLOW,
     "QUERY_LIMIT_EXCEEDED"),
    ("bucket full, webhook", QueryLimitExceeded("QUERY_LIMIT_EXCEEDED", "", 503), "webhook", 1, True,
     RequestStep.FLOW, "QUERY_LIMIT_EXCEEDED"),
    ("expired", TokenExpired("expired_token", "", 401), "oauth", 0, False, RequestStep.REFRESH, "expired_token"),
    ("refused after one refresh", TokenExpired("invalid_token", "", 401), "oauth", 1, False, RequestStep.REFRESH,
     "invalid_token"),
    ("refused after two refreshes", TokenExpired("invalid_token", "", 401), "oauth", 2, False, RequestStep.SETTLE,
     "TOKEN_REJECTED"),
    ("a webhook's token refused", TokenExpired("expired_token", "", 401), "webhook", 0, False, RequestStep.SETTLE,
     "TOKEN_REJECTED"),
    ("operating time spent", OperationTimeLimit("OPERATION_TIME_LIMIT", "", 429), "oauth", 0, False,
     RequestStep.HOLD, "OPERATION_TIME_LIMIT"),
    ("500", ServerError("INTERNAL_SERVER_ERROR", "", 500), "oauth", 0, False, RequestStep.SETTLE,
     "INTERNAL_SERVER_ERROR"),
    ("timeout", TransportError("TIMEOUT", ""), "oauth", 0, False, RequestStep.SETTLE, "TIMEOUT"),
    ("credentials lost", AuthLost("invalid_grant", ""), "oauth", 0, False, RequestStep.SETTLE, "invalid_grant"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("error", "portal_kind", "refreshed", "moved", "step", "code"),
    [row[1:] for row in REQUEST_ROWS],
    ids=[row[0] for row in REQUEST_ROWS],
)
def test_a_whole_request_error_has_its_step(
    error: RestError | TransportError, portal_kind: str, refreshed: int, moved: bool, step: RequestStep, code: str
) -> None:
    decision = whole_request(error, portal_kind, refreshed, moved)
    assert (decision.step, decision.error.code) == (step, code)
    assert decision.why
    if step is not RequestStep.SETTLE or code == error.code:
        assert decision.error is error
    else:
        assert classify(decision.error) is Action.PARK  # TOKEN_REJECTED: the jobs park


def test_the_policy_reads_no_clock() -> None:
    # `now` is given: an operating-time hold ending in 10 s of *that* clock, whatever time it is
    reset_at = time.time() + 3600
    hold = OperationTimeLimit("OPERATION_TIME_LIMIT", "", 429, reset_at=reset_at)
    decision = decide(hold, UNREAD, History(1), SETTINGS, now=reset_at - 10, rng=Top())
    assert isinstance(decision, RetryAfter) and decision.delay == 10.5
