"""A Bitrix24 cloud-portal emulator: a real HTTP server on loopback, faithful to the documented limits,
OAuth rotation, ``batch``, the errors of the four methods b24q calls, and the application lifecycle
(install / update / uninstall events, ``event.bind``/``unbind``/``get``, ``app.info``, domain moves).

Public API::

    from emulator import Emulator, PortalInfo

    with Emulator(port=0) as emu:                    # binds 127.0.0.1, serves in a background thread
        info = emu.add_portal("a.bitrix24.test", auto_messages=True, senders=["sms"])
        # POST {info.client_endpoint}messageservice.message.status.update  (auth=info.access_token)
        emu.state("a.bitrix24.test")["statuses"]

    with Emulator(app_handler="http://127.0.0.1:9000/install") as emu:  # an API-only app in callback mode
        emu.add_portal("b.bitrix24.test")
        emu.install_app("b.bitrix24.test")          # POSTs ONAPPINSTALL → InstallResult (tokens, application_token)
        emu.update_app("b.bitrix24.test")           # VERSION+1, new application_token, senders gone, ONAPPUPDATE
        emu.uninstall("b.bitrix24.test", clean=1)   # ONAPPUNINSTALL to bound handlers, then all handlers deleted
        emu.move_portal("b.bitrix24.test", "new-b.bitrix24.test")  # the old domain now 302s to the new one

REST methods besides the four: ``batch``, ``messageservice.sender.add/delete/list``, ``event.bind``,
``event.unbind``, ``event.get`` and ``app.info``.

Where the docs leave a choice, the emulator follows a reading, names its source (or says it is a guess) and
makes the other selectable per portal (:class:`PortalOptions`, also via ``POST /_emulator/portals/{d}/options``):

* **Refused requests and the leaky bucket** (``refused_fill_bucket``, default ``True``): a request answered 503
  ``QUERY_LIMIT_EXCEEDED`` adds to the counter too.  Source: ``b24restdocs:limits.md`` (facts §1.1), "Each
  application request increases a virtual request counter", with no exception for blocked requests (the older
  text and the Russian page: "each incoming request").  ``False`` (refused requests do not count) is a guess with
  no source.  See :mod:`emulator.bucket`.
* **``operating_reset_at``**: an integer unix time, the oldest bucket's first call cut to its whole second plus
  the window; the bucket is gone exactly then.  Source: ``b24restdocs:api-reference/data-types.md#time``
  ("Usually returned as an integer") and ``limits.md`` (its examples: ``start`` 1778747192.91 → 1778747792;
  "when the time from operating_reset_at arrives, the sum of the time in the oldest basket is excluded").  Not
  an option.  See :mod:`emulator.operating`.
* **An access token a refresh superseded** (``superseded_token_error``, default ``"invalid_token"``; or
  ``"NO_AUTH_FOUND"``, ``"expired_token"``): a **guess**.  The facts (§2.1, old docs) say only that it "becomes
  invalid", not which error it gets.  See :mod:`emulator.auth`.

State of one portal (``Emulator.state(domain)`` / ``GET /_emulator/portals/{domain}/state``)::

    {"domain", "member_id", "moved_from": [former domains], "endpoint_domain" (announced in refreshes/events),
     "options": {...}, "faults": {...},
     "installations": [{"client_id", "installed", "oauth_error", "app_id", "code", "version", "status",
                        "payment_expired", "days", "language_id", "application_token"}],
     "senders": [{"client_id", "code", "type", "handler", "name", "description"}],
     "connectors": [{"connector", "lines"}],
     "statuses": [{"client_id", "code", "message_id", "seeded", "statuses": [..], "count"}],
     "deliveries": [{"connector", "line", "chat_id", "message_id", "count"}],
     "sender_updates": [{"client_id", "code", "updates": [{HANDLER?, NAME?, DESCRIPTION?}], "count"}],
     "unread": [{"user_id", "dialog_id", "message_ids": [..], "count"}],
     "event_handlers": [{"id", "client_id", "event", "handler", "auth_type", "offline"}],
     "events_sent": [{"event", "handler", "status" (HTTP status or null), "error"?, "client_id",
                      "event_handler_id"?}],
     "operating": {"<subject> <method>": seconds},
     "counters": {"requests", "accepted", "refused_503", "by_error_code": {}, "refreshes", "invalid_grants",
                  "batches", "batch_commands", "method_calls": {}, "faults": {},
                  "client_secret_seen", "redirects"},
     "accepted_times": [monotonic seconds], "refused_times": [monotonic seconds],
     "batch_log": [[monotonic seconds, commands], ...] (each batch request, when its commands were applied)}
"""

from .bucket import LeakyBucket
from .core import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    Emulator,
    InstallResult,
    PortalInfo,
    UninstallResult,
    UpdateResult,
)
from .errors import RestError
from .events import Delivery
from .faults import Faults
from .metrics import max_in_window
from .operating import OperatingMeter
from .querystring import build_query, parse_query
from .state import PortalOptions

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "Delivery",
    "Emulator",
    "Faults",
    "InstallResult",
    "LeakyBucket",
    "OperatingMeter",
    "PortalInfo",
    "PortalOptions",
    "RestError",
    "UninstallResult",
    "UpdateResult",
    "build_query",
    "max_in_window",
    "parse_query",
]
