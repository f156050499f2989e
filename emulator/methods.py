"""The REST methods, with the validation order, codes, texts and statuses of the Bitrix source and docs.

Each method is ``fn(ctx, params) -> result`` and runs under the portal's lock (the caller takes it), so it may
read and mutate the portal freely.  Errors are raised as :class:`~emulator.errors.RestError`.

Sources (see ``/work/shared/reference/bitrix24-facts.md``):

* messageservice.*: ``modules/messageservice/lib/restservice.php``.  Order for status.update: app context → CODE
  → MESSAGE_ID empty → STATUS → lookup by ``client_id|CODE`` → author-or-admin.  Keys are upper-cased.
* imconnector.send.status.delivery: ``customconnectors.php``.  Keys upper-cased; app context (auth type) → the
  three required arguments → ``MESSAGES`` keys lower-cased recursively → provider lookup.
* im.dialog.unread: ``im_rest.php`` ``dialogUnread``: ``intval(MESSAGE_ID) <= 0`` → MESSAGE_ID_ERROR, then
  ``Common::isDialogId`` → DIALOG_ID_EMPTY.  Acts for the calling user.
* messageservice.sender.update: the docs only (the source snapshot predates it); order chosen: CODE → other
  params → sender lookup → HANDLER check (same ``HandlerHelper::checkCallback`` as sender.add) → NAME/DESCRIPTION.
* event.bind / event.unbind / event.get: Src ``rest/lib/api/event.php`` and D ``api-reference/events`` (facts
  §7.2).  OAuth only (WRONG_AUTH_TYPE otherwise); keys upper-cased; ``EVENT`` upper-cased and looked up among the
  token's scopes plus the global one.
* app.info: Src ``CRestProvider::appInfo`` and D ``common/system/app-info.md`` (facts §7.4).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from . import errors, events, php
from .auth import WEBHOOK, CallContext
from .state import Delivery, Message, Sender

Method = Callable[[CallContext, dict[str, Any]], Any]

SENDER_CODE = re.compile(r"^[a-z0-9.\-_]+$", re.IGNORECASE)
DIALOG_ID = re.compile(r"^([0-9]+|(chat|sg|crm)[0-9]+)$", re.IGNORECASE)
MESSAGE_STATUSES = ("queued", "sent", "delivered", "undelivered", "failed")
SENDER_TYPES = ("SMS",)


# --- shared checks ----------------------------------------------------------------------------------------


def _require_app_context(ctx: CallContext) -> None:
    """messageservice: ``if(!$server->getClientId()) throw new AccessException("Application context required")``."""
    if not ctx.app_context:
        raise errors.access_denied_app_context()


def _require_admin(ctx: CallContext) -> None:
    """``checkAdminPermissions``.  The token/webhook user is an admin unless the portal option ``admin`` is off."""
    if not ctx.portal.options.admin:
        raise errors.access_denied()


def _validate_sender_code(code: Any) -> str:
    if php.empty(code):
        raise errors.sender_validation("Empty sender code!")
    text = php.scalar_str(code)
    if text is None or not SENDER_CODE.match(text):
        raise errors.sender_validation("Wrong sender code!")
    return text


def check_handler_url(handler: Any) -> str:
    """``HandlerHelper::checkCallback``: a host containing a dot (not first), and an http(s) scheme."""
    url = php.scalar_str(handler)
    if not url:
        raise errors.wrong_handler_url()
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise errors.wrong_handler_url() from None
    if not host or host.find(".") <= 0:
        raise errors.wrong_handler_url()
    if parts.scheme not in ("http", "https"):
        raise errors.unsupported_protocol()
    return url


def _localized(value: Any) -> bool:
    """NAME/DESCRIPTION may be a string or a ``{lang: text}`` map of strings."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return True
    if isinstance(value, Mapping) and value:
        return all(isinstance(k, str) and isinstance(v, str | int | float) for k, v in value.items())
    return False


# --- messageservice ---------------------------------------------------------------------------------------


def sender_add(ctx: CallContext, params: dict[str, Any]) -> bool:
    _require_app_context(ctx)
    _require_admin(ctx)
    p = php.upper_keys(params)
    if not p:
        raise errors.sender_validation("Empty data!")
    code = _validate_sender_code(p.get("CODE"))
    handler = check_handler_url(p.get("HANDLER"))
    if php.empty(p.get("NAME")):
        raise errors.sender_validation("Empty sender NAME!")
    if php.empty(p.get("TYPE")):
        raise errors.sender_validation("Empty sender message TYPE!")
    if p.get("TYPE") not in SENDER_TYPES:
        raise errors.sender_validation("Unknown sender message TYPE!")
    assert ctx.client_id is not None
    key = (ctx.client_id, code.lower())
    portal = ctx.portal
    if key in portal.senders:
        raise errors.sender_already_installed()
    portal.senders[key] = Sender(
        client_id=ctx.client_id,
        code=code,
        type=str(p["TYPE"]),
        handler=handler,
        name=p["NAME"],
        description=p.get("DESCRIPTION", ""),
        author_id=ctx.user_id,
    )
    return True


def sender_delete(ctx: CallContext, params: dict[str, Any]) -> bool:
    _require_app_context(ctx)
    p = php.upper_keys(params)
    _require_admin(ctx)
    code = _validate_sender_code(p.get("CODE"))
    assert ctx.client_id is not None
    if ctx.portal.senders.pop((ctx.client_id, code.lower()), None) is None:
        raise errors.sender_not_found()
    return True


def sender_list(ctx: CallContext, params: dict[str, Any]) -> list[str]:
    _require_app_context(ctx)
    _require_admin(ctx)
    return [s.code for (cid, _), s in ctx.portal.senders.items() if cid == ctx.client_id]


def sender_update(ctx: CallContext, params: dict[str, Any]) -> bool:
    """⚠️ Statuses inferred (facts §4.3): RestException → 400, AccessException → 403.

    Empty values (PHP ``empty()``) do not count as "given".  A NAME/DESCRIPTION that is neither a string nor a
    non-empty ``{lang: text}`` map gives ERROR_SENDER_UPDATE_FAILURE (the only remaining documented code).
    """
    _require_app_context(ctx)
    _require_admin(ctx)
    p = php.upper_keys(params)
    if php.empty(p.get("CODE")):
        raise errors.sender_code_required()
    given = {k: p[k] for k in ("HANDLER", "NAME", "DESCRIPTION") if not php.empty(p.get(k))}
    if not given:
        raise errors.sender_other_params_required()
    code = php.scalar_str(p["CODE"]) or ""
    assert ctx.client_id is not None
    sender = ctx.portal.senders.get((ctx.client_id, code.lower()))
    if sender is None:
        raise errors.sender_not_found()
    if "HANDLER" in given:
        given["HANDLER"] = check_handler_url(given["HANDLER"])
    for key in ("NAME", "DESCRIPTION"):
        if key in given and not _localized(given[key]):
            raise errors.sender_update_failure()
    if "HANDLER" in given:
        sender.handler = given["HANDLER"]
    if "NAME" in given:
        sender.name = given["NAME"]
    if "DESCRIPTION" in given:
        sender.description = given["DESCRIPTION"]
    ctx.portal.sender_updates.setdefault((ctx.client_id, sender.code), []).append(dict(given))
    return True


def message_status_update(ctx: CallContext, params: dict[str, Any]) -> bool:
    """Status strings are matched exactly (lower case, as documented); anything else is INCORRECT.

    The lookup is scoped to ``client_id|CODE`` like ``Message::loadByExternalId``; CODE is compared
    case-insensitively (MySQL's default collation would).  With the portal option ``auto_messages`` an unknown
    MESSAGE_ID is accepted (and created) when this app registered a sender with that CODE.
    """
    _require_app_context(ctx)
    p = php.upper_keys(params)
    code = _validate_sender_code(p.get("CODE"))
    raw_id = p.get("MESSAGE_ID")
    if php.empty(raw_id):
        raise errors.message_not_found()
    status = p.get("STATUS")
    if not isinstance(status, str) or status not in MESSAGE_STATUSES:
        raise errors.message_status_incorrect()
    message_id = php.scalar_str(raw_id)
    if message_id is None:
        raise errors.message_not_found()
    assert ctx.client_id is not None
    portal = ctx.portal
    key = (ctx.client_id, code.lower(), message_id)
    message = portal.messages.get(key)
    if message is None:
        sender = portal.senders.get((ctx.client_id, code.lower()))
        if not (portal.options.auto_messages and sender is not None):
            raise errors.message_not_found()
        message = Message(
            client_id=ctx.client_id,
            code=sender.code,
            message_id=message_id,
            author_id=ctx.user_id,
            seeded=False,
        )
        portal.messages[key] = message
    if message.author_id != ctx.user_id:
        _require_admin(ctx)
    message.statuses.append(status)
    return True


# --- imconnector ------------------------------------------------------------------------------------------


def _normalize_id(value: Any) -> Any:
    """Bitrix ids arrive as ints or digit strings; record them as ints when they are."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def send_status_delivery(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    """⚠️ The source checks the three arguments with ``isset()`` (null/missing).  The docs' text says "null or
    empty", so an empty string or empty array is refused with ERROR_ARGUMENT too.

    Connectors are registered per portal (admin API); the LINE is recorded but not checked against the
    registration (the docs tie IMCONNECTOR_NO_CORRECT_PROVIDER to the connector only).
    """
    p = php.upper_keys(params)
    if not ctx.app_context:
        raise errors.wrong_auth_type()
    for name in ("CONNECTOR", "LINE", "MESSAGES"):
        value = p.get(name)
        if value is None or value == "" or (isinstance(value, Mapping | list) and not value):
            raise errors.argument_null(name)
    messages = php.lower_keys_recursive(p["MESSAGES"])
    if isinstance(messages, Mapping):
        messages = list(messages.values())
    if not isinstance(messages, list):
        raise errors.RestError(
            400,
            "ERROR_ARGUMENT",
            "The value of an argument 'MESSAGES' must be of type array",
            argument="MESSAGES",
        )
    portal = ctx.portal
    connector = (php.scalar_str(p["CONNECTOR"]) or "").lower()
    if not connector or not (portal.options.auto_connectors or connector in portal.connectors):
        raise errors.no_correct_provider()
    if portal.faults.delivery_success_false:
        portal.counters.faults["delivery_success_false"] += 1
        return {"SUCCESS": False, "DATA": []}
    line = _normalize_id(p["LINE"])
    for item in messages:
        im = item.get("im") if isinstance(item, Mapping) else None
        chat_id = _normalize_id(im.get("chat_id")) if isinstance(im, Mapping) else None
        message_id = _normalize_id(im.get("message_id")) if isinstance(im, Mapping) else None
        key = (connector, line, chat_id, message_id)
        record = portal.deliveries.get(key)
        if record is None:
            record = Delivery(connector=connector, line=line, chat_id=chat_id, message_id=message_id)
            portal.deliveries[key] = record
        record.count += 1
        record.last = item
    return {"SUCCESS": True, "DATA": []}


# --- im ---------------------------------------------------------------------------------------------------


def dialog_unread(ctx: CallContext, params: dict[str, Any]) -> bool:
    p = php.upper_keys(params)
    message_id = php.intval(p.get("MESSAGE_ID"))
    if message_id <= 0:
        raise errors.message_id_error()
    dialog = php.scalar_str(p.get("DIALOG_ID"))
    if php.empty(dialog) or dialog is None or not DIALOG_ID.match(dialog):
        raise errors.dialog_id_empty()
    ctx.portal.unread.setdefault((ctx.user_id, dialog), []).append(message_id)
    return True


# --- events (facts §7.2) ----------------------------------------------------------------------------------


def _scopes(ctx: CallContext) -> list[str]:
    return [s.strip() for s in ctx.portal.options.scope.split(",") if s.strip()]


def _require_oauth(ctx: CallContext) -> str:
    """``if($server->getAuthType() !== Auth::AUTH_TYPE) throw new AuthTypeException()``."""
    if not ctx.app_context or ctx.client_id is None:
        raise errors.wrong_auth_type_plain()
    return ctx.client_id


def _event_type(p: Mapping[str, Any]) -> str:
    kind = (php.scalar_str(p.get("EVENT_TYPE")) or "").lower()
    if kind == "":
        return "online"
    if kind not in ("online", "offline"):
        raise errors.argument_invalid("Value must be one of {online|offline}", "EVENT_TYPE")
    return kind


def event_bind(ctx: CallContext, params: dict[str, Any]) -> bool:
    """Order of checks as in ``eventBind``: AUTH_TYPE rights → EVENT → EVENT_TYPE → offline rights → HANDLER →
    ``checkCallback`` → the event exists in scope → unique.  A non-admin binds for themself; offline bindings
    (admin only) have no handler and no user."""
    client_id = _require_oauth(ctx)
    p = php.upper_keys(params)
    admin = ctx.portal.options.admin
    user = php.intval(p.get("AUTH_TYPE"))
    if user > 0:
        if not admin and user != ctx.user_id:
            raise errors.access_denied_because("Event binding with AUTH_TYPE requires administrator access rights")
    elif not admin:
        user = ctx.user_id
    else:
        user = 0
    name = (php.scalar_str(p.get("EVENT")) or "").upper()
    if name == "":
        raise errors.argument_null("EVENT")
    kind = _event_type(p)
    handler = php.scalar_str(p.get("HANDLER")) or ""
    if kind == "offline":
        if not admin:
            raise errors.access_denied_because("Offline events binding requires administrator access rights")
        handler, user = "", 0
    elif handler == "":
        raise errors.argument_null("HANDLER")
    if handler:
        check_handler_url(handler)
    event = events.find_event(name, _scopes(ctx))
    if event is None:
        raise errors.event_not_found()
    if ctx.portal.add_handler(client_id, event, handler, user) is None:
        raise errors.handler_already_binded()
    return True


def event_unbind(ctx: CallContext, params: dict[str, Any]) -> dict[str, int]:
    """``eventUnbind``: deletes the app's rows for EVENT + HANDLER (offline: the handler-less rows); an admin
    without AUTH_TYPE removes every user's, a non-admin only their own.  ⚠️ The source compares a given AUTH_TYPE
    with ``!==`` against an int, so a non-admin passes only with a JSON integer equal to their own id."""
    client_id = _require_oauth(ctx)
    p = php.upper_keys(params)
    admin = ctx.portal.options.admin
    name = (php.scalar_str(p.get("EVENT")) or "").upper()
    if name == "":
        raise errors.argument_null("EVENT")
    kind = _event_type(p)
    handler = php.scalar_str(p.get("HANDLER")) or ""
    user: int | None = None
    if kind == "offline":
        if not admin:
            raise errors.access_denied_because("Offline events unbinding requires administrator access rights")
        handler = ""
    elif handler == "":
        raise errors.argument_null("HANDLER")
    elif p.get("AUTH_TYPE") is not None:
        raw = p["AUTH_TYPE"]
        if not admin and not (isinstance(raw, int) and not isinstance(raw, bool) and raw == ctx.user_id):
            raise errors.access_denied_because("Event unbinding with AUTH_TYPE requires administrator access rights")
        user = php.intval(raw)
    elif not admin:
        user = ctx.user_id
    rows = [
        h
        for h in ctx.portal.handlers_of(client_id, name)
        if h.handler == handler and (user is None or h.user_id == user)
    ]
    return {"count": ctx.portal.remove_handlers(rows)}


def event_get(ctx: CallContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    """``eventGet``: the app's handlers by ID; ``auth_type`` is a string, as the docs' example shows it."""
    client_id = _require_oauth(ctx)
    admin = ctx.portal.options.admin
    out: list[dict[str, Any]] = []
    for h in sorted(ctx.portal.handlers_of(client_id), key=lambda row: row.id):
        if not admin and h.user_id != ctx.user_id:
            continue
        if h.offline:
            out.append({"event": h.event, "connector_id": h.connector_id, "offline": 1})
        else:
            out.append({"event": h.event, "handler": h.handler, "auth_type": str(h.user_id), "offline": 0})
    return out


# --- app -------------------------------------------------------------------------------------------------


def app_info(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    """``CRestProvider::appInfo``: an app gets its installation; a webhook only SCOPE and LICENSE."""
    license = ctx.portal.options.license_info()
    if ctx.auth_type == WEBHOOK:
        return {"SCOPE": _scopes(ctx), "LICENSE": license["LICENSE"]}
    inst = ctx.portal.installations.get(ctx.client_id or "")
    if inst is None:
        raise errors.access_denied_app_context()
    return {
        "ID": inst.app_id,
        "CODE": inst.code,
        "VERSION": int(inst.version),
        "STATUS": inst.status,
        "INSTALLED": inst.installed,
        "PAYMENT_EXPIRED": inst.payment_expired,
        "DAYS": inst.days,
        "LANGUAGE_ID": inst.language_id,
        **license,
    }


METHODS: dict[str, Method] = {
    "messageservice.sender.add": sender_add,
    "messageservice.sender.delete": sender_delete,
    "messageservice.sender.list": sender_list,
    "messageservice.sender.update": sender_update,
    "messageservice.message.status.update": message_status_update,
    "imconnector.send.status.delivery": send_status_delivery,
    "im.dialog.unread": dialog_unread,
    "event.bind": event_bind,
    "event.unbind": event_unbind,
    "event.get": event_get,
    "app.info": app_info,
}
