"""Single-flight token refresh: one OAuth call for the pool, rotation stored, invalid_grant parks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from urllib.parse import parse_qs

import httpx
import pytest
import redis

from workers.bitrix.oauth import OAuthClient
from workers.errors import AuthLost, OAuthUnavailable
from workers.portals.registry import PortalRegistry
from workers.portals.tokens import TokenKeeper
from workers.settings import Settings


class FakeOAuth:
    """An OAuth server with single-use refresh tokens (like Bitrix24's)."""

    def __init__(self, delay: float = 0.2) -> None:
        self.valid = {"R0"}
        self.calls = 0
        self.invalid_grants = 0
        self.delay = delay
        self.lock = threading.Lock()
        self.down = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        q = {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}
        assert q["client_secret"] == "s3cr3t-client" and q["grant_type"] == "refresh_token"
        if self.down:
            return httpx.Response(503, text="<html>down</html>")
        time.sleep(self.delay)
        with self.lock:
            self.calls += 1
            token = q["refresh_token"]
            if token not in self.valid:
                self.invalid_grants += 1
                return httpx.Response(400, json={"error": "invalid_grant", "error_description": "Invalid grant"})
            self.valid.discard(token)
            n = self.calls
            self.valid.add(f"R{n}")
        return httpx.Response(
            200,
            json={
                "access_token": f"A{n}",
                "refresh_token": f"R{n}",
                "expires_in": 3600,
                "expires": int(time.time()) + 3600,
                "member_id": "m",
            },
        )


def make_keeper(
    rclient: redis.Redis, settings: Settings, fake: FakeOAuth, clock: Callable[[], float] = time.time
) -> tuple[TokenKeeper, PortalRegistry]:
    registry = PortalRegistry(rclient, settings)
    registry.add_oauth("acme", "https://acme.bitrix24.com/rest/", "A0", "R0", time.time() + 3600)
    oauth = OAuthClient(
        "https://oauth.example/oauth/token/", "app.test", "s3cr3t-client", 5.0, httpx.MockTransport(fake)
    )
    return TokenKeeper(rclient, registry, oauth, oauth_timeout=5.0, clock=clock), registry


def test_sixteen_concurrent_refreshes_make_one_oauth_call(rclient: redis.Redis, settings: Settings) -> None:
    fake = FakeOAuth()
    keeper, registry = make_keeper(rclient, settings, fake)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(keeper.refresh("acme", "A0").access_token)) for _ in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.calls == 1 and fake.invalid_grants == 0
    assert results == ["A1"] * 16
    portal = registry.get("acme")
    assert portal is not None and portal.refresh_token == "R1" and portal.state == "active"
    assert keeper.stats() == {"acme:refreshed": 1}


def test_a_stale_token_after_someone_refreshed_needs_no_call(rclient: redis.Redis, settings: Settings) -> None:
    fake = FakeOAuth(delay=0)
    keeper, _ = make_keeper(rclient, settings, fake)
    keeper.refresh("acme", "A0")
    assert keeper.refresh("acme", "A0").access_token == "A1"
    assert fake.calls == 1


def test_invalid_grant_marks_the_portal_for_reauth(rclient: redis.Redis, settings: Settings) -> None:
    fake = FakeOAuth(delay=0)
    fake.valid = set()
    keeper, registry = make_keeper(rclient, settings, fake)
    with pytest.raises(AuthLost):
        keeper.refresh("acme", "A0")
    portal = registry.get("acme")
    assert portal is not None and portal.state == "reauth" and "invalid_grant" in portal.reason
    with pytest.raises(AuthLost):  # no second call once re-authorisation is needed
        keeper.refresh("acme", "A0")
    assert fake.calls == 1


def test_oauth_down_is_transient_and_releases_the_lock(rclient: redis.Redis, settings: Settings) -> None:
    fake = FakeOAuth(delay=0)
    fake.down = True
    keeper, _ = make_keeper(rclient, settings, fake)
    with pytest.raises(OAuthUnavailable):
        keeper.refresh("acme", "A0")
    fake.down = False
    assert keeper.refresh("acme", "A0").access_token == "A1"


def test_a_dead_holders_lock_expires(rclient: redis.Redis, settings: Settings) -> None:
    fake = FakeOAuth(delay=0)
    keeper, _ = make_keeper(rclient, settings, fake)
    keeper._lock_ttl = 1.0
    rclient.set("b24q:lock:refresh:{acme}", "someone-dead", px=800)
    start = time.monotonic()
    assert keeper.refresh("acme", "A0").access_token == "A1"
    assert 0.5 < time.monotonic() - start < 3


def test_refresh_ahead_only_close_to_expiry(rclient: redis.Redis, settings: Settings) -> None:
    fake = FakeOAuth(delay=0)
    now = [time.time()]
    keeper, registry = make_keeper(rclient, settings, fake, clock=lambda: now[0])
    portal = registry.get("acme")
    assert portal is not None
    assert keeper.usable(portal).access_token == "A0" and fake.calls == 0
    now[0] = portal.expires - 30  # within refresh_ahead (60 s) of expiry
    assert keeper.usable(portal).access_token == "A1" and fake.calls == 1


def test_refresh_ahead_is_at_most_half_a_short_tokens_life(rclient: redis.Redis, settings: Settings) -> None:
    """Tokens that live 5 s with the default 60 s window: a refresh per token life, not one per call."""
    fake = FakeOAuth(delay=0)
    now = [time.time()]
    keeper, registry = make_keeper(rclient, settings, fake, clock=lambda: now[0])
    registry.add_oauth("acme", "https://acme.bitrix24.com/rest/", "A0", "R0", now[0] + 5)
    portal = registry.get("acme")
    assert portal is not None
    for _ in range(20):  # calls over the first 2 s of the token's life: no refresh
        assert keeper.usable(portal).access_token == "A0"
        now[0] += 0.1
    assert fake.calls == 0
    now[0] = portal.expires - 2  # in the second half of its life
    assert keeper.usable(portal).access_token == "A1" and fake.calls == 1
