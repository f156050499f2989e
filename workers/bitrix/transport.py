"""The REST client's sockets: connect only to addresses `workers.bitrix.addresses` calls public.

The registry checks a portal's host when it stores it, but a name can resolve to another address by
the time a call connects (DNS rebinding). So the check is repeated where the socket is opened: the
network backend resolves the name itself, keeps the public addresses and connects to one of them by
address; TLS still verifies the certificate against the portal's name (httpcore passes the URL's
host as the server name, not the address connected to). httpx uses no proxy from the environment once
it is given a transport, so the REST client does not use this one when `HTTPS_PROXY` is set: the proxy
connects then, and only the check made when the endpoint was stored holds.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable

import httpcore
import httpx

from workers.bitrix.addresses import is_public


class PublicOnlyBackend(httpcore.SyncBackend):
    """httpcore's blocking sockets, refusing to connect to an address `allow` says no to."""

    def __init__(self, allow: Callable[[str], bool] = is_public) -> None:
        self._allow = allow

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            found = [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        allowed = [address for address in dict.fromkeys(found) if self._allow(address)]
        if not allowed:
            raise httpcore.ConnectError(f"{host} has no public address: not connecting")
        error: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in allowed:  # by address: no second lookup that could answer differently
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error


def pooled_transport(limits: httpx.Limits, public_only: bool) -> tuple[httpx.HTTPTransport, httpcore.ConnectionPool]:
    """httpx's transport (TLS verified, environment's CA settings) and the connection pool under it, which the
    REST client also sends on directly; over `PublicOnlyBackend` when `public_only`."""
    transport = httpx.HTTPTransport(limits=limits)
    # httpx takes no network backend: its pool is rebuilt with the same settings (and ours)
    pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=PublicOnlyBackend() if public_only else None,
    )
    transport._pool = pool
    return transport, pool
