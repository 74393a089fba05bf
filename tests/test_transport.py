"""The transport: one deadline for the whole exchange, a capped body, readable errors."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trustme

from tests.receivers import LOOPBACK, RawServer, Receiver, Reply, read_request, send
from webhooks import aiotransport, transport


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


Post = Callable[..., transport.Result]


def threaded_post(url: str, ca_bundle: str | None = None, timeout: float = 2) -> transport.Result:
    """`transport.post`, for the tests of its threads' shared pools."""
    return send(url, ca_bundle, timeout, allow_http=True)


@pytest.fixture(params=["transport", "aiotransport"])
def post(request: pytest.FixtureRequest) -> Iterator[Post]:
    """`send`, http:// allowed (these tests are about the exchange, not the scheme), through
    `transport.post` (threads) or through the worker's event loop (`aiotransport`), which
    keep the same rules."""
    if request.param == "transport":
        yield threaded_post
        return
    loop = asyncio.new_event_loop()
    client = aiotransport.Client()

    def on_loop(url: str, ca_bundle: str | None = None, timeout: float = 2) -> transport.Result:
        return loop.run_until_complete(
            client.post(
                url,
                b"{}",
                {"Content-Type": "application/json"},
                timeout=timeout,
                ca_bundle=ca_bundle,
                allowed_networks=LOOPBACK,
                allow_http=True,
            )
        )

    yield on_loop
    loop.run_until_complete(client.close())
    loop.close()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_trickling_response_is_cut_at_the_deadline(
    raw_server, ca_bundle, tls_context, scheme, post
):
    def trickle(conn: socket.socket) -> None:
        read_request(conn)
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100:
            conn.sendall(bytes([byte]))
            time.sleep(0.2)

    server = raw_server(trickle, tls=tls_context if scheme == "https" else None)
    started = time.monotonic()

    result = post(f"{scheme}://127.0.0.1:{server.port}/", ca_bundle, timeout=1.5)

    assert 1.4 <= time.monotonic() - started < 2.5
    assert not result.ok and result.error == "timed out after 1.5 s (connect and response)"


def test_huge_body_is_read_only_to_the_cap(receiver, ca_bundle, post):
    receiver.answer(Reply(status=200, body=b"a" * 5_000_000))

    result = post(receiver.url(), ca_bundle)

    assert result.ok and len(result.body) == transport.RESPONSE_BODY_CAP


def test_invalid_utf8_is_kept_readable(receiver, ca_bundle, post):
    receiver.answer(Reply(status=500, body=b"bad \xff\xfe bytes"))
    result = post(receiver.url(), ca_bundle)
    assert result.status_code == 500 and result.body == "bad \ufffd\ufffd bytes"


def test_refused_connection(ca_bundle, post):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    assert post(f"https://127.0.0.1:{port}/", ca_bundle).error == "connection refused"


def test_unknown_certificate_authority_is_refused(receiver, post):
    result = post(receiver.url())  # the system's CAs do not know the test CA
    assert result.status_code is None and "TLS certificate not accepted" in result.error


def test_certificate_for_another_name_is_refused(raw_server, ca_bundle, ca: trustme.CA, post):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example").configure_cert(context)
    server = raw_server(lambda conn: read_request(conn), tls=context)

    result = post(f"https://127.0.0.1:{server.port}/", ca_bundle)

    assert "TLS certificate not accepted" in result.error and "127.0.0.1" in result.error


def test_reset_mid_response(raw_server, post):
    def reset(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npartial")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    server = raw_server(reset)
    result = post(f"http://127.0.0.1:{server.port}/")
    assert not result.ok and result.error.startswith(("connection broken", "connection reset"))


@pytest.mark.parametrize("count, accepted", [(99, True), (100, False)])
def test_a_hundred_response_headers_are_refused_by_both_transports(
    raw_server, post, count, accepted
):
    def answer(conn: socket.socket) -> None:
        read_request(conn)
        extra = "".join(f"X-H{i}: {i}\r\n" for i in range(count - 1))
        conn.sendall(f"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n{extra}\r\n".encode())

    server = raw_server(answer)
    result = post(f"http://127.0.0.1:{server.port}/")

    if accepted:
        assert result.status_code == 204 and len(result.headers) == count
    else:
        assert result.status_code is None and result.error.startswith("connection broken")


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


# -- connections: kept alive, shared by threads, dropped when not read whole ------------------


def keep_alive(accepted: list[int], together: threading.Barrier | None = None):  # type: ignore[no-untyped-def]
    """Answer 204 to every request on a connection until the client closes it, counting the
    connections; with `together`, a request is answered only once that many are waiting."""

    def handle(conn: socket.socket) -> None:
        accepted.append(conn.fileno())
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(data) < length:
                data += conn.recv(65536)
            data = data[length:]
            if together is not None:
                together.wait(10)
            conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    return handle


def test_thirty_two_threads_keep_their_connections_to_one_host(raw_server):
    accepted: list[int] = []
    server = raw_server(keep_alive(accepted, together=threading.Barrier(32)))
    url = f"http://127.0.0.1:{server.port}/hook"

    with ThreadPoolExecutor(32) as threads:
        first = list(
            threads.map(lambda _: threaded_post(url), range(32))
        )  # 32 at once: 32 connections
        second = list(
            threads.map(lambda _: threaded_post(url), range(32))
        )  # all of them kept alive

    assert [r.status_code for r in first + second] == [204] * 64
    assert len(accepted) == 32


def accepted_by(receiver: Receiver) -> list[object]:
    """The connections the receiver accepts from now on (http.server checks each one once)."""
    accepted: list[object] = []
    check = receiver.server.verify_request

    def count(request, client_address) -> bool:  # type: ignore[no-untyped-def]
        accepted.append(client_address)
        return check(request, client_address)

    receiver.server.verify_request = count  # type: ignore[method-assign]
    return accepted


def test_a_connection_is_reused_after_a_whole_answer_but_not_after_a_capped_one(
    receiver, ca_bundle, post
):
    accepted = accepted_by(receiver)
    big = Reply(status=200, body=b"a" * 5_000_000)
    receiver.answer(Reply(body=b"small"), Reply(body=b"small"), big, Reply(body=b"small"))

    results = [post(receiver.url(), ca_bundle) for _ in range(4)]

    assert [len(r.body) for r in results] == [5, 5, transport.RESPONSE_BODY_CAP, 5]
    assert all(r.ok for r in results)
    assert len(accepted) == 2  # one for the first three POSTs, one after the capped answer


# -- which CAs are trusted ---------------------------------------------------------------------

SEND_ONCE = """
import ipaddress, sys
from webhooks import transport
result = transport.post(
    sys.argv[1], b"{}", {}, timeout=5, ca_bundle=sys.argv[2] or None,
    allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),),
)
print(result.error or result.status_code)
"""


@pytest.mark.parametrize("configured", [True, False], ids=["configured bundle", "default"])
def test_the_environment_does_not_change_which_cas_are_trusted(
    receiver, ca_bundle, tmp_path, configured
):
    """The variables through which requests and OpenSSL pick CAs name the test CA when no
    bundle is configured (it must stay untrusted), and another CA when the test CA's bundle is
    (it must stay trusted)."""
    named = tmp_path / "named.pem"
    if configured:
        trustme.CA().cert_pem.write_to_path(str(named))
    else:
        shutil.copy(ca_bundle, named)
    variables = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")
    env = {**os.environ, **dict.fromkeys(variables, str(named)), "SSL_CERT_DIR": str(tmp_path)}

    sent = subprocess.run(
        [sys.executable, "-c", SEND_ONCE, receiver.url(), ca_bundle if configured else ""],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert sent.returncode == 0, sent.stderr
    outcome = sent.stdout.strip()
    if configured:
        assert outcome == "200" and len(receiver.requests) == 1
    else:
        assert outcome.startswith("TLS certificate not accepted") and receiver.requests == []


def test_a_ca_bundle_replaced_on_disk_decides_from_the_next_post(
    receiver, ca_bundle, tmp_path, post
):
    bundle = tmp_path / "bundle.pem"
    shutil.copy(ca_bundle, bundle)
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))

    trusted = post(receiver.url(), str(bundle))
    os.replace(other, bundle)  # the test CA is no longer trusted
    refused = post(receiver.url(), str(bundle))  # not over the connection kept from before
    shutil.copy(ca_bundle, tmp_path / "new.pem")
    os.replace(tmp_path / "new.pem", bundle)
    again = post(receiver.url(), str(bundle))

    assert trusted.ok and again.ok, (trusted.error, again.error)
    assert refused.error.startswith("TLS certificate not accepted")
    assert len(receiver.requests) == 2


# -- answers framed every way HTTP/1.1 allows ----------------------------------------------------

GZIPPED = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"


def answer_and_close(conn: socket.socket, answer: bytes) -> None:
    """Send `answer`, then end with a FIN and read what the client still sends: closed with
    the request's body unread, the socket would reset the connection under the answer."""
    conn.sendall(answer)
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(5)
    while conn.recv(65536):
        pass


@pytest.mark.parametrize(
    "answer, status, body",
    [
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 204, ""),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", 200, "until the end"),
        (
            b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            202,
            "hello world",
        ),
        (GZIPPED % len(gzip.compress(b"small")) + gzip.compress(b"small"), 200, "small"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n\r\n"
            % len(zlib.compress(b"deflated"))
            + zlib.compress(b"deflated"),
            200,
            "deflated",
        ),
    ],
    ids=["interim 100", "body until close", "chunked", "gzip", "deflate"],
)
def test_every_framing_of_an_answer_is_read_whole(raw_server, post, answer, status, body):
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        answer_and_close(conn, answer)

    server = raw_server(handle)
    result = post(f"http://127.0.0.1:{server.port}/")

    assert (result.status_code, result.body, result.error) == (status, body, None)


def test_a_compressed_answer_is_inflated_only_to_the_cap(raw_server, post):
    bomb = gzip.compress(b"\0" * 20_000_000)

    def handle(conn: socket.socket) -> None:
        read_request(conn)
        answer_and_close(conn, GZIPPED % len(bomb) + bomb)

    server = raw_server(handle)
    result = post(f"http://127.0.0.1:{server.port}/")

    assert result.ok and len(result.body) == transport.RESPONSE_BODY_CAP


def test_the_loop_keeps_at_most_a_pool_of_connections_to_one_host_and_reuses_them(raw_server):
    """64 POSTs at once to one host: 32 connections (the others wait for one to be free),
    and the next 64 reuse them."""
    accepted: list[int] = []
    server = raw_server(keep_alive(accepted))
    url = f"http://127.0.0.1:{server.port}/hook"
    client = aiotransport.Client()

    async def post() -> int | None:
        result = await client.post(
            url, b"{}", {}, timeout=10, allowed_networks=LOOPBACK, allow_http=True
        )
        return result.status_code

    async def rounds() -> list[int | None]:
        first = await asyncio.gather(*(post() for _ in range(64)))
        second = await asyncio.gather(*(post() for _ in range(64)))
        await client.close()
        return [*first, *second]

    assert asyncio.run(rounds()) == [204] * 128
    assert len(accepted) == transport.POOL_MAXSIZE


def test_a_header_that_would_split_the_request_is_refused_before_sending(raw_server):
    requests: list[bytes] = []
    server = raw_server(lambda conn: requests.append(read_request(conn)))
    client = aiotransport.Client()

    async def send() -> transport.Result:
        result = await client.post(
            f"http://127.0.0.1:{server.port}/",
            b"{}",
            {"X-Note": "a\r\nX-Injected: 1"},
            timeout=5,
            allowed_networks=LOOPBACK,
            allow_http=True,
        )
        await client.close()
        return result

    result = asyncio.run(send())

    assert result.status_code is None and "cannot be sent" in (result.error or "")
    assert requests == []
