"""Hostile or broken receivers, through the whole delivery path: the right outcome, a readable
error, and never a worker tied up past the timeout."""

from __future__ import annotations

import gzip
import socket
import ssl
import time

import pytest

from tests.receivers import RawServer, read_request

TIMEOUT = 1.5


def respond(raw: bytes, trickle: float = 0.0):  # type: ignore[no-untyped-def]
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        if trickle:
            for byte in raw:
                conn.sendall(bytes([byte]))
                time.sleep(trickle)
        else:
            conn.sendall(raw)

    return handle


def reset_midway(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npartial")
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def ok(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


REDIRECT = "Location: /x\r\n"
# 50 MB of zeros in 49 KB: read to the cap, never inflated whole.
GZIP_BOMB = gzip.compress(b"\0" * 50_000_000)
HEADER_FLOOD = "".join(f"X-Flood-{i}: {i}\r\n" for i in range(150))
TLS_REFUSED = "TLS certificate not accepted"
CASES = {
    # name: (handler, tls, expected status, expected error fragment or None)
    "reset mid-response": (reset_midway, None, "failed", "connection"),
    "trickle one byte a time": (respond(ok(b"x" * 50), trickle=0.1), None, "failed", "timed out"),
    "5 MB body": (respond(ok(b"a" * 5_000_000)), None, "succeeded", None),
    "invalid UTF-8": (respond(ok(b"\xff\xfe oops", "500 Oops")), None, "failed", "HTTP 500"),
    "200 with no body": (respond(ok(b"")), None, "succeeded", None),
    "301": (respond(ok(b"", "301 Moved", REDIRECT)), None, "failed", "not followed"),
    "307": (respond(ok(b"", "307 Temporary Redirect", REDIRECT)), None, "failed", "not followed"),
    "plain HTTP on https": (lambda conn: conn.sendall(ok(b"hi")), "plain", "failed", "TLS"),
    "certificate for another name": (respond(ok(b"hi")), "other-name", "failed", TLS_REFUSED),
    "NUL bytes in the body": (respond(ok(b"a\x00b", "500 Oops")), None, "failed", "HTTP 500"),
    "gzip bomb": (
        respond(ok(GZIP_BOMB, extra="Content-Encoding: gzip\r\n")),
        None,
        "succeeded",
        None,
    ),
    "150 headers": (respond(ok(b"", extra=HEADER_FLOOD)), None, "failed", "connection broken"),
    "a 70 KB header line": (
        respond(ok(b"", extra=f"X-Long: {'a' * 70_000}\r\n")),
        None,
        "failed",
        "connection broken",
    ),
}


@pytest.fixture
def hostile_config(config):  # type: ignore[no-untyped-def]
    config.update(
        {
            "WEBHOOK_ALLOW_HTTP": "1",
            "WEBHOOK_RETRY_SCHEDULE": "0",
            "WEBHOOK_TIMEOUT_SECONDS": str(TIMEOUT),
        }
    )
    return config


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_receiver(case, hostile_config, api, service, ca):  # type: ignore[no-untyped-def]
    handler, tls, expected, fragment = CASES[case]
    context = None
    if tls == "other-name":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("other.example").configure_cert(context)
    server = RawServer(handler, context)
    scheme = "https" if tls else "http"
    try:
        api.post(
            "/webhooks",
            {"name": case, "url": f"{scheme}://127.0.0.1:{server.port}/h", "events": ["*"]},
        )
        event = api.publish("task.failed", {"id": "t1"})
        started = time.monotonic()
        [delivery] = service.run_until(api.ended(event["id"]), timeout=15)
    finally:
        server.close()

    assert delivery["status"] == expected, delivery["last_error"]
    assert time.monotonic() - started < TIMEOUT + 5
    attempt = delivery["attempts"][0]
    assert attempt["duration_ms"] <= TIMEOUT * 1000 + 500
    if fragment:
        assert fragment in (delivery["last_error"] or ""), delivery["last_error"]
    if case == "5 MB body":
        assert len(attempt["response"]["body"]) == 20_000
    if case == "invalid UTF-8":
        assert attempt["response"]["body"] == "\ufffd\ufffd oops"
