"""API keys of the HTTP intake (`B24Q_API_KEYS`): kept as SHA-256 digests, never as keys, each one optionally
limited to some portals. Several entries at once let a key be rotated: add the new entry, move the producer
to the new key, remove the old entry. An entry scoped `*admin` is an operator's key: the operator's console
(`edges.http.console`) accepts only those, and on /v1 it acts for every portal, as an unscoped key does.

    B24Q_API_KEYS=9f86d081…0a08:acme|globex,60303ae2…2f52,4e07408…2e3a:*admin

Examples:
    >>> key, entry = new(["acme"])
    >>> identify(parse(entry), key).portals
    frozenset({'acme'})
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

#: New keys start with this, so a leaked one is recognisable (secret scanners, logs) as b24q's.
PREFIX = "b24q_"
#: The scope of an operator's key (no portal name can start with `*`, so no older entry reads as one).
ADMIN = "*admin"


@dataclass(frozen=True)
class ApiKey:
    """One entry: the key's digest, the portals it may post and read (None: every portal), and whether it is an
    operator's key (`admin`)."""

    digest: bytes
    portals: frozenset[str] | None
    admin: bool = False

    @property
    def id(self) -> str:
        """The key's name in Redis keys and messages: its digest's first 16 hex digits, never the key."""
        return self.digest.hex()[:16]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@lru_cache(maxsize=8)
def parse(setting: str) -> tuple[ApiKey, ...]:
    """The entries of B24Q_API_KEYS (`workers.settings` has checked their form)."""
    keys = []
    for entry in (e.strip() for e in setting.split(",")):
        if entry:
            digest, _, scope = entry.partition(":")
            if scope == ADMIN:
                keys.append(ApiKey(bytes.fromhex(digest), None, admin=True))
                continue
            portals = frozenset(p for p in scope.split("|") if p) if scope else None
            keys.append(ApiKey(bytes.fromhex(digest), portals))
    return tuple(keys)


def identify(keys: Iterable[ApiKey], presented: str) -> ApiKey | None:
    """The entry of the key a request presented, or None. Every entry is compared, in constant time, so the
    answer's timing says nothing about which entry (or which prefix of a digest) matched."""
    digest = _digest(presented)
    found = None
    for key in keys:
        if hmac.compare_digest(key.digest, digest):
            found = key
    return found


def entry(key: str, portals: Iterable[str] = (), admin: bool = False) -> str:
    """The B24Q_API_KEYS entry of `key`: limited to `portals` if any are given, an operator's key if `admin`."""
    scope = ADMIN if admin else "|".join(portals)
    return _digest(key).hex() + (f":{scope}" if scope else "")


def new(portals: Iterable[str] = (), admin: bool = False) -> tuple[str, str]:
    """A fresh random key (256 bits) and its entry."""
    key = PREFIX + secrets.token_urlsafe(32)
    return key, entry(key, portals, admin)
