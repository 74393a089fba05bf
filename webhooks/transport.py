"""The one function through which every outbound request goes, and its result object."""

from __future__ import annotations

import heapq
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

RESPONSE_BODY_CAP = 20_000
USER_AGENT = "CloudThinker-Webhooks/1.0"


@dataclass
class Result:
    """What came back from one request; an HTTP outcome is never an exception."""

    status_code: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    duration_ms: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


class _Watchdog:
    """One thread that cuts the sockets of exchanges past their deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, callback: Callable[[], None]) -> int:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="egress-watchdog", daemon=True
                )
                self._thread.start()
            token = next(self._counter)
            heapq.heappush(self._heap, (deadline, token, callback))
            self._cond.notify()
            return token

    def cancel(self, token: int) -> None:
        with self._cond:
            self._cancelled.add(token)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, token, callback = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0 and token not in self._cancelled:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                if token in self._cancelled:
                    self._cancelled.discard(token)
                    continue
            try:
                callback()
            except OSError:
                pass


_watchdog = _Watchdog()
_local = threading.local()


class _Exchange:
    """The connection an exchange is using, so that the watchdog can cut it."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.expired = False

    def cut(self) -> None:
        self.expired = True
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Tracked:
    """Mixin for urllib3 connections: report their socket to the running exchange."""

    _raw_sock: socket.socket | None = None

    def _track(self) -> None:
        exchange = getattr(_local, "exchange", None)
        if exchange is not None and self._raw_sock is not None:
            exchange.sockets.append(self._raw_sock)

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        self._raw_sock = sock
        self._track()
        return sock

    def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._track()  # a kept-alive connection is reused without _new_conn
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Tracked, HTTPConnection):
    pass


class _HTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def _session() -> requests.Session:
    """This thread's keep-alive session (connections are reused per host)."""
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        session.trust_env = False  # the proxy comes from WEBHOOK_PROXY_URL alone
        adapter = _Adapter(pool_connections=64, pool_maxsize=4, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        _local.session = session
    return session


def _describe(exc: BaseException, timeout: float, expired: bool) -> str:
    """A sentence a person understands for a failed exchange."""
    if expired or isinstance(exc, requests.Timeout):
        return f"timed out after {timeout:g} s (connect and response)"
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        nested = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = seen.__cause__ or seen.__context__ or nested
    for item in chain:
        reason = getattr(item, "reason", None)
        if isinstance(reason, BaseException) and reason not in chain:
            chain.append(reason)
    for item in chain:
        if isinstance(item, ssl.SSLCertVerificationError):
            return f"TLS certificate not accepted: {item.verify_message or item.reason}"
        if isinstance(item, ssl.SSLError):
            return f"TLS handshake failed: {item.reason or item}"
        if isinstance(item, ConnectionRefusedError):
            return "connection refused"
        if isinstance(item, ConnectionResetError):
            return "connection reset by the target"
        if isinstance(item, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(item, urllib3.exceptions.ProtocolError):
            return f"connection broken: {item.args[0] if item.args else item}"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS error: {exc}"
    if isinstance(exc, requests.ConnectionError):
        return "could not connect to the target"
    return f"{type(exc).__name__}: {exc}"


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    ca_bundle: str | None = None,
    proxy_url: str | None = None,
) -> Result:
    """POST `body` once: no redirects, one deadline for the whole exchange, body read to a cap."""
    started = time.monotonic()
    exchange = _Exchange()
    _local.exchange = exchange
    token = _watchdog.watch(started + timeout, exchange.cut)
    response = None
    try:
        response = _session().post(
            url,
            data=body,
            headers=headers,
            timeout=(timeout, timeout),
            allow_redirects=False,
            stream=True,
            verify=ca_bundle or True,
            proxies={"http": proxy_url, "https": proxy_url} if proxy_url else None,
        )
        chunks, size = [], 0
        for chunk in response.iter_content(8192):
            chunks.append(chunk)
            size += len(chunk)
            if size > RESPONSE_BODY_CAP:
                break
        raw = b"".join(chunks)[:RESPONSE_BODY_CAP]
        return Result(
            status_code=response.status_code,
            headers=dict(response.headers),
            body=raw.decode("utf-8", errors="replace"),
            duration_ms=round((time.monotonic() - started) * 1000),
        )
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        return Result(
            status_code=response.status_code if response is not None else None,
            headers=dict(response.headers) if response is not None else {},
            duration_ms=round((time.monotonic() - started) * 1000),
            error=_describe(exc, timeout, exchange.expired),
        )
    finally:
        _watchdog.cancel(token)
        _local.exchange = None
        if response is not None:
            response.close()
