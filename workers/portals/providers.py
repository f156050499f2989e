"""Which SMS providers a portal should have, and which of them are still being registered.

Both live in the portal's record (`providers`, JSON; `providers_pending`, codes separated by spaces): the
application's lifecycle (`edges.lifecycle`) sets them at install and after an update, and a portal's status
jobs wait while any is pending (`workers.pipeline`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import redis

from workers.keys import Keys


class ProviderBook:
    """The provider fields of portal records (the records themselves: `workers.portals.registry`)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        self._ready = client.register_script((Path(__file__).parent / "lua" / "provider_ready.lua").read_text())

    def set(self, key: str, providers: str) -> None:
        """The SMS providers (JSON) this portal should have, instead of `B24Q_PROVIDERS`."""
        self._client.hset(self._keys.portal(key), "providers", providers)

    def pending(self, key: str, codes: Sequence[str]) -> None:
        """These providers are being registered: the portal's status jobs wait for them."""
        self._client.hset(self._keys.portal(key), "providers_pending", " ".join(codes))

    def ready(self, key: str, code: str) -> int:
        """A provider is registered; returns how many are still pending."""
        return int(self._ready(keys=[self._keys.portal(key)], args=[code]))
