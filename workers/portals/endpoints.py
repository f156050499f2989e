"""Where b24q may send a portal's tokens: its endpoint policy.

An endpoint arrives from outside (an install, a redirect) or from an operator (`b24q portal add`). It is
taken only if it is `https` on port 443, its host is one of `B24Q_PORTAL_HOSTS` (Bitrix24's cloud zones
by default) or the host the portal already has, and every address the host resolves to is public.
Cheap local checks come first, the name lookup last. `B24Q_ALLOW_INSECURE_HTTP` lifts the scheme and
port rule; `B24Q_ALLOW_PRIVATE_PORTALS` lifts the address rule (and, on loopback, the scheme and port
rule: the emulator). `check_url` is the laxer rule for b24q's own URLs (the OAuth server's), and
`domain_of` the portal domain an endpoint names.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from workers.bitrix.addresses import Resolve, is_public, resolve
from workers.errors import ConfigError, EndpointRefused
from workers.settings import Settings

#: What a portal URL's authority may be: a lower-case name or IP literal and a port, nothing else (no
#: user info, no escapes): what this module parses is then what httpx connects to.
_AUTHORITY = re.compile(r"(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?", re.IGNORECASE)

#: Seconds a host's name lookup may take before the endpoint is refused.
RESOLVE_TIMEOUT = 3.0


def lookup(host: str) -> list[str]:
    """The default name lookup: DNS, bounded by `RESOLVE_TIMEOUT`."""
    return resolve(host, RESOLVE_TIMEOUT)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allow_insecure: bool, what: str) -> str:
    """Refuse a URL that is not https, unless it is on loopback or insecure URLs are allowed (the OAuth
    server's URL; a portal's endpoint answers to `EndpointPolicy`)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} must be an http(s) URL")
    if parts.scheme == "http" and not allow_insecure and not is_loopback(parts.hostname):
        raise ConfigError(f"{what} must use https (set B24Q_ALLOW_INSECURE_HTTP=1 to allow http)")
    return url if url.endswith("/") else url + "/"


def domain_of(endpoint: str) -> str:
    """The portal domain an endpoint names: its host; on loopback (the emulator, where a portal is a
    path prefix because there is no DNS) the first segment of its path."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if is_loopback(host):
        segments = [p for p in parts.path.split("/") if p]
        return segments[0] if segments and segments[0] != "rest" else host
    return host


def host_matches(host: str, patterns: Sequence[str]) -> bool:
    """Does `host` match a pattern label for label (`*` is one whole label or part of one, never a dot)?"""
    labels = host.lower().split(".")
    for pattern in patterns:
        wanted = pattern.strip().lower().split(".")
        if len(wanted) == len(labels) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(labels, wanted, strict=True)):
            return True
    return False


@dataclass(frozen=True)
class EndpointPolicy:
    """The rules, from `Settings`; `resolve` is the name lookup (tests pass a table instead of DNS)."""

    patterns: tuple[str, ...]
    allow_insecure: bool = False
    allow_private: bool = False
    resolve: Resolve = lookup

    @classmethod
    def of(cls, settings: Settings, resolve_host: Resolve | None = None) -> EndpointPolicy:
        patterns = tuple(p.strip() for p in settings.portal_hosts.split(",") if p.strip())
        return cls(patterns, settings.allow_insecure_http, settings.allow_private_portals, resolve_host or lookup)

    def shape(self, url: str, what: str = "client_endpoint") -> str:
        """The URL ending in `/` if its scheme, authority and port may be a portal's (no I/O).

        Raises ConfigError when it is no http(s) URL at all, EndpointRefused when the rules refuse it.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{what} must be an http(s) URL")
        if not _AUTHORITY.fullmatch(parts.netloc):
            raise EndpointRefused(f"{what} must name a host (and a port), nothing else")
        try:
            port = parts.port
        except ValueError:
            raise EndpointRefused(f"{what} has no valid port") from None
        lax = self.allow_insecure or (self.allow_private and is_loopback(parts.hostname))
        if not lax and (parts.scheme != "https" or port not in (None, 443)):
            raise EndpointRefused(f"{what} must be https on port 443 (B24Q_ALLOW_INSECURE_HTTP=1 allows others)")
        return url if url.endswith("/") else url + "/"

    def check(self, url: str, what: str = "client_endpoint", current: str = "", hosts: bool = True) -> str:
        """`shape`, then the host (a pattern, or `current`'s host; skipped with `hosts=False`: an operator
        names it), then its addresses. Returns the URL ending in `/`; raises like `shape`."""
        url = self.shape(url, what)
        host = (urlsplit(url).hostname or "").lower()
        same = bool(current) and host == (urlsplit(current).hostname or "").lower()
        if hosts and not same and not host_matches(host, self.patterns):
            raise EndpointRefused(f"{what} is not a host in B24Q_PORTAL_HOSTS")
        if not self.allow_private:
            self._public(host, what)
        return url

    def _public(self, host: str, what: str) -> None:
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                addresses = list(self.resolve(host))
            except (OSError, TimeoutError) as exc:
                raise EndpointRefused(f"{what}: its host does not resolve ({type(exc).__name__})") from None
        if not addresses or not all(is_public(a) for a in addresses):
            raise EndpointRefused(
                f"{what}: its host has a loopback, private or other non-public address "
                "(B24Q_ALLOW_PRIVATE_PORTALS=1 allows it)"
            )
