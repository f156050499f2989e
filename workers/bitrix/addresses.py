"""Which network addresses a portal's tokens may be sent to: public unicast ones.

A portal's address comes from outside (an install, a redirect), so a forged one could point b24q at
loopback, the LAN or a cloud metadata service (169.254.169.254) and make it POST tokens there. Both the
registry (when it stores an endpoint) and the REST client (when it connects: a name may resolve to
another address later, DNS rebinding) ask `is_public`; `resolve` is the one bounded name lookup.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Sequence

#: A name lookup: host → the addresses it has now (raises OSError or TimeoutError when it cannot say).
Resolve = Callable[[str], Sequence[str]]

#: NAT64's well-known prefix (RFC 6052): the last 32 bits are the IPv4 address reached.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

#: Lookups in flight at once: getaddrinfo cannot be cancelled, so a hung resolver leaves threads behind.
_LOOKUPS = threading.BoundedSemaphore(16)


def _reached(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address an IPv6 one carries to (mapped, 6to4, NAT64), else the address itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_public(address: str) -> bool:
    """Is this IP address (v4 or v6, scope id allowed) a public unicast one? Loopback, private, shared
    (100.64/10), link-local, site-local, multicast, reserved, documentation and unspecified are not."""
    try:
        ip = _reached(ipaddress.ip_address(address.split("%", 1)[0]))
    except ValueError:
        return False
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local
    return ip.is_global and not (
        ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback or ip.is_unspecified or site_local
    )


def resolve(host: str, timeout: float = 3.0) -> list[str]:
    """Every address `host` has for a TCP connection, within `timeout` seconds (else TimeoutError).

    The lookup runs in a daemon thread left to finish on its own after a timeout (getaddrinfo has no
    timeout of its own); at most 16 run at once, beyond that this waits for one to end, within the timeout.
    """
    if not _LOOKUPS.acquire(timeout=timeout):
        raise TimeoutError(f"too many name lookups in flight to resolve {host}")
    answer: list[list[str] | OSError] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            answer.append(sorted({str(info[4][0]) for info in socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)}))
        except OSError as exc:
            answer.append(exc)
        finally:
            _LOOKUPS.release()
            done.set()

    threading.Thread(target=lookup, name="b24q-resolve", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"{host} did not resolve within {timeout:g} s")
    if isinstance(answer[0], OSError):
        raise answer[0]
    return answer[0]
