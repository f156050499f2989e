"""A Bitrix24 cloud-portal emulator: a real HTTP server on loopback, faithful to the documented limits,
OAuth rotation, ``batch`` and the errors of the four methods b24q calls.

Public API::

    from emulator import Emulator, PortalInfo

    with Emulator(port=0) as emu:                    # binds 127.0.0.1, serves in a background thread
        info = emu.add_portal("a.bitrix24.test", auto_messages=True, senders=["sms"])
        # POST {info.client_endpoint}messageservice.message.status.update  (auth=info.access_token)
        emu.state("a.bitrix24.test")["statuses"]

State of one portal (``Emulator.state(domain)`` / ``GET /_emulator/portals/{domain}/state``)::

    {"domain", "member_id", "options": {...}, "faults": {...},
     "installations": [{"client_id", "installed", "oauth_error"}],
     "senders": [{"client_id", "code", "type", "handler", "name", "description"}],
     "connectors": [{"connector", "lines"}],
     "statuses": [{"client_id", "code", "message_id", "seeded", "statuses": [..], "count"}],
     "deliveries": [{"connector", "line", "chat_id", "message_id", "count"}],
     "sender_updates": [{"client_id", "code", "updates": [{HANDLER?, NAME?, DESCRIPTION?}], "count"}],
     "unread": [{"user_id", "dialog_id", "message_ids": [..], "count"}],
     "operating": {"<subject> <method>": seconds},
     "counters": {"requests", "accepted", "refused_503", "by_error_code": {}, "refreshes", "invalid_grants",
                  "batches", "batch_commands", "method_calls": {}, "faults": {},
                  "client_secret_seen"},
     "accepted_times": [monotonic seconds], "refused_times": [monotonic seconds]}
"""

from .bucket import LeakyBucket
from .core import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Emulator, PortalInfo
from .errors import RestError
from .faults import Faults
from .metrics import max_in_window
from .operating import OperatingMeter
from .querystring import build_query, parse_query
from .state import PortalOptions

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "Emulator",
    "Faults",
    "LeakyBucket",
    "OperatingMeter",
    "PortalInfo",
    "PortalOptions",
    "RestError",
    "build_query",
    "max_in_window",
    "parse_query",
]
