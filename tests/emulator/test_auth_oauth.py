"""Authentication on the portal and the OAuth server's single-use rotating refresh tokens."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from emulator import Emulator, PortalInfo

from .conftest import DOMAIN, FakeClock, call, error_of

UNREAD = "im.dialog.unread"
OK = {"DIALOG_ID": "chat1", "MESSAGE_ID": 1}


def refresh(client: httpx.Client, info: PortalInfo, token: str | None = None, **override: Any) -> httpx.Response:
    params = {
        "grant_type": "refresh_token",
        "client_id": info.client_id,
        "client_secret": info.client_secret,
        "refresh_token": token or info.refresh_token,
    }
    params.update(override)
    return client.get(info.oauth_url, params={k: v for k, v in params.items() if v is not None})


def test_missing_and_unknown_tokens(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    r = client.post(portal.client_endpoint + UNREAD, json=OK)
    assert r.status_code == 401
    assert r.json() == {"error": "NO_AUTH_FOUND", "error_description": "Wrong authorization data"}
    assert error_of(call(client, portal, UNREAD, OK, token="bogus")) == (401, "NO_AUTH_FOUND")
    other = emu.add_portal("other.bitrix24.test")
    assert error_of(call(client, portal, UNREAD, OK, token=other.access_token)) == (401, "NO_AUTH_FOUND")
    bad_hook = portal.webhook_url.rstrip("/").rsplit("/", 1)[0] + "/wrongcode/"
    assert error_of(client.post(bad_hook + UNREAD, json=OK)) == (401, "NO_AUTH_FOUND")


def test_token_sources_and_precedence(portal: PortalInfo, client: httpx.Client) -> None:
    url = portal.client_endpoint + UNREAD
    bearer = {"Authorization": f"Bearer {portal.access_token}"}
    assert client.post(url, json={**OK, "auth": "bogus"}, headers=bearer).status_code == 200  # header first
    assert client.post(url, params={"auth": portal.access_token}, json={**OK, "auth": "bogus"}).status_code == 200
    assert client.post(url, json={**OK, "access_token": portal.access_token}).status_code == 200
    assert client.post(url, params={"auth": "bogus"}, json={**OK, "auth": portal.access_token}).status_code == 401


def test_access_token_expires_on_the_emulator_clock(
    emu: Emulator, clock: FakeClock, portal: PortalInfo, client: httpx.Client
) -> None:
    clock.advance(3599)
    assert call(client, portal, UNREAD, OK).status_code == 200
    clock.advance(1)
    r = call(client, portal, UNREAD, OK)
    assert r.status_code == 401
    assert r.json() == {
        "error": "expired_token",
        "error_description": "The access token provided has expired",
    }
    assert hook_ok(client, portal)  # webhooks do not expire


def hook_ok(client: httpx.Client, info: PortalInfo) -> bool:
    return client.post(info.webhook_url + UNREAD, json=OK).status_code == 200


def test_expire_tokens_now(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    assert emu.expire_tokens(DOMAIN) == 1
    assert error_of(call(client, portal, UNREAD, OK)) == (401, "expired_token")
    new = refresh(client, portal).json()
    assert call(client, portal, UNREAD, OK, token=new["access_token"]).status_code == 200


def test_refresh_rotates_and_is_single_use(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    r = refresh(client, portal)
    assert r.status_code == 200
    new = r.json()
    assert set(new) == {
        "access_token",
        "refresh_token",
        "expires",
        "expires_in",
        "client_endpoint",
        "server_endpoint",
        "domain",
        "member_id",
        "scope",
        "status",
        "user_id",
    }
    assert new["expires_in"] == 3600 and new["status"] == "L" and new["member_id"] == portal.member_id
    assert new["client_endpoint"] == portal.client_endpoint and new["domain"] == emu.url.split("://")[1]
    assert new["expires"] >= int(time.time()) + 3590
    assert new["access_token"] != portal.access_token and new["refresh_token"] != portal.refresh_token
    # the old access token died with its refresh token (the error it gets is a guess: see the next test)
    assert error_of(call(client, portal, UNREAD, OK)) == (401, "invalid_token")
    assert call(client, portal, UNREAD, OK, token=new["access_token"]).status_code == 200
    # second use of the same refresh token
    r = refresh(client, portal)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # the chain goes on from the new refresh token, via POST form too
    r = client.post(
        portal.oauth_url,
        data={
            "grant_type": "refresh_token",
            "client_id": portal.client_id,
            "client_secret": portal.client_secret,
            "refresh_token": new["refresh_token"],
        },
    )
    assert r.status_code == 200
    counters = emu.state(DOMAIN)["counters"]
    assert counters["refreshes"] == 2 and counters["invalid_grants"] == 1


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, (401, "invalid_token", "Unable to get application by token")),  # the default (a guess)
        ("invalid_token", (401, "invalid_token", "Unable to get application by token")),
        ("NO_AUTH_FOUND", (401, "NO_AUTH_FOUND", "Wrong authorization data")),
        ("expired_token", (401, "expired_token", "The access token provided has expired")),
    ],
)
def test_a_superseded_access_token(
    emu: Emulator, portal: PortalInfo, client: httpx.Client, choice: str | None, expected: tuple[int, str, str]
) -> None:
    """The facts say a refresh makes the old access token invalid (§2.1, old docs) but not which error it then
    gets: ``superseded_token_error`` picks one, settable through the admin API."""
    if choice is not None:
        r = client.post(f"{emu.url}/_emulator/portals/{DOMAIN}/options", json={"superseded_token_error": choice})
        assert r.status_code == 200 and r.json()["superseded_token_error"] == choice
    assert emu.state(DOMAIN)["options"]["superseded_token_error"] == (choice or "invalid_token")
    assert call(client, portal, UNREAD, OK).status_code == 200  # the old token worked until the refresh
    new = refresh(client, portal).json()
    r = call(client, portal, UNREAD, OK)
    assert (r.status_code, r.json()["error"], r.json()["error_description"]) == expected
    assert call(client, portal, UNREAD, OK, token=new["access_token"]).status_code == 200
    assert emu.state(DOMAIN)["counters"]["by_error_code"][expected[1]] == 1


def test_a_superseded_token_of_an_uninstalled_app(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    """The OAuth server's verdict on the token comes before the portal's own checks (``auth.php``, ``check``);
    an expired_token choice keeps the portal's order (APPLICATION_NOT_FOUND first)."""
    refresh(client, portal)
    emu.uninstall(DOMAIN)
    assert error_of(call(client, portal, UNREAD, OK)) == (401, "invalid_token")
    emu.set_options(DOMAIN, superseded_token_error="expired_token")
    assert error_of(call(client, portal, UNREAD, OK)) == (401, "APPLICATION_NOT_FOUND")


def test_superseded_token_error_is_checked(emu: Emulator, portal: PortalInfo) -> None:
    with pytest.raises(ValueError, match="superseded_token_error"):
        emu.set_options(DOMAIN, superseded_token_error="nope")


def test_time_expiry_is_still_expired_token(
    emu: Emulator, clock: FakeClock, portal: PortalInfo, client: httpx.Client
) -> None:
    """A token that ran out its hour without being superseded still gets expired_token, whatever the choice."""
    emu.set_options(DOMAIN, superseded_token_error="NO_AUTH_FOUND")
    clock.advance(3600)
    assert error_of(call(client, portal, UNREAD, OK)) == (401, "expired_token")


def test_concurrent_refresh_exactly_one_wins(emu: Emulator, portal: PortalInfo) -> None:
    results: list[int] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        with httpx.Client(timeout=5) as c:
            barrier.wait()
            results.append(refresh(c, portal).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [400] * 7
    counters = emu.state(DOMAIN)["counters"]
    assert counters["refreshes"] == 1 and counters["invalid_grants"] == 7


@pytest.mark.parametrize(
    ("override", "status", "error"),
    [
        ({"client_secret": "wrong"}, 400, "invalid_client"),
        ({"client_id": "unknown.app"}, 200, "wrong_client"),
        ({"client_id": "unknown.app", "client_secret": "wrong"}, 400, "invalid_client"),
        ({"grant_type": None}, 400, "invalid_request"),
        ({"grant_type": "authorization_code"}, 400, "invalid_request"),
        ({"refresh_token": "unknown-token"}, 400, "invalid_grant"),
    ],
)
def test_oauth_errors(portal: PortalInfo, client: httpx.Client, override: dict, status: int, error: str) -> None:
    r = refresh(client, portal, **override)
    assert r.status_code == status
    assert r.json()["error"] == error
    assert refresh(client, portal).status_code == 200  # the token was not consumed by the failed attempt


def test_refresh_token_of_another_app(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    other = emu.issue_tokens(DOMAIN, client_id="second.app", client_secret="s2")
    r = refresh(client, portal, token=other.refresh_token)  # first app's credentials, second app's token
    assert error_of(r) == (400, "invalid_grant")


def test_uninstalled_app(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    emu.uninstall(DOMAIN)
    assert error_of(call(client, portal, UNREAD, OK)) == (401, "APPLICATION_NOT_FOUND")
    assert error_of(refresh(client, portal)) == (401, "NOT_INSTALLED")
    emu.uninstall(DOMAIN, oauth_error="invalid_client")
    assert error_of(refresh(client, portal)) == (400, "invalid_client")


def test_one_app_on_many_portals(emu: Emulator, client: httpx.Client) -> None:
    a = emu.add_portal("a.bitrix24.test")
    b = emu.add_portal("b.bitrix24.test")
    assert a.client_id == b.client_id and a.member_id != b.member_id
    assert error_of(call(client, b, UNREAD, OK, token=a.access_token)) == (401, "NO_AUTH_FOUND")
    assert refresh(client, a).json()["client_endpoint"] == a.client_endpoint
    assert refresh(client, b).json()["client_endpoint"] == b.client_endpoint


def test_token_ttl_option(emu: Emulator, clock: FakeClock, client: httpx.Client) -> None:
    info = emu.add_portal("short.bitrix24.test", token_ttl=60)
    assert info.expires_in == 60
    assert refresh(client, info).json()["expires_in"] == 60


def test_oauth_down_and_delay(emu: Emulator, portal: PortalInfo, client: httpx.Client) -> None:
    emu.set_faults(DOMAIN, oauth_down=True)
    r = refresh(client, portal)
    assert r.status_code == 503 and "text/html" in r.headers["content-type"]
    emu.set_faults(DOMAIN, oauth_down="drop")
    with pytest.raises(httpx.TransportError):
        refresh(client, portal)
    emu.set_faults(DOMAIN, oauth_down=False, oauth_delay=0.3)
    started = time.monotonic()
    assert refresh(client, portal).status_code == 200  # the token survived the outage
    assert time.monotonic() - started >= 0.3
