"""Application events: the catalogue ``event.bind`` accepts, the payloads of the app lifecycle events, and the
POST that delivers them (facts §7.1b, §7.2, §7.6).

How Bitrix24 sends an event: a POST with an ``application/x-www-form-urlencoded`` body of PHP-style nested
fields (``auth[member_id]=…``), built the way PHP's ``http_build_query`` builds it (brackets percent-encoded,
spaces as ``+``).  There are **no retries**: a failed call is logged and not resent (D ``events/index.md``), so
the emulator records each attempt in the portal's ``events_sent`` and never repeats one.

Payload shapes (top-level keys in this order: ``event``, ``event_handler_id``, ``data``, ``ts``, ``auth``):

* ONAPPINSTALL (§7.1b): ``data[VERSION, ACTIVE, INSTALLED, LANGUAGE_ID]``; full auth with ``refresh_token``
  (the event is declared ``sendRefreshToken``); no ``event_handler_id`` (absent from D's example).
* ONAPPUPDATE (§7.2): ``data[VERSION, PREVIOUS_VERSION, LANGUAGE_ID]``; full auth with ``refresh_token`` and the
  updated ``application_token``.
* ONAPPUNINSTALL (§7.2): ``data[LANGUAGE_ID, CLEAN]``; auth without tokens (``sendAuth => false``): only
  ``domain``, ``server_endpoint``, ``client_endpoint``, ``member_id``, ``application_token``.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .querystring import build_query

GLOBAL_SCOPE = "_global"  # CRestUtil::GLOBAL_SCOPE: events every app may bind whatever its scope

#: Known events (upper case, as ``event.bind`` stores them) and the scope that provides each.  ``event.bind``
#: looks a name up among the token's scopes plus the global one; anything else is ERROR_EVENT_NOT_FOUND.
EVENTS: dict[str, str] = {
    # Src rest_provider.php, the global scope
    "ONAPPINSTALL": GLOBAL_SCOPE,
    "ONAPPUNINSTALL": GLOBAL_SCOPE,
    "ONAPPUPDATE": GLOBAL_SCOPE,
    "ONAPPPAYMENT": GLOBAL_SCOPE,
    "ONAPPTEST": GLOBAL_SCOPE,
    "ONAPPMETHODCONFIRM": GLOBAL_SCOPE,
    "ONSUBSCRIPTIONRENEW": GLOBAL_SCOPE,
    # D api-reference/imopenlines/imconnector/events
    "ONIMCONNECTORMESSAGEADD": "imconnector",
    "ONIMCONNECTORMESSAGEUPDATE": "imconnector",
    "ONIMCONNECTORMESSAGEDELETE": "imconnector",
    "ONIMCONNECTORLINEDELETE": "imconnector",
    "ONIMCONNECTORSTATUSDELETE": "imconnector",
    # the docs' own example event (event-bind.md), in a scope our default token does not carry
    "ONCRMLEADADD": "crm",
    "ONCRMLEADUPDATE": "crm",
    "ONCRMDEALADD": "crm",
    "ONCRMDEALUPDATE": "crm",
}

FORM_TYPE = "application/x-www-form-urlencoded"
USER_AGENT = "b24-emulator"  # the real sender's User-Agent is not in the facts


@dataclass(frozen=True)
class Delivery:
    """One event POST: where it went and how the handler answered (``status`` None = no HTTP answer)."""

    event: str
    handler: str
    status: int | None
    error: str | None = None
    client_id: str = ""
    event_handler_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record kept in ``events_sent`` and returned by the admin API: never any token."""
        out: dict[str, Any] = {"event": self.event, "handler": self.handler, "status": self.status}
        if self.error is not None:
            out["error"] = self.error
        out["client_id"] = self.client_id
        if self.event_handler_id is not None:
            out["event_handler_id"] = self.event_handler_id
        return out


@dataclass(frozen=True)
class Outgoing:
    """An event built under the portal lock, to be POSTed after it is released (a handler may call back)."""

    event: str
    handler: str
    payload: dict[str, Any]
    client_id: str
    event_handler_id: int | None = None


def find_event(name: str, scopes: list[str]) -> str | None:
    """The stored (upper-case) name if the event exists in one of ``scopes`` or the global scope."""
    upper = name.upper()
    scope = EVENTS.get(upper)
    if scope is None or (scope != GLOBAL_SCOPE and scope not in scopes):
        return None
    return upper


def payload(
    event: str,
    data: Mapping[str, Any],
    auth: Mapping[str, Any],
    ts: float,
    event_handler_id: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"event": event}
    if event_handler_id is not None:
        out["event_handler_id"] = event_handler_id
    out["data"] = dict(data)
    out["ts"] = str(int(ts))  # a string in every documented example
    out["auth"] = dict(auth)
    return out


def encode(fields: Mapping[str, Any]) -> bytes:
    """``http_build_query``: nested keys as ``a[b]``, brackets percent-encoded like PHP does."""
    return build_query(fields, encode_brackets=True).encode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is the handler's answer: record its status, do not follow it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def post(out: Outgoing, timeout: float) -> Delivery:
    """POST one event; any HTTP answer is recorded with its status, a transport failure with ``status`` None."""
    request = urllib.request.Request(
        out.handler,
        data=encode(out.payload),
        method="POST",
        headers={"Content-Type": FORM_TYPE, "User-Agent": USER_AGENT},
    )
    status: int | None
    error: str | None = None
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
        error = f"HTTP {exc.code}"
        exc.close()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        status = None
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        error = f"{type(reason).__name__}: {reason}"
    return Delivery(
        event=out.event,
        handler=out.handler,
        status=status,
        error=error,
        client_id=out.client_id,
        event_handler_id=out.event_handler_id,
    )
