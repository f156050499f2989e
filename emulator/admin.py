"""The admin / inspection API under ``{base}/_emulator/`` (JSON in, JSON out).

Lets a test or a benchmark in another process set the emulator up and read back what was applied::

    GET  /_emulator/health                         {"ok": true, "url": ...}
    GET  /_emulator/state                          all portals + OAuth counters
    POST /_emulator/reset                          {"keep_portals"?: bool}
    GET  /_emulator/portals                        ["domain", ...]
    POST /_emulator/portals                        {domain, plan?, rate?, burst?, ..., client_id?, client_secret?}
                                                   → PortalInfo (201)
    GET  /_emulator/portals/{domain}/state
    POST /_emulator/portals/{domain}/messages      {code, message_ids: [...], client_id?, author_id?}
    POST /_emulator/portals/{domain}/senders       {code, client_id?, handler?, name?, type?}
    POST /_emulator/portals/{domain}/connectors    {connector, line?}
    POST /_emulator/portals/{domain}/expire        expire current access tokens now
    POST /_emulator/portals/{domain}/faults        {error_500_rate?, drop_rate?, ..., seed?}
    POST /_emulator/portals/{domain}/options       {rate?, burst?, refused_fill_bucket?, op_cost?, operating_limit?,
                                                    operating_window?, superseded_token_error?, ...}
    POST /_emulator/portals/{domain}/tokens        {client_id?, client_secret?, user_id?} → PortalInfo

The application lifecycle (facts §7; events are POSTed before the reply, once, no retries)::

    GET  /_emulator/apps                           [{client_id, id, code, install_handler, status}]
    POST /_emulator/apps                           {client_id?, client_secret?, install_handler?, status?}
                                                   register or update an app → {client_id, id, code, ...}
    POST /_emulator/portals/{domain}/install       {client_id?, version?, user_id?, language_id?, status?,
                                                    new_application_token?: bool}
                                                   → PortalInfo + {application_token, version, handler,
                                                     handler_status: int|null, error?}  (ONAPPINSTALL)
    POST /_emulator/portals/{domain}/update        {client_id?, version?, user_id?, unbind_events?: bool}
                                                   → PortalInfo + {application_token, version, previous_version,
                                                     senders_removed, handlers_removed, events: [...]}  (ONAPPUPDATE)
    POST /_emulator/portals/{domain}/uninstall     {client_id?, oauth_error?: "NOT_INSTALLED"|"invalid_client",
                                                    clean?: 0|1}
                                                   → {ok, events: [...], handlers_removed, senders_removed}
                                                     (ONAPPUNINSTALL)
    POST /_emulator/portals/{domain}/move          {new_domain, stale_endpoints?: bool}
                                                   → {domain, old_domain, member_id, client_endpoint, webhook_url,
                                                      announced_domain}; the old domain now 302s, and its
                                                      /state is a 404

``events`` items (also kept in the portal's ``events_sent``): ``{event, handler, status: int|null, error?,
client_id, event_handler_id?}``; never a token.

Errors: 400 ``{"error": "BAD_REQUEST", ...}`` for bad input, 404 ``NOT_FOUND`` for an unknown portal or route.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .rest import Reply, json_reply

if TYPE_CHECKING:
    from .core import Emulator


def _bad(description: str) -> Reply:
    return json_reply(400, {"error": "BAD_REQUEST", "error_description": description})


def _not_found(description: str) -> Reply:
    return json_reply(404, {"error": "NOT_FOUND", "error_description": description})


def handle_admin(emu: Emulator, http_method: str, path: str, query: str, body: bytes) -> Reply:
    try:
        data: Any = json.loads(body) if body.strip() else {}
    except ValueError:
        return _bad("body must be JSON")
    if not isinstance(data, dict):
        return _bad("body must be a JSON object")
    parts = [p for p in path.split("/") if p][1:]  # drop "_emulator"
    try:
        return _route(emu, http_method, parts, data)
    except KeyError as exc:
        return _not_found(str(exc.args[0]) if exc.args else "not found")
    except (ValueError, TypeError) as exc:
        return _bad(str(exc))


def _only(data: dict[str, Any], *allowed: str) -> dict[str, Any]:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; expected some of {list(allowed)}")
    return data


def _route(emu: Emulator, method: str, parts: list[str], data: dict[str, Any]) -> Reply:
    if parts == ["apps"]:
        if method == "GET":
            return json_reply(200, emu.apps())
        if method == "POST":
            _only(data, "client_id", "client_secret", "install_handler", "status")
            return json_reply(
                200,
                emu.register_app(
                    data.get("client_id"),
                    data.get("client_secret"),
                    install_handler=data.get("install_handler", False),
                    status=data.get("status"),
                ),
            )
    if parts == ["health"]:
        return json_reply(200, {"ok": True, "url": emu.url})
    if parts == ["state"] and method == "GET":
        return json_reply(200, emu.state())
    if parts == ["reset"] and method == "POST":
        emu.reset(keep_portals=bool(data.get("keep_portals", False)))
        return json_reply(200, {"ok": True})
    if parts == ["portals"]:
        if method == "GET":
            return json_reply(200, emu.portals())
        if method == "POST":
            opts = dict(data)
            domain = opts.pop("domain", None)
            if not isinstance(domain, str):
                return _bad("domain is required")
            return json_reply(201, emu.add_portal(domain, **opts).to_dict())
    if len(parts) == 3 and parts[0] == "portals":
        return _portal_route(emu, method, parts[1], parts[2], data)
    return _not_found(f"no admin route {method} /_emulator/{'/'.join(parts)}")


def _portal_route(emu: Emulator, method: str, domain: str, action: str, data: dict[str, Any]) -> Reply:
    if action == "state" and method == "GET":
        return json_reply(200, emu.state(domain))
    if method != "POST":
        return _not_found(f"no admin route {method} .../{action}")
    if action == "messages":
        ids = data.get("message_ids")
        if not isinstance(data.get("code"), str) or not isinstance(ids, list):
            return _bad("code (string) and message_ids (list) are required")
        n = emu.seed_messages(
            domain, data["code"], ids, client_id=data.get("client_id"), author_id=data.get("author_id")
        )
        return json_reply(200, {"ok": True, "created": n})
    if action == "senders":
        if not isinstance(data.get("code"), str):
            return _bad("code (string) is required")
        extra = {k: data[k] for k in ("client_id", "handler", "name", "type") if k in data}
        emu.add_sender(domain, data["code"], **extra)
        return json_reply(200, {"ok": True})
    if action == "connectors":
        if not isinstance(data.get("connector"), str):
            return _bad("connector (string) is required")
        emu.add_connector(domain, data["connector"], data.get("line"))
        return json_reply(200, {"ok": True})
    if action == "expire":
        return json_reply(200, {"ok": True, "expired": emu.expire_tokens(domain)})
    if action == "faults":
        return json_reply(200, emu.set_faults(domain, **data))
    if action == "options":
        return json_reply(200, emu.set_options(domain, **data))
    if action == "uninstall":
        result = emu.uninstall(
            domain,
            client_id=data.get("client_id"),
            oauth_error=data.get("oauth_error", "NOT_INSTALLED"),
            clean=bool(data.get("clean", 0)),
        )
        return json_reply(200, result.to_dict())
    if action == "install":
        _only(data, "client_id", "version", "user_id", "language_id", "status", "new_application_token")
        return json_reply(200, emu.install_app(domain, **data).to_dict())
    if action == "update":
        _only(data, "client_id", "version", "user_id", "unbind_events")
        return json_reply(200, emu.update_app(domain, **data).to_dict())
    if action == "move":
        _only(data, "new_domain", "stale_endpoints")
        if not isinstance(data.get("new_domain"), str):
            return _bad("new_domain (string) is required")
        return json_reply(
            200, emu.move_portal(domain, data["new_domain"], stale_endpoints=bool(data.get("stale_endpoints")))
        )
    if action == "tokens":
        info = emu.issue_tokens(
            domain,
            client_id=data.get("client_id"),
            client_secret=data.get("client_secret"),
            user_id=data.get("user_id"),
        )
        return json_reply(200, info.to_dict())
    return _not_found(f"no admin route POST .../{action}")
