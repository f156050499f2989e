"""B24Q_REDIS_URL forms: one server, or Redis Sentinel in kombu's format, read alike by b24q and kombu."""

from __future__ import annotations

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from workers.broker import configuration as celeryconfig
from workers.redaction import redis_url
from workers.redisurl import broker_options, connect, sentinel_nodes
from workers.settings import Settings

URL = "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://10.0.0.3"


def test_sentinel_url_names_every_sentinel_and_the_master_settings_of_the_first() -> None:
    assert sentinel_nodes(URL) == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    client = connect(URL, "pool-a", "sentinel-pw", socket_timeout=3)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "pool-a"
    assert pool.connection_kwargs["password"] == "s3cret" and pool.connection_kwargs["db"] == 2
    sentinels = pool.sentinel_manager.sentinels
    assert [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"]) for s in sentinels
    ] == sentinel_nodes(URL)
    assert all(s.connection_pool.connection_kwargs["password"] == "sentinel-pw" for s in sentinels)
    with pytest.raises(ValueError, match="not a sentinel URL"):
        sentinel_nodes("sentinel://a:1;redis://b:2")


def test_plain_urls_are_redis_py_s_own() -> None:
    client = connect("redis://:pw@127.0.0.1:6390/3", "ignored")
    assert isinstance(client, redis.Redis)
    assert client.connection_pool.connection_kwargs["port"] == 6390
    assert client.connection_pool.connection_kwargs["db"] == 3
    assert broker_options("redis://127.0.0.1:6379/0", "mymaster") == {}


def test_celery_gets_the_master_name_and_the_sentinels_password() -> None:
    conf = celeryconfig.build(
        Settings(redis_url=URL, redis_sentinel_master="pool-a", redis_sentinel_password="sentinel-pw")
    )
    assert conf["broker_url"] == URL and conf["broker_use_ssl"] is False
    options = conf["broker_transport_options"]
    assert options["master_name"] == "pool-a"
    assert options["sentinel_kwargs"] == {"password": "sentinel-pw"}
    assert options["visibility_timeout"] > 0  # the reliability options stay


def test_status_masks_the_password_in_every_part() -> None:
    masked = redis_url(URL)
    assert "s3cret" not in masked
    assert masked.count("sentinel://") == 3 and ":***@10.0.0.1:26379/2" in masked
