"""The retry policy, all of it: what happens to a job after an error, and why.

- `classify` names an error's `Action` (flow, refresh, transient, park, permanent), by its class
  (`workers.errors` maps each Bitrix24 code to a class: `ACTIONS`);
- `decide` turns an error, the job kind's facts, the job's history and the settings into a `Decision`:
  `RetryAfter` N seconds (flow control, or a transient failure within the budget), `Wait` for the portal's
  SMS providers, `Park` until the portal is re-authorised, `DeadLetter`, or `Applied` (the error says the
  portal already is in the state the job wanted); every decision says why;
- `whole_request` is what a lane does with an error for a whole request: flow control, token refresh,
  following a domain move, an operating-time hold; everything else goes to each job (`decide`);
- the broker priority of a retry, the backoff, the age limit.

Pure: no I/O, no clock (`now` is given), jitter from the `rng` given. The pipeline (`workers.pipeline`) and the
lanes (`workers.delivery`) gather the facts and apply the decision; the knobs are `Settings`' (`max_failures`,
`transient_window`, `backoff_base`, `backoff_max`, `job_max_age`).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Literal, Protocol

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
from workers.settings import Settings


class Action(enum.StrEnum):
    """What the pipeline does with a job after an error."""

    FLOW = "flow"  # rate or operating limit: wait and retry; not a failure
    REFRESH = "refresh"  # access token expired: refresh once for the pool, retry at once
    TRANSIENT = "transient"  # 5xx, network, timeout, garbage: capped exponential backoff with jitter
    PARK = "park"  # credentials lost: keep the job until the portal is re-authorised
    PERMANENT = "permanent"  # the portal refused the request itself: dead letter


#: The action of each error class; a subclass takes its nearest listed ancestor's, anything unlisted
#: (an unexpected exception) is transient.
_ACTIONS: dict[type[BaseException], Action] = {
    RestError: Action.PERMANENT,
    QueryLimitExceeded: Action.FLOW,
    OperationTimeLimit: Action.FLOW,
    TokenExpired: Action.REFRESH,
    AuthLost: Action.PARK,
    ServerError: Action.TRANSIENT,
    ResultFailed: Action.TRANSIENT,
    PortalMoved: Action.PARK,
    TransportError: Action.TRANSIENT,
    Deferred: Action.FLOW,
    Superseded: Action.PERMANENT,
}


def action_of(cls: type[BaseException]) -> Action:
    """The action for an error class."""
    for ancestor in cls.__mro__:
        action = _ACTIONS.get(ancestor)
        if action is not None:
            return action
    return Action.TRANSIENT


def classify(exc: BaseException) -> Action:
    """The action for any exception raised while running a job."""
    return action_of(type(exc))


def describe(exc: BaseException) -> tuple[str, str]:
    """An error's code and description, as the ledger and the dead letters record them."""
    code = getattr(exc, "code", None) or type(exc).__name__
    description = getattr(exc, "description", None) or str(exc)
    return str(code), str(description)


#: Broker priorities (kombu's Redis transport serves 0 first): fresh jobs, and the bulk lane, which
#: retries take (and the jobs of portals with a deep backlog), so other portals' fresh jobs pass them.
PRIORITY_NORMAL = 0
PRIORITY_BULK = 6
RETRY_PRIORITY = PRIORITY_BULK

#: A job parked while its portal was being re-authorised goes again after this many seconds.
RESUMED_WHILE_PARKING = 0.5

#: What a status or sender job gets while its provider is missing (an app update deletes them, §7.2).
PROVIDER_GONE = ("ERROR_MESSAGE_NOT_FOUND", "ERROR_SENDER_NOT_FOUND")

#: Retries of a job whose provider is gone but that b24q registers, before its error stands.
PROVIDER_GONE_RETRIES = 3


class Jitter(Protocol):
    """Where random delays come from: the `random` module, or a seeded `random.Random` in tests."""

    def uniform(self, a: float, b: float) -> float: ...


def backoff(failures: int, base: float, cap: float, rng: Jitter = random) -> float:
    """Capped exponential backoff with full jitter (the AWS architecture blog's recommendation)."""
    return rng.uniform(base / 2, min(cap, base * 2 ** (failures - 1)))


# -- decisions ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryAfter:
    """Run the job again in `delay` seconds: flow control (`deferred`: not a failure) or a transient failure
    (`retrying`). `error` is what the ledger records as the job's last error; `failures` the count the
    ledger's note carries when the failure budget was spent on it."""

    delay: float
    status: Literal["deferred", "retrying"]
    code: str
    error: str
    why: str
    failures: int | None = None

    @property
    def reason(self) -> Literal["flow", "transient"]:
        """What the retry is to the observers (`workers.events`): flow control or a failure."""
        return "flow" if self.status == "deferred" else "transient"


@dataclass(frozen=True)
class Wait(RetryAfter):
    """Flow control of its own: the portal's SMS providers are being registered again after an app update
    (`edges.lifecycle`); a status for them would fail with ERROR_MESSAGE_NOT_FOUND until they are back."""


@dataclass(frozen=True)
class DeadLetter:
    """End the job in the dead letters with this code and description (an operator can replay it)."""

    code: str
    description: str
    why: str = ""


@dataclass(frozen=True)
class Park:
    """Keep the job until its portal is re-authorised. `if_uninstalled` is set when the error is the first
    news of lost credentials: the portal is marked for re-authorisation first, and if it cannot be (the
    application was uninstalled meanwhile) the job ends with that dead letter instead."""

    reason: str
    why: str
    if_uninstalled: DeadLetter | None = None


@dataclass(frozen=True)
class Applied:
    """The error says the portal already is in the state the job wanted (sender.add's "already installed")."""

    why: str


Decision = RetryAfter | Park | DeadLetter | Applied

#: A job for a portal the application was uninstalled from.
UNINSTALLED = DeadLetter(
    "APP_UNINSTALLED",
    "the application was uninstalled from the portal; replay after a reinstall",
    "the application is uninstalled: nothing is sent until a reinstall",
)


class KindFacts(Protocol):
    """What the policy needs of a job kind (`tasks.jobs.JobKind`)."""

    @property
    def waits_for_providers(self) -> bool: ...
    @property
    def applied_codes(self) -> frozenset[str]: ...


@dataclass(frozen=True)
class Providers:
    """The portal's SMS providers, read just now for an error that says the job's provider is gone:
    `pending` those being registered again ("" none), `managed` whether b24q registers the job's."""

    pending: str
    managed: bool


@dataclass(frozen=True)
class History:
    """A job's past: its runs, and its transient failures (counted, this one included, only when
    `counts_as_failure` says the decision spends the budget) and seconds since the first."""

    runs: int
    failures: int | None = None
    failing_for: float = 0.0


def too_old(age: float, settings: Settings) -> DeadLetter | None:
    """Any job older than `job_max_age` ends, whatever the cause of its delay."""
    if age <= settings.job_max_age:
        return None
    why = "too old to be worth sending"
    return DeadLetter("MAX_AGE", f"job is {age:.0f}s old; job_max_age is {settings.job_max_age:.0f}s", why)


def wait_for_providers(pending: str, settings: Settings, rng: Jitter = random) -> Wait:
    """Wait while the portal's SMS providers are registered again: seconds, not a failure."""
    delay = min(2.0, settings.backoff_max) + rng.uniform(0, 1.0)
    why = f"waiting for SMS providers to be registered again: {pending}"
    return Wait(delay, "deferred", "PROVIDERS_PENDING", why, why)


def provider_gone(error: BaseException, kind: KindFacts) -> bool:
    """Does the error say the job's SMS provider is missing? Then `decide` needs the portal's `Providers`."""
    code = describe(error)[0]
    return kind.waits_for_providers and code in PROVIDER_GONE and code not in kind.applied_codes


def counts_as_failure(error: BaseException, kind: KindFacts, providers: Providers | None = None) -> bool:
    """Does `decide` spend the job's failure budget on this error? Then count the failure (the ledger) and
    give the count in `History`."""
    return _rule(error, kind, providers) in ("provider-retry", "budget")


def decide(
    error: BaseException,
    kind: KindFacts,
    history: History,
    settings: Settings,
    *,
    now: float,
    providers: Providers | None = None,
    rng: Jitter = random,
) -> Decision:
    """What happens to a job after `error` (raised by its call, or by what it got back), and why.

    `providers` is required when `provider_gone(error, kind)`, `history.failures` when
    `counts_as_failure(error, kind, providers)`; `now` (unix seconds) dates an operating-time hold's end.
    """
    code, description = describe(error)
    rule = _rule(error, kind, providers)
    if rule in ("provider-retry", "budget") and history.failures is None:
        raise ValueError(f"{code}: count the job's failure first (counts_as_failure)")
    if rule == "applied":
        return Applied(f"{code} means the portal already is in the state the job wanted")
    if rule == "wait" and providers is not None:  # (never None: `_rule` asks for them)
        return wait_for_providers(providers.pending, settings, rng)
    if rule == "provider-retry" and (history.failures or 0) <= PROVIDER_GONE_RETRIES:
        # b24q registers this provider: the update that deleted it may not have told us yet (its event comes
        # after the deletion), so a few short retries before the dead letter
        return RetryAfter(
            backoff(1, settings.backoff_base, settings.backoff_max, rng),
            "retrying",
            code,
            f"{code}: {description}",
            "the provider b24q registers is missing: the app update's event may not have arrived yet",
        )
    return _by_action(error, code, description, history, settings, now, rng)


def _rule(error: BaseException, kind: KindFacts, providers: Providers | None) -> str:
    code = describe(error)[0]
    if code in kind.applied_codes:
        return "applied"
    if provider_gone(error, kind):
        if providers is None:
            raise ValueError(f"{code}: read the portal's providers first (provider_gone)")
        if providers.pending:
            return "wait"
        if providers.managed:
            return "provider-retry"
    action = classify(error)
    if action in (Action.TRANSIENT, Action.REFRESH) and not isinstance(error, OAuthUnavailable):
        return "budget"
    return action.value


def _by_action(
    error: BaseException, code: str, description: str, history: History, settings: Settings, now: float, rng: Jitter
) -> Decision:
    action = classify(error)
    reported = f"{code}: {description}"
    if action is Action.FLOW:
        return RetryAfter(_flow_delay(error, settings, now, rng), "deferred", code, reported, "flow control")
    if action is Action.PARK:
        uninstalled = DeadLetter(
            "APP_UNINSTALLED", f"{reported}; the application was uninstalled from the portal", UNINSTALLED.why
        )
        return Park(
            reported,
            "the portal's credentials are lost: kept until it is re-authorised",
            # REAUTH_NEEDED: the portal is marked already
            if_uninstalled=uninstalled if code != "REAUTH_NEEDED" else None,
        )
    if isinstance(error, OAuthUnavailable):
        # the OAuth server being down (or another worker's refresh not finishing) is the whole portal's
        # trouble, not this job's: it spends no transient budget, or every job of the portal would be
        # dead-lettered by a few minutes of OAuth outage. The job waits with backoff until the server is
        # back, bounded by job_max_age.
        delay = backoff(min(history.runs, 10), settings.backoff_base, settings.backoff_max, rng)
        return RetryAfter(delay, "deferred", code, reported, "the OAuth server is unavailable: not a failure")
    if action in (Action.TRANSIENT, Action.REFRESH):
        return _within_budget(code, description, history, settings, rng)
    if code == "APP_UNINSTALLED":
        return DeadLetter(code, f"{description}; replay after a reinstall", UNINSTALLED.why)
    return DeadLetter(code, description, "the portal refused the request itself: retrying cannot help")


def _flow_delay(error: BaseException, settings: Settings, now: float, rng: Jitter) -> float:
    if isinstance(error, Deferred):
        delay = error.delay
    elif isinstance(error, OperationTimeLimit) and error.reset_at:
        delay = error.reset_at - now
    else:
        delay = 1.0
    return min(max(delay, 0.2), settings.backoff_max) + rng.uniform(0, 0.5)


def _within_budget(code: str, description: str, history: History, settings: Settings, rng: Jitter) -> Decision:
    failures = history.failures or 0
    # both bounds: a count alone lets a minute of a flaky portal (8 countdowns of at most ~2 min in all) end
    # jobs that the next minute would apply; a time alone would end a job that failed once, long ago, at its
    # second failure
    if failures >= settings.max_failures and history.failing_for >= settings.transient_window:
        return DeadLetter(
            code,
            f"{description} (after {failures} failures in {history.failing_for:.0f} s)",
            f"the failure budget is spent: {settings.max_failures} failures and "
            f"{settings.transient_window:.0f} s since the first",
        )
    return RetryAfter(
        backoff(failures, settings.backoff_base, settings.backoff_max, rng),
        "retrying",
        code,
        f"{code}: {description}",
        f"transient failure {failures}: backoff",
        failures=failures,
    )


# -- a whole request's error, in a lane -------------------------------------------------------------------------


class RequestStep(enum.StrEnum):
    """What a lane does with an error for a whole request (every call it carried)."""

    MOVE = "move"  # follow the portal to its new domain and repeat the request there, once
    FLOW = "flow"  # the bucket is full: set the limiter full; the calls go with the next slot
    REFRESH = "refresh"  # refresh the token once for the pool and repeat the request at once
    HOLD = "hold"  # hold the method for the portal (operating time), then each job gets `error`
    SETTLE = "settle"  # each job gets `error`, and its pipeline decides (`decide`)


@dataclass(frozen=True)
class RequestDecision:
    step: RequestStep
    error: RestError | TransportError
    why: str


#: Token refreshes one request may cost: an `invalid_token` right after a refresh is tried once more.
MAX_REFRESHES = 2


def moved_away() -> AuthLost:
    """The error of a move the endpoint rules refuse (the tokens stay home): settle with it."""
    return AuthLost("PORTAL_MOVED_AWAY", "the portal redirected to an endpoint the rules refuse")


def whole_request(error: RestError | TransportError, portal_kind: str, refreshed: int, moved: bool) -> RequestDecision:
    """What a lane does with `error` for a whole request to a portal of `portal_kind` ("oauth", "webhook"),
    repeated `refreshed` times after a token refresh and already `moved` to a new domain or not. A move the
    registry refuses settles with `moved_away()`."""
    if isinstance(error, PortalMoved) and not moved:
        return RequestDecision(RequestStep.MOVE, error, "the portal's domain changed (bitrix24-facts.md §7.5)")
    if isinstance(error, QueryLimitExceeded):
        return RequestDecision(RequestStep.FLOW, error, "the portal's bucket is full: not a failure")
    if isinstance(error, TokenExpired):
        if portal_kind == "oauth" and refreshed < MAX_REFRESHES:
            return RequestDecision(RequestStep.REFRESH, error, "the access token expired: one refresh for the pool")
        rejected = AuthLost("TOKEN_REJECTED", "the portal refused a freshly refreshed token")
        return RequestDecision(
            RequestStep.SETTLE, rejected, "refused again after a refresh, or not refreshable (a webhook)"
        )
    if isinstance(error, OperationTimeLimit):
        return RequestDecision(RequestStep.HOLD, error, "the method's operating time is spent for now")
    return RequestDecision(RequestStep.SETTLE, error, "an error for each job's own decision")
