"""The HTTP front: a threaded HTTP/1.1 keep-alive server on loopback that hands each request to a router.

Choices made for throughput on a small machine (well over 1,000 small requests/s):

* ``ThreadingHTTPServer`` with daemon threads and a deep accept queue; one thread per keep-alive connection.
* The status line, headers and body go out in a single ``sendall`` with ``TCP_NODELAY`` set, so a reply never
  waits on Nagle + delayed ACK (a 40 ms stall per request otherwise).
* No per-request logging; ``server_bind`` skips the reverse-DNS lookup ``HTTPServer`` does.

Open connections are tracked so :meth:`EmulatorHTTPServer.close_connections` can cut pooled keep-alive
connections on stop; otherwise a client could keep talking to a "stopped" emulator.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .rest import Reply, json_reply

Router = Callable[[str, str, str, Mapping[str, str], bytes, str], Reply]

_REASONS = {s.value: s.phrase for s in HTTPStatus}
MAX_BODY = 32 * 1024 * 1024


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], router: Router) -> None:
        self.router = router
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conns_lock:
            if alive:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError | OSError):
            return  # clients hanging up (timeouts, drops) are part of the job
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "b24-emulator"
    sys_version = ""
    server: EmulatorHTTPServer

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self._send(json_reply(400, {"error": "INVALID_REQUEST", "error_description": "Unreadable body"}))
            return
        path, _, query = self.path.partition("?")
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            reply = self.server.router(self.command, path, query, headers, body, self.client_address[0])
        except Exception:
            traceback.print_exc(file=sys.stderr)
            reply = json_reply(500, {"error": "INTERNAL_SERVER_ERROR", "error_description": "Emulator bug"})
        if reply.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if reply.delay > 0:
            time.sleep(reply.delay)
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        reason = _REASONS.get(reply.status, "")
        lines = [
            f"HTTP/1.1 {reply.status} {reason}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
        ]
        lines.extend(f"{k}: {v}" for k, v in reply.headers.items())
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.connection.sendall(head + reply.body)
        except OSError:
            self.close_connection = True

    do_GET = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_DELETE = _dispatch
    do_PATCH = _dispatch
