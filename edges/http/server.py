"""How uvicorn serves the app: its HTTP/1.1 protocol with Nagle's algorithm off on every connection.

uvicorn leaves TCP_NODELAY to asyncio, which sets it only on sockets it knows for TCP; a listening socket
handed over as a file descriptor (`--fd`, how a process manager or `b24q serve --workers N` passes it) is
not, and then each small answer waits for the client's delayed ACK: ~40 ms per request instead of ~1
(measured: `python -m bench.run intake`). `b24q serve` and the local stack use `PROTOCOL`; with plain
uvicorn, pass `--http edges.http.server:NoDelayH11Protocol`.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

PROTOCOL = "edges.http.server:NoDelayH11Protocol"


class NoDelayH11Protocol(H11Protocol):
    def connection_made(self, transport: Any) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # not a TCP socket (a Unix socket): nothing to turn off
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
