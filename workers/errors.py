"""Every error b24q raises, as one small hierarchy, and the class of each Bitrix24 error code.

Catch at the level you care about: `RestError` for anything a portal said, `TransportError` for
anything the network did, `JobRefused` for input refused at enqueue time. `ACTIONS` maps each documented
code to its class and what follows (also printed in the README); what a job does after an error, the
class's action included, is the retry policy's (`workers.retries`).
"""

from __future__ import annotations

from typing import Any


class B24QError(Exception):
    """Base of every b24q error."""


class ConfigError(B24QError):
    """A setting or a portal record is unusable."""


class EndpointRefused(ConfigError):
    """A portal endpoint b24q will not send tokens to (scheme, port, host or address): why, in words."""


class JobRefused(B24QError, ValueError):
    """Input refused at enqueue time; `errors` lists (field, message) pairs."""

    def __init__(self, kind: str, errors: list[tuple[str, str]]) -> None:
        self.kind = kind
        self.errors = errors
        detail = "; ".join(f"{field}: {msg}" for field, msg in errors)
        super().__init__(f"{kind} job refused: {detail}" if kind != "job" else f"job refused: {detail}")


class JobsRefused(JobRefused):
    """A bulk enqueue refused whole (nothing enqueued): `refusals` holds (index, refusal) for every bad job,
    and `errors` names their fields as `[index].field`."""

    def __init__(self, refusals: list[tuple[int, JobRefused]]) -> None:
        self.refusals = refusals
        kinds = {refusal.kind for _, refusal in refusals}
        super().__init__(
            kinds.pop() if len(kinds) == 1 else "job",
            [(f"[{index}].{field}", msg) for index, refusal in refusals for field, msg in refusal.errors],
        )


class UnknownPortal(JobRefused):
    """The job names a portal that is not in the registry."""

    def __init__(self, portal: str, kind: str = "job") -> None:
        super().__init__(
            kind, [("portal", f"unknown portal {portal!r}; install the app on it, or add it with `b24q portal add`")]
        )
        self.portal = portal


class PortalUninstalled(JobRefused):
    """The job names a portal the application was uninstalled from (until a reinstall)."""

    def __init__(self, portal: str, kind: str = "job") -> None:
        super().__init__(kind, [("portal", f"the application is uninstalled from portal {portal!r}")])
        self.portal = portal


class RestError(B24QError):
    """An error the portal (or the OAuth server) answered with."""

    def __init__(self, code: str, description: str = "", status: int | None = None, **extra: Any) -> None:
        self.code = code
        self.description = description
        self.status = status
        self.extra = extra
        super().__init__(f"{code}: {description}" + (f" (HTTP {status})" if status else ""))


class QueryLimitExceeded(RestError):
    """503 QUERY_LIMIT_EXCEEDED: the portal's leaky bucket overflowed."""


class OperationTimeLimit(RestError):
    """429 OPERATION_TIME_LIMIT: this method's execution-time budget is spent until `reset_at`."""

    def __init__(self, code: str, description: str = "", status: int | None = None, **extra: Any) -> None:
        super().__init__(code, description, status, **extra)
        self.reset_at: float | None = extra.get("reset_at")


class TokenExpired(RestError):
    """401 expired_token (or invalid_token): refresh the pair once and repeat the call."""


class AuthLost(RestError):
    """The portal's credentials cannot be used or renewed: re-authorisation is needed."""


class ServerError(RestError):
    """5xx from the portal that may pass (INTERNAL_SERVER_ERROR, ERROR_UNEXPECTED_ANSWER, ...)."""


class ResultFailed(RestError):
    """HTTP 200 whose result says the call did not succeed (imconnector's SUCCESS: false)."""


class PortalMoved(RestError):
    """A 3xx answer: the portal's domain changed (bitrix24-facts.md §7.5). `location` is where the
    request should go now; the lane repeats it there once, as a POST, if the new host is allowed."""

    def __init__(self, location: str, status: int, method: str) -> None:
        super().__init__("PORTAL_MOVED", f"{method}: the portal answered with a redirect", status)
        self.location = location
        self.method = method


class TransportError(B24QError):
    """The request did not produce a parseable answer: network error, timeout, garbage body."""

    def __init__(self, code: str, description: str) -> None:
        self.code = code
        self.description = description
        super().__init__(f"{code}: {description}")


class OAuthUnavailable(TransportError):
    """The OAuth server could not be reached, or another worker's refresh did not finish in time."""


class Deferred(B24QError):
    """Flow control: the call could not go out soon enough; retry the job in `delay` seconds."""

    def __init__(self, delay: float, why: str) -> None:
        self.delay = delay
        self.why = why
        super().__init__(f"deferred {delay:.1f}s: {why}")


class Superseded(B24QError):
    """Not sent: a newer job for the same portal state was sent, or is recorded and will be
    (`workers.delivery.ordering`). A terminal outcome, not a failure."""

    def __init__(self, by: str) -> None:
        self.by = by
        super().__init__(f"superseded by job {by}")


class JobDeadLettered(B24QError):
    """Raised by a job that went to the dead letters (so Flower shows it failed, with its reason)."""

    def __init__(self, code: str, description: str) -> None:
        self.code = code
        self.description = description
        super().__init__(f"dead letter: {code}: {description}")


#: Every documented Bitrix24 error code and what the pipeline does with it (bitrix24-facts.md §1-§4).
ACTIONS: dict[str, tuple[type[RestError], str]] = {
    # flow control: never counted against the job's failure budget
    "QUERY_LIMIT_EXCEEDED": (
        QueryLimitExceeded,
        "portal bucket full: limiter set to full, retried when it allows",
    ),
    "OPERATION_TIME_LIMIT": (OperationTimeLimit, "method held for this portal until operating_reset_at"),
    # token
    "expired_token": (TokenExpired, "one refresh for the pool, then the call is repeated at once"),
    "invalid_token": (
        TokenExpired,
        "refreshed like expired_token (twice at most); parked (TOKEN_REJECTED) if refused again",
    ),
    # credentials lost: parked until `b24q portal auth` or `store_tokens()`
    "invalid_grant": (AuthLost, "refresh token used or expired: re-authorisation needed"),
    "invalid_client": (AuthLost, "client_id/secret wrong or app not installed"),
    "wrong_client": (AuthLost, "client_id wrong"),
    "NOT_INSTALLED": (AuthLost, "application not installed on the portal"),
    "PAYMENT_REQUIRED": (AuthLost, "the application's paid period has ended"),
    "NO_AUTH_FOUND": (AuthLost, "wrong authorization data (token or webhook code)"),
    "APPLICATION_NOT_FOUND": (AuthLost, "application not found"),
    "authorization_error": (AuthLost, "unable to authorize user"),
    "user_access_error": (AuthLost, "user has no access to the application"),
    "ERROR_OAUTH": (AuthLost, "OAuth error"),
    "METHOD_CONFIRM_WAITING": (AuthLost, "an administrator must confirm the method"),
    "APP_UNINSTALLED": (RestError, "the application was uninstalled from the portal: dead letter"),
    "PORTAL_MOVED_AWAY": (
        AuthLost,
        "a redirect to an endpoint the rules refuse (host outside B24Q_PORTAL_HOSTS, not https on 443, a "
        "non-public address): parked, tokens not sent",
    ),
    # transient server trouble: capped exponential backoff with jitter
    "INTERNAL_SERVER_ERROR": (ServerError, "portal error, retried with backoff"),
    "ERROR_UNEXPECTED_ANSWER": (ServerError, "portal error, retried with backoff"),
    "SUCCESS_FALSE": (ResultFailed, "imconnector answered SUCCESS: false, retried with backoff"),
    # the limiter cannot help and retrying cannot either: dead letter
    "OVERLOAD_LIMIT": (RestError, "REST blocked manually by Bitrix24 support: dead letter, replay later"),
    "PORTAL_DELETED": (RestError, "portal deleted"),
    "ACCESS_DENIED": (RestError, "no permission, no app context, or REST not on this plan"),
    "WRONG_AUTH_TYPE": (RestError, "method needs application (OAuth) context"),
    "INVALID_CREDENTIALS": (RestError, "the user lacks permissions"),
    "insufficient_scope": (RestError, "the token lacks a scope the method needs"),
    "METHOD_CONFIRM_DENIED": (RestError, "an administrator refused the method"),
    "INVALID_REQUEST": (RestError, "HTTPS required"),
    "ERROR_METHOD_NOT_FOUND": (RestError, "method not found"),
    "ERROR_BATCH_LENGTH_EXCEEDED": (RestError, "more than 50 commands in a batch"),
    "ERROR_BATCH_METHOD_NOT_ALLOWED": (RestError, "method not allowed in batch"),
    "ERROR_ARGUMENT": (RestError, "argument missing or empty"),
    "ERROR_SENDER_VALIDATION_FAILURE": (RestError, "sender CODE empty or malformed"),
    "ERROR_MESSAGE_NOT_FOUND": (RestError, "MESSAGE_ID unknown for this app and CODE"),
    "ERROR_MESSAGE_STATUS_INCORRECT": (RestError, "STATUS not one of the five"),
    "IMCONNECTOR_NO_CORRECT_PROVIDER": (RestError, "connector not registered"),
    "ERROR_SENDER_CODE_REQUIRED": (RestError, "CODE missing"),
    "ERROR_SENDER_OTHER_PARAMS_REQUIRED": (RestError, "none of HANDLER, NAME, DESCRIPTION"),
    "ERROR_SENDER_NOT_FOUND": (RestError, "sender CODE not registered by this app"),
    "ERROR_SENDER_ALREADY_INSTALLED": (RestError, "sender CODE already registered (a sender-add job is applied)"),
    "ERROR_SENDER_ADD_FAILURE": (RestError, "the portal failed to add the sender"),
    "ERROR_SENDER_UPDATE_FAILURE": (RestError, "the portal failed to update the sender"),
    "ERROR_WRONG_HANDLER_URL": (RestError, "HANDLER is not a valid URL"),
    "ERROR_HANDLER_URL_MATCH": (RestError, "HANDLER does not match the app's domain"),
    "ERROR_UNSUPPORTED_PROTOCOL": (RestError, "HANDLER protocol not supported"),
    "MESSAGE_ID_ERROR": (RestError, "MESSAGE_ID empty or not positive"),
    "DIALOG_ID_EMPTY": (RestError, "DIALOG_ID empty or malformed"),
    "invalid_request": (RestError, "malformed OAuth request"),
    "invalid_scope": (RestError, "scope problem"),
}


def rest_error(code: str, description: str = "", status: int | None = None, **extra: Any) -> RestError:
    """Build the typed error for an error envelope. Unknown codes fall back on the HTTP status class."""
    known = ACTIONS.get(code)
    if known is not None:
        cls = known[0]
    elif status is not None and status >= 500:
        cls = ServerError
    elif status == 401:
        cls = AuthLost
    else:
        cls = RestError
    return cls(code, description, status, **extra)
