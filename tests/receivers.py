"""Real HTTP(S) receivers on loopback: they record what arrives and answer as scripted; a raw TCP
server for targets that misbehave below HTTP; and `send`, the service's transport aimed at them."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from webhooks import transport

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def send(url: str, ca_bundle: str | None = None, timeout: float = 2, **kw: Any) -> transport.Result:
    """POST `{}` through the service's transport, which allows loopback targets unless
    `allowed_networks` says otherwise (`kw` goes to `transport.post`)."""
    return transport.post(
        url,
        b"{}",
        {"Content-Type": "application/json"},
        timeout=timeout,
        ca_bundle=ca_bundle,
        **{"allowed_networks": LOOPBACK, **kw},
    )


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    after: Callable[[], None] | None = None  # runs once the answer has been sent


class Receiver:
    """A threaded server; `script` lists replies in order, the last one repeats."""

    def __init__(self, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.requests: list[Received] = []
        self.script: list[Reply] = [Reply()]
        # When set, decides each reply from the request instead of `script`.
        self.router: Callable[[Received], Reply] | None = None
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        # Set by `close`: a reply still waiting out its delay ends at once, silently (a
        # traceback printed by a server thread after its test raced the next test's imports).
        self._closed = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                reply = receiver._record(Received(self.path, dict(self.headers), body, time.time()))
                if reply.delay and receiver._closed.wait(reply.delay):
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
                self.wfile.flush()
                if reply.after is not None:
                    reply.after()

        class Server(ThreadingHTTPServer):
            # Room for a burst of connections (a fresh worker opens one per POST thread at
            # once): past the default 5, a connection waited a second for the SYN's resend.
            request_queue_size = 128

            def finish_request(self, request: Any, client_address: Any) -> None:
                # The TLS handshake runs on the connection's own thread, not on the one that
                # accepts, so a slow or broken handshake keeps no other client waiting.
                if isinstance(request, ssl.SSLSocket):
                    try:
                        request.do_handshake()
                    except OSError:  # the client gave up or refused the certificate
                        return
                super().finish_request(request, client_address)

            def handle_error(self, request: Any, client_address: Any) -> None:
                if not receiver._closed.is_set():
                    super().handle_error(request, client_address)

        self.server = Server((host, 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.scheme = "https" if tls else "http"
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def answer(self, *replies: Reply | int) -> None:
        """Script the next replies (a bare int is a status with a short body)."""
        with self._lock:
            self.script = [r if isinstance(r, Reply) else Reply(status=r) for r in replies]

    def _record(self, received: Received) -> Reply:
        with self._arrived:
            self.requests.append(received)
            if self.router is not None:
                reply = self.router(received)
            else:
                reply = self.script[0] if len(self.script) == 1 else self.script.pop(0)
            self._arrived.notify_all()
            return reply

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until at least `count` requests arrived; fail after `timeout` seconds."""
        return wait_for_count(self._arrived, self.requests, count, timeout, "requests")

    def close(self) -> None:
        self._closed.set()
        self.server.shutdown()
        self.server.server_close()


def wait_for_count(
    arrived: threading.Condition, items: list, count: int, timeout: float, what: str
) -> list:
    """Block until `items`, appended to under `arrived`, holds `count`; a copy of them. Fail
    after `timeout` seconds, saying how many of `what` came."""
    deadline = time.monotonic() + timeout
    with arrived:
        while len(items) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"expected {count} {what} within {timeout}s, got {len(items)}")
            arrived.wait(left)
        return list(items)


class RawServer:
    """A TCP server that hands each connection to `handle` (for misbehaving targets)."""

    def __init__(self, handle: Callable[[socket.socket], None], tls: ssl.SSLContext | None = None):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handle, self.tls = handle, tls
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.handle(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stopped = True
        self.sock.close()


def read_request(conn: socket.socket) -> bytes:
    """Read up to the end of a request's head; what came, whole or cut short by the client."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
