"""The application lifecycle (facts §7): app registration, install / update / uninstall events as the app's
handler receives them, event.bind / event.unbind / event.get, app.info, and a portal's domain move."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulator import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Emulator, PortalInfo, build_query

from .conftest import DOMAIN, SENDER, Received, Receiver, call, error_of, hook

ROOT = Path(__file__).resolve().parents[2]
FORM = "application/x-www-form-urlencoded"
UNREAD = "im.dialog.unread"
OK = {"DIALOG_ID": "chat1", "MESSAGE_ID": 1}
FULL_AUTH = [
    "access_token",
    "expires",
    "expires_in",
    "scope",
    "domain",
    "server_endpoint",
    "status",
    "client_endpoint",
    "member_id",
    "user_id",
    "refresh_token",
    "application_token",
]
APP_INFO_KEYS = [
    "ID",
    "CODE",
    "VERSION",
    "STATUS",
    "INSTALLED",
    "PAYMENT_EXPIRED",
    "DAYS",
    "LANGUAGE_ID",
    "LICENSE",
    "LICENSE_TYPE",
    "LICENSE_FAMILY",
]


def admin(client: httpx.Client, emu: Emulator, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return client.post(f"{emu.url}/_emulator/{path}", json=body or {})


def install(client: httpx.Client, emu: Emulator, body: dict[str, Any] | None = None) -> dict[str, Any]:
    r = admin(client, emu, f"portals/{DOMAIN}/install", body)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def info_of(data: dict[str, Any]) -> PortalInfo:
    return PortalInfo(**{k: data[k] for k in PortalInfo.__dataclass_fields__})


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- registration and ONAPPINSTALL ------------------------------------------------------------------------


def test_apps_admin_route(emu: Emulator, client: httpx.Client, receiver: Receiver) -> None:
    assert client.get(f"{emu.url}/_emulator/apps").json() == [
        {"client_id": DEFAULT_CLIENT_ID, "id": 1, "code": DEFAULT_CLIENT_ID, "install_handler": None, "status": "L"}
    ]
    r = admin(client, emu, "apps", {"install_handler": f"{receiver.url}/install"})
    assert r.status_code == 200 and r.json()["install_handler"] == f"{receiver.url}/install"
    new = {"client_id": "app.5f1c", "client_secret": "s3cr3t", "install_handler": f"{receiver.url}/other"}
    assert admin(client, emu, "apps", new).json() == {
        "client_id": "app.5f1c",
        "id": 2,
        "code": "app.5f1c",
        "install_handler": f"{receiver.url}/other",
        "status": "F",  # not a local app
    }
    assert (
        admin(client, emu, "apps", {"client_id": "app.5f1c", "install_handler": None}).json()["install_handler"] is None
    )
    listed = client.get(f"{emu.url}/_emulator/apps").text
    assert "s3cr3t" not in listed and DEFAULT_CLIENT_SECRET not in listed
    assert admin(client, emu, "apps", {"client_id": "app.new"}).status_code == 400  # a new app needs its secret
    assert admin(client, emu, "apps", {"client_id": "app.5f1c", "client_secret": "other"}).status_code == 400
    assert admin(client, emu, "apps", {"install_handler": "ftp://x.test/"}).status_code == 400
    assert admin(client, emu, "apps", {"nonsense": 1}).status_code == 400


def test_install_posts_onappinstall_as_bitrix24_does(
    emu: Emulator, portal: PortalInfo, client: httpx.Client, receiver: Receiver
) -> None:
    emu.register_app(install_handler=f"{receiver.url}/install")
    seen: list[httpx.Response] = []

    def call_back(got: Received) -> None:  # a real install handler checks the token with app.info first
        with httpx.Client(timeout=5) as c:
            auth = got.form["auth"]
            seen.append(c.post(f"{auth['client_endpoint']}app.info", json={"auth": auth["access_token"]}))

    receiver.on_request = call_back
    data = install(client, emu, {"version": 3, "language_id": "de"})
    assert set(data) == {*PortalInfo.__dataclass_fields__, "application_token", "version", "handler", "handler_status"}
    assert data["handler"] == f"{receiver.url}/install" and data["handler_status"] == 200 and data["version"] == 3
    member_secret = f"{portal.member_id}|1|{DEFAULT_CLIENT_SECRET}"
    assert data["application_token"] == hashlib.md5(member_secret.encode()).hexdigest()  # facts §7.3

    [got] = receiver.wait_for(1)
    assert got.path == "/install" and got.content_type == FORM
    assert b"auth%5Baccess_token%5D=" in got.body  # http_build_query's encoding of auth[access_token]
    form = got.form
    assert list(form) == ["event", "data", "ts", "auth"]  # no event_handler_id for ONAPPINSTALL
    assert form["event"] == "ONAPPINSTALL" and form["ts"].isdigit()
    assert form["data"] == {"VERSION": "3", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "de"}
    assert list(form["auth"]) == FULL_AUTH
    assert form["auth"] == {
        "access_token": data["access_token"],
        "expires": str(data["expires"]),
        "expires_in": "3600",
        "scope": portal.scope,
        "domain": DOMAIN,
        "server_endpoint": f"{emu.url}/oauth/rest/",
        "status": "L",
        "client_endpoint": portal.client_endpoint,
        "member_id": portal.member_id,
        "user_id": "1",
        "refresh_token": data["refresh_token"],
        "application_token": data["application_token"],
    }

    # the handler called the portal back while the emulator waited for its answer
    assert [r.status_code for r in seen] == [200]
    result = seen[0].json()["result"]
    assert list(result) == APP_INFO_KEYS
    assert result == {
        "ID": 1,
        "CODE": DEFAULT_CLIENT_ID,
        "VERSION": 3,
        "STATUS": "L",
        "INSTALLED": True,
        "PAYMENT_EXPIRED": "N",
        "DAYS": None,
        "LANGUAGE_ID": "de",
        "LICENSE": "en_std",
        "LICENSE_TYPE": "std",
        "LICENSE_FAMILY": "std",
    }
    state = emu.state(DOMAIN)
    assert state["events_sent"] == [
        {"event": "ONAPPINSTALL", "handler": f"{receiver.url}/install", "status": 200, "client_id": DEFAULT_CLIENT_ID}
    ]
    assert data["access_token"] not in json.dumps(state["events_sent"])
    # callback mode: the install URL is the app's ONAPPINSTALL handler (facts §7.1b)
    handlers = call(client, info_of(data), "event.get").json()["result"]
    assert handlers == [{"event": "ONAPPINSTALL", "handler": f"{receiver.url}/install", "auth_type": "0", "offline": 0}]


def test_install_failures_are_recorded_once(emu: Emulator, portal: PortalInfo, receiver: Receiver) -> None:
    emu.register_app(install_handler=f"{receiver.url}/install")
    receiver.status = 500
    result = emu.install_app(DOMAIN)
    assert result.delivery is not None and result.delivery.status == 500
    assert result.to_dict()["handler_status"] == 500 and result.to_dict()["error"] == "HTTP 500"
    # the tokens were issued all the same
    with httpx.Client(timeout=5) as client:
        assert call(client, result.info, "app.info").status_code == 200
    emu.register_app(install_handler=f"http://127.0.0.1:{closed_port()}/install")
    refused = emu.install_app(DOMAIN).to_dict()
    assert refused["handler_status"] is None and "error" in refused
    assert [e["status"] for e in emu.state(DOMAIN)["events_sent"]] == [500, None]
    assert len(receiver.wait_for(1)) == 1  # no retry (facts §7.1)


def test_reinstall_keeps_the_application_token_unless_asked(emu: Emulator, portal: PortalInfo) -> None:
    first = emu.install_app(DOMAIN)
    assert first.delivery is None and first.to_dict()["handler_status"] is None  # no install handler registered
    again = emu.install_app(DOMAIN, version=2)
    assert again.application_token == first.application_token and again.version == 2
    renewed = emu.install_app(DOMAIN, new_application_token=True)
    assert renewed.application_token != first.application_token
    assert emu.state(DOMAIN)["installations"][0]["application_token"] == renewed.application_token
    with pytest.raises(ValueError):
        emu.install_app(DOMAIN, client_id="app.unknown")
    with pytest.raises(ValueError):
        emu.install_app(DOMAIN, version=0)


def test_emulator_and_cli_take_an_app_handler(receiver: Receiver) -> None:
    with Emulator(app_handler=f"{receiver.url}/in-process") as emu:
        emu.add_portal("a.bitrix24.test")
        assert emu.install_app("a.bitrix24.test").to_dict()["handler_status"] == 200
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "emulator", "--port", "0", "--portals", "1", "--app-handler", f"{receiver.url}/cli"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        domain = json.loads(proc.stdout.readline())["domain"]
        url = proc.stdout.readline().strip().split(" ", 1)[1]
        with httpx.Client(timeout=5) as client:
            r = client.post(f"{url}/_emulator/portals/{domain}/install", json={})
            assert r.status_code == 200 and r.json()["handler_status"] == 200
        assert [got.path for got in receiver.wait_for(2)] == ["/in-process", "/cli"]
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- event.bind / event.unbind / event.get ----------------------------------------------------------------


def test_event_bind_unbind_get(emu: Emulator, portal: PortalInfo, client: httpx.Client, receiver: Receiver) -> None:
    url = f"{receiver.url}/events"
    assert call(client, portal, "event.get").json()["result"] == []
    r = call(client, portal, "event.bind", {"event": "onImConnectorMessageAdd", "handler": url})
    assert r.status_code == 200 and r.json()["result"] is True
    r = call(client, portal, "event.bind", {"EVENT": "ONIMCONNECTORMESSAGEADD", "HANDLER": url})
    assert r.status_code == 400
    assert r.json() == {
        "error": "ERROR_CORE",
        "error_description": "Unable to set event handler: Handler already binded",
    }
    assert call(client, portal, "event.bind", {"event": "ONAPPUNINSTALL", "handler": url, "auth_type": 7}).json()[
        "result"
    ]
    assert call(client, portal, "event.bind", {"event": "ONAPPUPDATE", "event_type": "offline"}).status_code == 200
    assert call(client, portal, "event.get").json()["result"] == [
        {"event": "ONIMCONNECTORMESSAGEADD", "handler": url, "auth_type": "0", "offline": 0},
        {"event": "ONAPPUNINSTALL", "handler": url, "auth_type": "7", "offline": 0},
        {"event": "ONAPPUPDATE", "connector_id": "", "offline": 1},
    ]

    errors = [
        ({"event": "ONNOSUCHEVENT", "handler": url}, (400, "ERROR_EVENT_NOT_FOUND")),
        ({"event": "ONCRMLEADADD", "handler": url}, (400, "ERROR_EVENT_NOT_FOUND")),  # crm is not in the scope
        ({"handler": url}, (400, "ERROR_ARGUMENT")),
        ({"event": "ONAPPUPDATE"}, (400, "ERROR_ARGUMENT")),
        ({"event": "ONAPPUPDATE", "handler": url, "event_type": "sometimes"}, (400, "ERROR_ARGUMENT")),
        ({"event": "ONAPPUPDATE", "handler": "not a url"}, (400, "ERROR_WRONG_HANDLER_URL")),
        ({"event": "ONAPPUPDATE", "handler": "ftp://handler.example.com/x"}, (400, "ERROR_UNSUPPORTED_PROTOCOL")),
    ]
    for params, expected in errors:
        assert error_of(call(client, portal, "event.bind", params)) == expected, params
    assert call(client, portal, "event.bind", {"event": "ONAPPUPDATE"}).json()["argument"] == "HANDLER"
    assert error_of(hook(client, portal, "event.bind", {"event": "ONAPPUPDATE", "handler": url})) == (
        403,
        "WRONG_AUTH_TYPE",
    )
    assert error_of(hook(client, portal, "event.get")) == (403, "WRONG_AUTH_TYPE")

    r = call(client, portal, "event.unbind", {"event": "onappuninstall", "handler": url})
    assert r.json()["result"] == {"count": 1}  # an admin without auth_type removes every user's binding
    assert call(client, portal, "event.unbind", {"event": "ONAPPUNINSTALL", "handler": url}).json()["result"] == {
        "count": 0
    }
    assert call(client, portal, "event.unbind", {"event": "ONAPPUPDATE", "event_type": "offline"}).json()["result"] == {
        "count": 1
    }
    assert [h["event"] for h in emu.state(DOMAIN)["event_handlers"]] == ["ONIMCONNECTORMESSAGEADD"]


def test_event_methods_for_a_non_admin_and_in_batch(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    url = "https://handler.example.com/events"
    emu.set_options(DOMAIN, admin=False)
    r = call(client, portal, "event.bind", {"event": "ONAPPUPDATE", "event_type": "offline"})
    assert r.status_code == 403 and r.json() == {
        "error": "ACCESS_DENIED",
        "error_description": "Access denied! Offline events binding requires administrator access rights",
    }
    assert error_of(call(client, portal, "event.bind", {"event": "ONAPPUPDATE", "handler": url, "auth_type": 9})) == (
        403,
        "ACCESS_DENIED",
    )
    assert call(client, portal, "event.bind", {"event": "ONAPPUPDATE", "handler": url}).status_code == 200
    emu.set_options(DOMAIN, admin=True)
    assert (
        call(client, portal, "event.bind", {"event": "ONAPPUPDATE", "handler": url, "auth_type": 9}).status_code == 200
    )
    emu.set_options(DOMAIN, admin=False)
    # a non-admin binds for themself and sees only their own bindings
    assert call(client, portal, "event.get").json()["result"] == [
        {"event": "ONAPPUPDATE", "handler": url, "auth_type": "1", "offline": 0}
    ]
    emu.set_options(DOMAIN, admin=True)

    cmd = {
        "bind": "event.bind?" + build_query({"event": "ONAPPUNINSTALL", "handler": url}),
        "again": "event.bind?" + build_query({"event": "ONAPPUNINSTALL", "handler": url}),
        "list": "event.get",
        "info": "app.info",
    }
    body = call(client, portal, "batch", {"cmd": cmd}).json()["result"]
    assert body["result"]["bind"] is True and body["result"]["info"]["VERSION"] == 1
    assert body["result_error"]["again"]["error"] == "ERROR_CORE"
    assert [h["event"] for h in body["result"]["list"]] == ["ONAPPUPDATE", "ONAPPUPDATE", "ONAPPUNINSTALL"]


# --- app.info -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "license"),
    [
        ({"plan": "enterprise"}, {"LICENSE": "en_ent250", "LICENSE_TYPE": "ent250", "LICENSE_FAMILY": "ent"}),
        ({"language_id": "de"}, {"LICENSE": "de_std", "LICENSE_TYPE": "std", "LICENSE_FAMILY": "std"}),
        ({"license": "de_ent10000"}, {"LICENSE": "de_ent10000", "LICENSE_TYPE": "ent10000", "LICENSE_FAMILY": "ent"}),
        (
            {"license": "en_company2"},
            {"LICENSE": "en_company2", "LICENSE_TYPE": "company2", "LICENSE_FAMILY": "company"},
        ),
        ({"license": "en_pro100"}, {"LICENSE": "en_pro100", "LICENSE_TYPE": "pro100", "LICENSE_FAMILY": "pro"}),
        (
            {"license": "en_demo", "plan": "enterprise"},
            {"LICENSE": "en_demo", "LICENSE_PREVIOUS": "en_ent250", "LICENSE_TYPE": "demo", "LICENSE_FAMILY": "demo"},
        ),
        ({"license": "en_selfhosted"}, {"LICENSE": "en_selfhosted"}),
    ],
)
def test_app_info_license(
    emu: Emulator, client: httpx.Client, options: dict[str, Any], license: dict[str, str]
) -> None:
    info = emu.add_portal("lic.bitrix24.test", **options)
    result = call(client, info, "app.info").json()["result"]
    assert {k: v for k, v in result.items() if k.startswith("LICENSE")} == license
    assert list(result)[: APP_INFO_KEYS.index("LICENSE")] == APP_INFO_KEYS[: APP_INFO_KEYS.index("LICENSE")]
    assert hook(client, info, "app.info").json()["result"] == {
        "SCOPE": ["im", "imconnector", "imopenlines", "messageservice"],
        "LICENSE": license["LICENSE"],
    }


def test_license_option_is_checked(emu: Emulator) -> None:
    with pytest.raises(ValueError):
        emu.add_portal("bad.bitrix24.test", license="enterprise")


# --- ONAPPUNINSTALL ---------------------------------------------------------------------------------------


def test_uninstall_posts_onappuninstall_without_tokens(
    emu: Emulator, portal: PortalInfo, client: httpx.Client, receiver: Receiver
) -> None:
    first = install(client, emu)
    installed, token = info_of(first), first["application_token"]
    for event in ("ONAPPUNINSTALL", "ONAPPUPDATE"):
        assert call(client, installed, "event.bind", {"event": event, "handler": f"{receiver.url}/{event}"}).json()[
            "result"
        ]
    r = admin(client, emu, f"portals/{DOMAIN}/uninstall", {"clean": 1})
    assert r.status_code == 200
    reply = r.json()
    assert reply["ok"] is True and reply["handlers_removed"] == 2 and reply["senders_removed"] == [SENDER]
    [event] = reply["events"]
    assert event["event"] == "ONAPPUNINSTALL" and event["status"] == 200
    assert event["handler"] == f"{receiver.url}/ONAPPUNINSTALL" and isinstance(event["event_handler_id"], int)

    [got] = receiver.wait_for(1)
    assert got.content_type == FORM and b"access_token" not in got.body and b"refresh_token" not in got.body
    form = got.form
    assert list(form) == ["event", "event_handler_id", "data", "ts", "auth"]
    assert form["event"] == "ONAPPUNINSTALL" and form["event_handler_id"] == str(event["event_handler_id"])
    assert form["data"] == {"LANGUAGE_ID": "en", "CLEAN": "1"}
    assert form["auth"] == {
        "domain": DOMAIN,
        "server_endpoint": f"{emu.url}/oauth/rest/",
        "client_endpoint": portal.client_endpoint,
        "member_id": portal.member_id,
        "application_token": token,
    }

    state = emu.state(DOMAIN)
    assert state["event_handlers"] == [] and state["senders"] == []  # CleanApp
    assert state["events_sent"] == [dict(event)]
    assert error_of(call(client, installed, UNREAD, OK)) == (401, "APPLICATION_NOT_FOUND")
    refresh = {
        "grant_type": "refresh_token",
        "client_id": installed.client_id,
        "client_secret": installed.client_secret,
        "refresh_token": installed.refresh_token,
    }
    assert client.get(installed.oauth_url, params=refresh).json()["error"] == "NOT_INSTALLED"

    # installed again: a new chain works, the chain from before the uninstall stays dead
    again = info_of(install(client, emu))
    assert call(client, again, UNREAD, OK).status_code == 200
    assert call(client, installed, UNREAD, OK).status_code == 401
    assert client.get(installed.oauth_url, params=refresh).json()["error"] == "invalid_grant"


# --- ONAPPUPDATE ------------------------------------------------------------------------------------------


def test_update_removes_senders_and_renews_the_application_token(
    emu: Emulator, portal: PortalInfo, client: httpx.Client, receiver: Receiver
) -> None:
    first = install(client, emu, {"language_id": "de"})
    installed = info_of(first)
    assert call(client, installed, "messageservice.sender.list").json()["result"] == [SENDER]
    bound = {"event": "ONAPPUPDATE", "handler": f"{receiver.url}/update", "auth_type": 4}
    assert call(client, installed, "event.bind", bound).json()["result"] is True

    r = admin(client, emu, f"portals/{DOMAIN}/update", {})
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["version"] == 2 and reply["previous_version"] == 1
    assert reply["application_token"] != first["application_token"]
    assert reply["senders_removed"] == [SENDER] and reply["handlers_removed"] == 0
    [event] = reply["events"]
    assert event["event"] == "ONAPPUPDATE" and event["status"] == 200

    [got] = receiver.wait_for(1)
    form = got.form
    assert got.content_type == FORM
    assert list(form) == ["event", "event_handler_id", "data", "ts", "auth"]
    assert form["event"] == "ONAPPUPDATE" and form["event_handler_id"] == str(event["event_handler_id"])
    assert form["data"] == {"VERSION": "2", "PREVIOUS_VERSION": "1", "LANGUAGE_ID": "de"}
    auth = form["auth"]
    assert list(auth) == FULL_AUTH
    assert auth["application_token"] == reply["application_token"] and auth["user_id"] == "4"  # the bound user
    assert auth["domain"] == DOMAIN and auth["member_id"] == portal.member_id

    # the event's own tokens and the reply's both work; the senders are gone
    by_event = PortalInfo(**{**installed.to_dict(), "access_token": auth["access_token"]})
    app = call(client, by_event, "app.info").json()["result"]
    assert app["VERSION"] == 2 and app["LANGUAGE_ID"] == "de"
    assert call(client, info_of(reply), "messageservice.sender.list").json()["result"] == []
    assert emu.state(DOMAIN)["senders"] == []

    assert admin(client, emu, f"portals/{DOMAIN}/update", {"version": 7}).json()["previous_version"] == 2
    wiped = admin(client, emu, f"portals/{DOMAIN}/update", {"unbind_events": True}).json()
    assert wiped["version"] == 8 and wiped["handlers_removed"] == 1 and len(wiped["events"]) == 1
    assert admin(client, emu, f"portals/{DOMAIN}/update", {}).json()["events"] == []
    emu.uninstall(DOMAIN)
    assert admin(client, emu, f"portals/{DOMAIN}/update", {}).status_code == 400  # not installed
    assert admin(client, emu, f"portals/{DOMAIN}/update", {"version": "3"}).status_code == 400


# --- domain move ------------------------------------------------------------------------------------------


def test_move_redirects_the_old_domain(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    new = "renamed.bitrix24.test"
    r = admin(client, emu, f"portals/{DOMAIN}/move", {"new_domain": new})
    assert r.status_code == 200
    moved = r.json()
    assert moved["domain"] == new and moved["old_domain"] == DOMAIN and moved["member_id"] == portal.member_id
    assert moved["client_endpoint"] == f"{emu.url}/{new}/rest/"

    # OAuth REST: a 302 to the same method and query on the new domain, nothing applied
    r = client.post(f"{portal.client_endpoint}{UNREAD}.json?lang=de", json={**OK, "auth": portal.access_token})
    assert r.status_code == 302 and len(r.content) < 300
    assert r.headers["location"] == f"{emu.url}/{new}/rest/{UNREAD}.json?lang=de"
    # the client re-POSTs to Location with the same body (same token)
    assert client.post(r.headers["location"], json={**OK, "auth": portal.access_token}).status_code == 200
    # an incoming webhook too
    r = hook(client, portal, UNREAD, OK)
    assert r.status_code == 302
    assert r.headers["location"] == portal.webhook_url.replace(f"/{DOMAIN}/", f"/{new}/") + f"{UNREAD}.json"
    assert client.post(r.headers["location"], json=OK).status_code == 200

    state = emu.state(new)
    assert state["counters"]["redirects"] == 2 and state["moved_from"] == [DOMAIN]
    assert [u["message_ids"] for u in state["unread"]] == [[1, 1]]
    assert client.get(f"{emu.url}/_emulator/portals/{DOMAIN}/state").status_code == 404
    with pytest.raises(KeyError):
        emu.state(DOMAIN)

    # a refresh names the new domain; so does the next event
    refresh = {
        "grant_type": "refresh_token",
        "client_id": portal.client_id,
        "client_secret": portal.client_secret,
        "refresh_token": portal.refresh_token,
    }
    assert client.get(portal.oauth_url, params=refresh).json()["client_endpoint"] == f"{emu.url}/{new}/rest/"
    assert emu.install_app(new).info.client_endpoint == f"{emu.url}/{new}/rest/"

    # moved again: the first name redirects straight to the latest; a new portal may take a freed name
    emu.move_portal(new, "third.bitrix24.test")
    r = client.post(f"{portal.client_endpoint}{UNREAD}", json=OK)
    assert r.headers["location"] == f"{emu.url}/third.bitrix24.test/rest/{UNREAD}"
    emu.add_portal(DOMAIN)
    assert client.post(f"{portal.client_endpoint}{UNREAD}", json=OK).status_code == 401  # a portal again, no 302
    assert admin(client, emu, "portals/third.bitrix24.test/move", {"new_domain": DOMAIN}).status_code == 400
    assert admin(client, emu, "portals/third.bitrix24.test/move", {}).status_code == 400


def test_move_with_stale_endpoints(emu: Emulator, portal: PortalInfo, client: httpx.Client, receiver: Receiver) -> None:
    new = "renamed.bitrix24.test"
    emu.register_app(install_handler=f"{receiver.url}/install")
    assert emu.move_portal(DOMAIN, new, stale_endpoints=True)["announced_domain"] == DOMAIN
    emu.install_app(new)
    auth = receiver.wait_for(1)[0].form["auth"]
    assert auth["domain"] == DOMAIN and auth["client_endpoint"] == portal.client_endpoint
    # a client that trusts the announced endpoint gets redirected, and re-POSTs
    r = client.post(f"{auth['client_endpoint']}app.info", json={"auth": auth["access_token"]})
    assert r.status_code == 302
    assert client.post(r.headers["location"], json={"auth": auth["access_token"]}).json()["result"]["INSTALLED"]
