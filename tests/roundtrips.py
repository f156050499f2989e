"""What code sends to Redis: every packet redis-py writes, one a round trip (a pipeline's commands go in one)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from redis.connection import AbstractConnection


@contextlib.contextmanager
def sent_to_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """The packets every redis-py connection of this process writes while the block runs, in order."""
    sent: list[bytes] = []
    real_send = AbstractConnection.send_packed_command

    def counted(conn: AbstractConnection, command: Any, check_health: bool = True) -> None:
        sent.append(b"".join(command) if isinstance(command, list) else command)
        real_send(conn, command, check_health)

    with monkeypatch.context() as patch:
        patch.setattr(AbstractConnection, "send_packed_command", counted)
        yield sent
