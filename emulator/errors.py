"""The Bitrix24 REST error envelope and the catalogue of errors the emulator can raise.

Every REST error is ``{"error": CODE, "error_description": TEXT}`` plus optional extra keys, sent with the
HTTP status listed in ``/work/shared/reference/bitrix24-facts.md``.  Keeping the catalogue in one place means
the codes, texts and statuses are checked against the facts file once instead of in every method.
"""

from __future__ import annotations

from typing import Any


class RestError(Exception):
    """A REST error: raised anywhere inside a call, rendered as the Bitrix24 error envelope.

    ``extra`` carries additional keys that Bitrix puts next to ``error`` (e.g. ``argument`` for
    ``ERROR_ARGUMENT``, which ``RestException::initFromException`` copies from an ``ArgumentException``).
    """

    def __init__(self, status: int, code: str, description: str, **extra: Any) -> None:
        super().__init__(f"{status} {code}: {description}")
        self.status = status
        self.code = code
        self.description = description
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON body, exactly as Bitrix24 sends it."""
        out: dict[str, Any] = {"error": self.code, "error_description": self.description}
        out.update(self.extra)
        return out


# --- system errors (facts §4.5) -------------------------------------------------------------------------


def query_limit_exceeded() -> RestError:
    return RestError(503, "QUERY_LIMIT_EXCEEDED", "Too many requests")


def overload_limit() -> RestError:
    return RestError(503, "OVERLOAD_LIMIT", "REST API is blocked due to overload")


def operation_time_limit() -> RestError:
    return RestError(429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.")


def internal_server_error() -> RestError:
    return RestError(500, "INTERNAL_SERVER_ERROR", "Internal server error")


def portal_deleted() -> RestError:
    """PORTAL_DELETED: the docs say 500, older source 403, PySDK 410 (facts §4.5 ⚠️). We use the docs' 500."""
    return RestError(500, "PORTAL_DELETED", "Portal was deleted")


def no_auth_found() -> RestError:
    return RestError(401, "NO_AUTH_FOUND", "Wrong authorization data")


def expired_token() -> RestError:
    return RestError(401, "expired_token", "The access token provided has expired")


def invalid_token() -> RestError:
    """401 ``invalid_token`` with PySDK's text (facts §2.1 and §4.5: "PySDK also documents invalid_token")."""
    return RestError(401, "invalid_token", "Unable to get application by token")


def superseded_token(code: str) -> RestError:
    """The answer to an access token a refresh rotated away, by the portal's ``superseded_token_error``."""
    if code == "NO_AUTH_FOUND":
        return no_auth_found()
    if code == "expired_token":
        return expired_token()
    return invalid_token()


def application_not_found() -> RestError:
    """Used for a token of an app that was uninstalled from the portal (``auth.php``: APPLICATION_NOT_FOUND)."""
    return RestError(401, "APPLICATION_NOT_FOUND", "Application not found")


def method_not_found() -> RestError:
    return RestError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")


def batch_method_not_allowed() -> RestError:
    return RestError(405, "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage")


def batch_length_exceeded() -> RestError:
    return RestError(400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")


def bad_json() -> RestError:
    """A body sent as JSON that does not decode to an object.

    ⚠️ Not documented.  Bitrix decodes with ``Main\\Web\\Json::decode``, which throws an ``ArgumentException``;
    ``RestException::initFromException`` turns that into ``ERROR_ARGUMENT`` / 400, so that is what we send.
    """
    return RestError(400, "ERROR_ARGUMENT", "Request body is not a valid JSON object")


# --- application context ---------------------------------------------------------------------------------


def access_denied_app_context() -> RestError:
    """messageservice.*: ``AccessException("Application context required")`` → 403 with the "Access denied!" prefix."""
    return RestError(403, "ACCESS_DENIED", "Access denied! Application context required")


def access_denied() -> RestError:
    """``AccessException()`` with no message: the caller is not an admin / not the message author."""
    return RestError(403, "ACCESS_DENIED", "Access denied!")


def access_denied_because(reason: str) -> RestError:
    """``AccessException(reason)``: "Access denied!" followed by the reason (``accessexception.php``)."""
    return RestError(403, "ACCESS_DENIED", f"Access denied! {reason}")


def wrong_auth_type_plain() -> RestError:
    """``AuthTypeException()`` with no message, as ``event.*`` throws it for a non-OAuth caller (Src api/event.php)."""
    return RestError(403, "WRONG_AUTH_TYPE", "Current authorization type is denied for this method")


def wrong_auth_type() -> RestError:
    """imconnector.*: ``AuthTypeException("Application context required")``."""
    return RestError(
        403,
        "WRONG_AUTH_TYPE",
        "Current authorization type is denied for this method Application context required",
    )


# --- messageservice (facts §4.1, §4.3, §5.1; restservice.php) ----------------------------------------------


def sender_validation(text: str) -> RestError:
    return RestError(400, "ERROR_SENDER_VALIDATION_FAILURE", text)


def sender_already_installed() -> RestError:
    return RestError(400, "ERROR_SENDER_ALREADY_INSTALLED", "Sender already installed!")


def sender_not_found() -> RestError:
    return RestError(400, "ERROR_SENDER_NOT_FOUND", "Sender not found!")


def sender_code_required() -> RestError:
    return RestError(400, "ERROR_SENDER_CODE_REQUIRED", "CODE is required!")


def sender_other_params_required() -> RestError:
    return RestError(400, "ERROR_SENDER_OTHER_PARAMS_REQUIRED", "At least one other parameter is required!")


def sender_update_failure() -> RestError:
    return RestError(400, "ERROR_SENDER_UPDATE_FAILURE", "Sender update error!")


def wrong_handler_url() -> RestError:
    return RestError(400, "ERROR_WRONG_HANDLER_URL", "Wrong handler URL")


def unsupported_protocol() -> RestError:
    return RestError(400, "ERROR_UNSUPPORTED_PROTOCOL", "Unsupported handler protocol")


def message_not_found() -> RestError:
    return RestError(400, "ERROR_MESSAGE_NOT_FOUND", "Message not found!")


def message_status_incorrect() -> RestError:
    return RestError(400, "ERROR_MESSAGE_STATUS_INCORRECT", "Message status incorrect!")


# --- events (facts §7.2; Src api/event.php, EventTable) -------------------------------------------------------


def event_not_found() -> RestError:
    return RestError(400, "ERROR_EVENT_NOT_FOUND", "Event not found")


def handler_already_binded() -> RestError:
    """``EventTable::checkUniq`` fails the add; ``eventBind`` wraps it as ``RestException(…, ERROR_CORE)`` → 400."""
    return RestError(400, "ERROR_CORE", "Unable to set event handler: Handler already binded")


def argument_invalid(text: str, name: str) -> RestError:
    """``ArgumentException(text, name)`` as rendered by ``RestException::initFromException``."""
    return RestError(400, "ERROR_ARGUMENT", text, argument=name)


# --- imconnector (facts §4.2; customconnectors.php) --------------------------------------------------------


def argument_null(name: str) -> RestError:
    """``ArgumentNullException(name)`` as rendered by ``RestException::initFromException``."""
    return RestError(400, "ERROR_ARGUMENT", f"Argument '{name}' is null or empty", argument=name)


def no_correct_provider() -> RestError:
    return RestError(400, "IMCONNECTOR_NO_CORRECT_PROVIDER", "Unable to find a suitable provider for the connector")


# --- im (facts §4.4; im_rest.php) ---------------------------------------------------------------------------


def message_id_error() -> RestError:
    """The source and the docs' table say this text; the docs' example says "Message ID can't be empty" (⚠️)."""
    return RestError(400, "MESSAGE_ID_ERROR", "First unread message id can't be empty")


def dialog_id_empty() -> RestError:
    return RestError(400, "DIALOG_ID_EMPTY", "Dialog ID can't be empty")
