"""One Redis URL for the broker and for b24q's own state, Sentinel included.

`B24Q_REDIS_URL` is handed to Celery (kombu) as the broker URL and to redis-py for the limiter, the call
queues, the token store, the ledger and the dead letters. Both must reach the same server, so b24q reads
the URL the way kombu does:

* `redis://`, `rediss://` (TLS), `unix://`: one server (redis-py's `Redis.from_url`);
* `sentinel://host:26379;sentinel://host2:26379/0`: Redis Sentinel, kombu's format: every sentinel
  separated by `;`, the database and the master's password (`sentinel://:pw@host:26379/0`) on the
  first; the master's name from `B24Q_REDIS_SENTINEL_MASTER`. After a failover, both kombu and redis-py
  ask the sentinels for the new master and reconnect to it by themselves.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


def sentinel_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) of every sentinel in a kombu-style `sentinel://…;sentinel://…` URL."""
    nodes = []
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme != "sentinel" or not parts.hostname:
            raise ValueError(f"not a sentinel URL: {part.strip()!r} (expected sentinel://host:port)")
        nodes.append((parts.hostname, parts.port or 26379))
    return nodes


def connect(url: str, sentinel_master: str = "mymaster", sentinel_password: str = "", **options: Any) -> redis.Redis:
    """A redis-py client for `url`; `options` are connection options (timeouts, health checks)."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    first = urlsplit(url.split(";", 1)[0])
    master: dict[str, Any] = dict(options)
    if first.password is not None:
        master["password"] = unquote(first.password)
    if first.username:
        master["username"] = unquote(first.username)
    path = first.path.strip("/")
    if path:
        master["db"] = int(path)
    # the sentinels' own connections: the same timeouts, and their password if they require one
    sentinel_kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    sentinel = Sentinel(sentinel_nodes(url), sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(sentinel_master, redis_class=redis.Redis, **master)


def broker_options(url: str, sentinel_master: str, sentinel_password: str = "") -> dict[str, Any]:
    """The kombu transport options a Sentinel URL needs (none for other URLs)."""
    if not is_sentinel(url):
        return {}
    options: dict[str, Any] = {"master_name": sentinel_master}
    if sentinel_password:
        options["sentinel_kwargs"] = {"password": sentinel_password}
    return options
