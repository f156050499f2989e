"""Outbound targets are Bitrix24's: a portal endpoint (install, redirect, `b24q portal add`) is https on
port 443, on a host of Bitrix24's cloud zones (or one the operator added), with only public addresses, and
the REST client connects only to public addresses whatever a name resolves to by then (DNS rebinding).

Names resolve through a table the test passes in (no DNS); `localhost` goes through the real resolver.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest
import redis

from edges.http.app import create_app
from tests.test_http_intake import Server
from workers.bitrix.addresses import is_public, resolve
from workers.bitrix.client import Credentials, RestClient
from workers.errors import ConfigError, EndpointRefused, TransportError
from workers.portals.endpoints import EndpointPolicy
from workers.portals.registry import PortalRegistry
from workers.runtime import Runtime
from workers.settings import BITRIX24_CLOUD_ZONES, Settings

PUBLIC = "88.212.200.10"  # any global unicast address
NAMES: dict[str, list[str]] = {
    **{f"acme.bitrix24.{zone}": [PUBLIC] for zone in BITRIX24_CLOUD_ZONES},
    "acme2.bitrix24.de": ["2a01:4f8::10"],
    "crm.example.com": [PUBLIC],
    "rebind.bitrix24.com": [PUBLIC, "10.0.0.7"],  # one private address among public ones is enough
    "inner.bitrix24.com": ["::ffff:192.168.0.1"],
    "meta.bitrix24.com": ["169.254.169.254"],
}


def table(names: dict[str, list[str]]) -> Callable[[str], Sequence[str]]:
    def lookup(host: str) -> Sequence[str]:
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "no such name")
        return names[host]

    return lookup


def policy(**settings: Any) -> EndpointPolicy:
    """The policy of `Settings` as shipped (with these overrides), resolving through `NAMES`."""
    return EndpointPolicy.of(Settings(**settings), table(NAMES))


@pytest.mark.parametrize(
    "url",
    [
        "https://x.bitrix24.evil.com/rest/",  # the old default *.bitrix24.* let these through
        "https://x.bitrix24.com.evil.com/rest/",
        "https://bitrix24.de.evil.example.com/rest/",
        "https://a.b.bitrix24.com/rest/",  # a cloud portal's name is one label
        "https://bitrix24.com/rest/",
        "https://acme.bitrix24.co/rest/",  # not a zone of Bitrix24's cloud
        "https://acme.bitrix24.com./rest/",
        "https://acme.bitrix24.com:8443/rest/",  # https on 443 only
        "https://acme.bitrix24.com:80/rest/",
        "http://acme.bitrix24.com/rest/",
        "https://user@acme.bitrix24.com/rest/",  # nothing but a host and a port
        "https://acme.bitrix24.com@evil.example.com/rest/",
        "https://acme.bitrix24.com%2eevil.com/rest/",
        "https://acme.bitrix24.com:99999/rest/",
    ],
)
def test_endpoints_off_bitrix24s_cloud_or_its_port_are_refused(url: str) -> None:
    with pytest.raises(EndpointRefused):
        policy().check(url)


def test_what_is_no_url_at_all_is_a_config_error_not_a_refusal() -> None:
    for url in ("ftp://acme.bitrix24.com/rest/", "acme.bitrix24.com/rest/", "https:///rest/"):
        with pytest.raises(ConfigError) as error:
            policy().check(url)
        assert not isinstance(error.value, EndpointRefused)


PRIVATE = [
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "[::1]",
    "[::]",
    "[fe80::1]",
    "[fec0::1]",
    "[fc00::1]",
    "[fd12:3456::1]",
    "[ff02::1]",
    "[::ffff:10.0.0.1]",
    "[::ffff:127.0.0.1]",
    "[2002:a00:1::1]",  # 6to4 of 10.0.0.1
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
]


@pytest.mark.parametrize("host", PRIVATE)
def test_an_ip_literal_of_a_non_public_range_is_refused_even_when_its_host_is_allowed(host: str) -> None:
    allowed = policy(portal_hosts=host.strip("[]"))
    with pytest.raises(EndpointRefused, match="non-public address"):
        allowed.check(f"https://{host}/rest/")
    assert not is_public(host.strip("[]"))


@pytest.mark.parametrize("host", ["rebind.bitrix24.com", "inner.bitrix24.com", "meta.bitrix24.com"])
def test_a_cloud_name_that_resolves_to_a_private_address_is_refused(host: str) -> None:
    with pytest.raises(EndpointRefused, match="non-public address"):
        policy().check(f"https://{host}/rest/")


def test_a_name_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(EndpointRefused, match="does not resolve"):
        policy().check("https://gone.bitrix24.com/rest/")


def test_localhost_through_the_real_resolver_is_refused() -> None:
    assert "127.0.0.1" in resolve("localhost") or "::1" in resolve("localhost")
    with pytest.raises(EndpointRefused, match="non-public address"):
        EndpointPolicy.of(Settings(portal_hosts="localhost")).check("https://localhost/rest/")


@pytest.mark.parametrize("zone", BITRIX24_CLOUD_ZONES)
def test_every_cloud_zone_is_accepted(zone: str) -> None:
    assert policy().check(f"https://acme.bitrix24.{zone}/rest") == f"https://acme.bitrix24.{zone}/rest/"


def test_real_bitrix24_endpoints_are_accepted_as_bitrix24_sends_them() -> None:
    ok = policy()
    assert ok.check("https://acme.bitrix24.de:443/rest/") == "https://acme.bitrix24.de:443/rest/"
    assert ok.check("https://ACME.Bitrix24.COM/rest/")
    assert ok.check("https://acme2.bitrix24.de/rest/")  # an IPv6 public address
    # a self-hosted portal: the operator adds its host
    assert policy(portal_hosts="crm.example.com").check("https://crm.example.com/rest/")
    with pytest.raises(EndpointRefused):
        ok.check("https://crm.example.com/rest/")


def test_the_allow_switches_let_the_emulator_through_and_nothing_more() -> None:
    emulator = "http://127.0.0.1:40123/acme.bitrix24.test/rest/"
    loopback = policy(portal_hosts="127.0.0.1,localhost,10.0.0.1", allow_private_portals=True)
    assert loopback.check(emulator) == emulator
    assert loopback.check("http://localhost:40123/rest/")
    assert loopback.check("https://10.0.0.1/rest/")  # a self-hosted portal on a LAN
    with pytest.raises(EndpointRefused, match="https on port 443"):
        loopback.check("http://10.0.0.1:8080/rest/")  # http and other ports only on loopback
    with pytest.raises(EndpointRefused, match="B24Q_PORTAL_HOSTS"):
        loopback.check("http://127.0.0.2:40123/rest/")  # the hosts still apply
    insecure = policy(portal_hosts="127.0.0.1,*.bitrix24.de", allow_insecure_http=True)
    with pytest.raises(EndpointRefused, match="non-public address"):
        insecure.check(emulator)  # http alone does not open loopback
    assert insecure.check("http://acme.bitrix24.de:8080/rest/")


# --- where endpoints are stored: install, redirect (move), `b24q portal add` --------------------------------


@pytest.fixture
def registry(rclient: redis.Redis, settings: Settings) -> PortalRegistry:
    """A registry with the shipped rules (no private portals), resolving through `NAMES`."""
    return PortalRegistry(rclient, settings.model_copy(update={"allow_private_portals": False}), table(NAMES))


def test_a_redirect_never_moves_a_portal_off_bitrix24s_https(registry: PortalRegistry) -> None:
    old = "https://acme.bitrix24.de/rest/"
    registry.add_oauth("acme", old, "a", "r", 4102444800.0)
    for target in (
        "https://acme.bitrix24.de:8443/rest/",
        "http://acme.bitrix24.de/rest/",
        "https://acme.bitrix24.de.evil.com/rest/",
        "https://169.254.169.254/rest/",
        "https://rebind.bitrix24.com/rest/",
    ):
        assert not registry.move("acme", old, target), target
    NAMES_NOW = {**NAMES, "acme.bitrix24.de": ["10.1.2.3"]}  # its own host, rebound to the LAN
    rebound = PortalRegistry(registry._client, registry._settings, table(NAMES_NOW))
    assert not rebound.move("acme", old, "https://acme.bitrix24.de/rest/v2/")
    assert registry.move("acme", old, "https://acme2.bitrix24.de/rest/")
    assert (registry.get("acme") or pytest.fail()).endpoint == "https://acme2.bitrix24.de/rest/"


def test_portal_add_takes_the_operators_host_but_not_a_private_address_or_http(registry: PortalRegistry) -> None:
    assert registry.add_oauth("crm", "https://crm.example.com/rest/", "a", "r", 4102444800.0).kind == "oauth"
    for bad in ("https://10.0.0.1/rest/", "https://[::ffff:127.0.0.1]/rest/", "https://localhost/rest/"):
        with pytest.raises(EndpointRefused):
            registry.add_oauth("bad", bad, "a", "r", 4102444800.0)
    with pytest.raises(EndpointRefused):
        registry.add_webhook("hook", "http://acme.bitrix24.de/rest/1/code/")
    with pytest.raises(EndpointRefused):
        registry.add_webhook("hook", "https://192.168.0.10/rest/1/code/")
    assert registry.keys() == ["crm"]


def test_an_installs_auth_block_cannot_register_an_off_cloud_host(registry: PortalRegistry) -> None:
    block = {"access_token": "a", "refresh_token": "r", "expires_in": 3600, "member_id": "m1"}
    with pytest.raises(EndpointRefused):
        registry.store_auth("m1", {**block, "client_endpoint": "https://x.bitrix24.evil.com/rest/"})
    assert registry.store_auth("m1", {**block, "client_endpoint": "https://acme.bitrix24.com/rest/"}).key == "m1"


# --- through the real HTTP route --------------------------------------------------------------------------


@pytest.fixture
def recorded() -> list[httpx.Request]:
    return []


@pytest.fixture
def shipped(
    settings: Settings, rclient: redis.Redis, recorded: list[httpx.Request]
) -> Iterator[tuple[Runtime, Server]]:
    """The HTTP app with the shipped endpoint rules; its REST client records what it would send."""

    def portal(request: httpx.Request) -> httpx.Response:
        recorded.append(request)
        return httpx.Response(200, json={"result": {"LICENSE": "en_basic"}})

    update: dict[str, Any] = {"allow_private_portals": False, "portal_hosts": f"{Settings().portal_hosts},10.0.0.1"}
    rt = Runtime(settings.model_copy(update=update), rclient, transport=httpx.MockTransport(portal))
    server = Server(create_app(lambda: rt))
    yield rt, server
    server.stop()
    rt.close()


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://x.bitrix24.evil.com/rest/",
        "https://x.bitrix24.com.evil.com/rest/",
        "https://acme.bitrix24.com:8443/rest/",
        "http://acme.bitrix24.com/rest/",
        "https://10.0.0.1/rest/",  # an allowed host, a private address
        "https://[::1]/rest/",
    ],
)
def test_an_install_naming_a_refused_endpoint_is_403_and_calls_nobody(
    shipped: tuple[Runtime, Server], recorded: list[httpx.Request], endpoint: str
) -> None:
    rt, server = shipped
    form = {
        "event": "ONAPPINSTALL",
        "auth[access_token]": "forged-access",
        "auth[refresh_token]": "forged-refresh",
        "auth[expires_in]": "3600",
        "auth[member_id]": "m-forged",
        "auth[application_token]": "forged-app-token",
        "auth[client_endpoint]": endpoint,
    }
    answer = httpx.post(f"{server.url}/b24/install", data=form, timeout=10)
    assert answer.status_code == 403, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["status"] == 403
    assert recorded == []  # no app.info, no request at all
    assert rt.registry.keys() == []


# --- the REST client: the address it connects to ------------------------------------------------------------


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A loopback socket that accepts connections into its backlog (non-blocking accept tells if one came);
    no proxy from the environment (through one, the client leaves the choice of address to it)."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_public_only_client_never_connects_to_loopback(listener: socket.socket, host: str) -> None:
    port = listener.getsockname()[1]
    creds = Credentials(f"http://{host}:{port}/acme/rest/", "token")
    guarded = RestClient(connect_timeout=1.0, read_timeout=0.5, public_only=True)
    with pytest.raises(TransportError) as refused:
        guarded.call(creds, "app.info", {})
    guarded.close()
    assert refused.value.code == "NETWORK"
    assert not connected(listener)
    # the same call without the guard does reach the socket (and times out waiting for an answer)
    plain = RestClient(connect_timeout=1.0, read_timeout=0.5)
    with pytest.raises(TransportError):
        plain.call(creds, "app.info", {})
    plain.close()
    assert connected(listener)


def test_the_runtime_guards_its_client_unless_private_portals_are_allowed(
    settings: Settings, rclient: redis.Redis, listener: socket.socket
) -> None:
    creds = Credentials(f"http://127.0.0.1:{listener.getsockname()[1]}/acme/rest/", "token")
    shipped = Runtime(settings.model_copy(update={"allow_private_portals": False, "request_timeout": 0.5}), rclient)
    with pytest.raises(TransportError) as refused:
        shipped.client.call(creds, "app.info", {})
    shipped.close()
    assert refused.value.code == "NETWORK" and not connected(listener)
