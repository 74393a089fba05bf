"""The transport: one deadline for the whole exchange, a capped body, readable errors."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import trustme

from tests.receivers import Reply
from webhooks import transport

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


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


def read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk


@pytest.fixture
def raw_server() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def make(
        handle: Callable[[socket.socket], None], tls: ssl.SSLContext | None = None
    ) -> RawServer:
        server = RawServer(handle, tls)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def post(url: str, ca_bundle: str | None = None, timeout: float = 2) -> transport.Result:
    return transport.post(
        url,
        b"{}",
        {"Content-Type": "application/json"},
        timeout=timeout,
        ca_bundle=ca_bundle,
        allowed_networks=LOOPBACK,
        allow_http=True,
    )


def test_trickling_response_is_cut_at_the_deadline(raw_server, ca_bundle):
    def trickle(conn: socket.socket) -> None:
        read_request(conn)
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100:
            conn.sendall(bytes([byte]))
            time.sleep(0.2)

    server = raw_server(trickle)
    started = time.monotonic()

    result = post(f"http://127.0.0.1:{server.port}/", timeout=1.5)

    assert 1.4 <= time.monotonic() - started < 2.5
    assert not result.ok and result.error == "timed out after 1.5 s (connect and response)"


def test_huge_body_is_read_only_to_the_cap(receiver, ca_bundle):
    receiver.answer(Reply(status=200, body=b"a" * 5_000_000))

    result = post(receiver.url(), ca_bundle)

    assert result.ok and len(result.body) == transport.RESPONSE_BODY_CAP


def test_invalid_utf8_is_kept_readable(receiver, ca_bundle):
    receiver.answer(Reply(status=500, body=b"bad \xff\xfe bytes"))
    result = post(receiver.url(), ca_bundle)
    assert result.status_code == 500 and result.body == "bad \ufffd\ufffd bytes"


def test_refused_connection(ca_bundle):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    assert post(f"https://127.0.0.1:{port}/", ca_bundle).error == "connection refused"


def test_unknown_certificate_authority_is_refused(receiver):
    result = post(receiver.url())  # the system's CAs do not know the test CA
    assert result.status_code is None and "TLS certificate not accepted" in result.error


def test_certificate_for_another_name_is_refused(raw_server, ca_bundle, ca: trustme.CA):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example").configure_cert(context)
    server = raw_server(lambda conn: read_request(conn), tls=context)

    result = post(f"https://127.0.0.1:{server.port}/", ca_bundle)

    assert "TLS certificate not accepted" in result.error and "127.0.0.1" in result.error


def test_reset_mid_response(raw_server):
    def reset(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npartial")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    server = raw_server(reset)
    result = post(f"http://127.0.0.1:{server.port}/")
    assert not result.ok and result.error.startswith(("connection broken", "connection reset"))


def test_the_watchdog_lets_go_of_exchanges_that_ended_in_time():
    from webhooks.transport import _Watchdog

    watchdog = _Watchdog()
    fired = threading.Event()
    far = time.monotonic() + 3600
    for _ in range(5000):  # POSTs that answered well within their timeout
        watchdog.cancel(watchdog.watch(far, lambda: None))
    watchdog.watch(time.monotonic() + 0.05, fired.set)  # one that runs into its deadline

    assert watchdog.pending() <= 1100  # not a timeout's worth of finished exchanges
    assert fired.wait(5)
