"""The one function through which every outbound request goes, and its result object.

Every exchange is checked by the egress guard first (`webhooks.egress`): the host is resolved,
every address must be allowed, and the connection then goes to one of those checked addresses
(TLS still uses the host name for SNI and certificate checks, and `Host` stays the name).
Through WEBHOOK_PROXY_URL the proxy is asked to `CONNECT` to that checked address, never to
the name, so it cannot resolve the name again.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as _connection

from webhooks import egress

RESPONSE_BODY_CAP = 20_000
# Response headers kept per attempt, counted as `Name: value` lines with their CRLF. Python's
# http.client already refuses a line over 64 KiB and more than 100 headers, so a receiver can
# make one attempt parse at most about 6.4 MB of them; only this much is kept and stored.
RESPONSE_HEADERS_CAP = 16 * 1024
# The entry that says what was dropped: not an HTTP token, so no receiver's header has it.
DROPPED_HEADERS = "(dropped)"
_DROPPED_RESERVE = 128  # room kept for that entry once something is dropped
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
    """One thread that cuts the sockets of exchanges past their deadline.

    An exchange that ends in time lets go of its entry at once: its callback (and the exchange
    it holds) is dropped, and the heap is compacted once most of it is such leftovers. Kept
    until their deadline, a timeout's worth of finished exchanges (12,000 at 400 POSTs/s and
    30 s) held several megabytes in every worker.
    """

    def __init__(self) -> None:
        # [deadline, token, callback or None once cancelled]; tokens are unique, so entries
        # never compare by their callbacks.
        self._heap: list[list[Any]] = []
        self._entries: dict[int, list[Any]] = {}
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
            entry = [deadline, token, callback]
            heapq.heappush(self._heap, entry)
            self._entries[token] = entry
            self._cond.notify()
            return token

    def cancel(self, token: int) -> None:
        with self._cond:
            entry = self._entries.pop(token, None)
            if entry is not None:
                entry[2] = None
            if len(self._heap) > 1024 and len(self._entries) < len(self._heap) // 4:
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)

    def pending(self) -> int:
        """Entries still held (watched or awaiting compaction)."""
        with self._cond:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, token, callback = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0 and callback is not None:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                if callback is None:
                    continue
                self._entries.pop(token, None)
            try:
                callback()
            except OSError:
                pass


_watchdog = _Watchdog()
_local = threading.local()


class _Exchange:
    """One request in flight: its checked target, and its sockets so that the watchdog can cut
    them."""

    def __init__(self, deadline: float) -> None:
        self.sockets: list[socket.socket] = []
        self.expired = False
        self.deadline = deadline
        self.host: str | None = None  # the host name, as urllib3 spells it
        self.addresses: tuple[egress.IPAddress, ...] = ()  # the checked addresses of `host`
        self.proxied = False  # through WEBHOOK_PROXY_URL: the proxy connects to the target

    def permits(self, conn: Any, sock: socket.socket) -> bool:
        """Whether a kept-alive connection still goes where this exchange may go."""
        if not self.proxied:
            return self.permits_peer(sock)
        tunnel = getattr(conn, "_tunnel_host", None)
        if tunnel is None:
            return True  # a plain connection to the proxy itself (http:// forwarding)
        try:
            return ipaddress.ip_address(tunnel) in self.addresses
        except ValueError:
            return False

    def permits_peer(self, sock: socket.socket) -> bool:
        """Whether a kept-alive socket is connected to one of this exchange's checked addresses."""
        try:
            peer = sock.getpeername()[0]
            ip = ipaddress.ip_address(str(peer).partition("%")[0])
        except (OSError, ValueError, IndexError, TypeError):
            return False
        return ip in self.addresses

    def cut(self) -> None:
        self.expired = True
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _normal_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


class _Tracked:
    """Mixin for urllib3 connections: connect to the exchange's checked address, and report the
    socket to the exchange."""

    _raw_sock: socket.socket | None = None
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _track(self) -> None:
        exchange = getattr(_local, "exchange", None)
        if exchange is not None and self._raw_sock is not None:
            exchange.sockets.append(self._raw_sock)

    def _new_conn(self) -> socket.socket:
        exchange: _Exchange | None = getattr(_local, "exchange", None)
        if exchange is not None and exchange.proxied:
            sock = super()._new_conn()  # type: ignore[misc]  # to the trusted proxy
        else:
            sock = self._connect_checked(exchange)
        self._raw_sock = sock
        self._track()
        return sock

    def _connect_checked(self, exchange: _Exchange | None) -> socket.socket:
        """A socket to one of the addresses the egress guard checked for this host, never to a
        fresh resolution of the name."""
        if (
            exchange is None
            or exchange.host is None
            or _normal_host(self.host) != exchange.host
            or not exchange.addresses
        ):
            raise NewConnectionError(self, f"{self.host} was not checked by the egress guard")
        error: OSError | None = None
        for ip in exchange.addresses:
            left = exchange.deadline - time.monotonic()
            if left <= 0:
                break
            wait = left if not isinstance(self.timeout, int | float) else min(self.timeout, left)
            try:
                return _connection.create_connection(
                    (str(ip), self.port),
                    wait,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except OSError as exc:  # socket.timeout included
                error = exc
        if error is None or isinstance(error, TimeoutError):
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from error
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error

    def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._track()  # a kept-alive connection is reused without _new_conn
        name = getattr(self, "tunnel_host_header", None)
        if name is not None and getattr(self, "_tunnel_host", None) is not None:
            # http.client would name the tunnel's address literal in Host; keep the name.
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "Host": name}
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Tracked, HTTPConnection):
    pass


class _HTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _Pinned:
    """Mixin for urllib3 pools: a kept-alive connection is reused only while its peer is one of
    the addresses checked for this exchange (DNS may have changed since it was opened)."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        sock = getattr(conn, "sock", None)
        exchange: _Exchange | None = getattr(_local, "exchange", None)
        if sock is not None and (exchange is None or not exchange.permits(conn, sock)):
            conn.close()  # urllib3 connects it again, through _new_conn (or the proxy's CONNECT)
        return conn


class _HTTPPool(_Pinned, HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(_Pinned, HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection

    def _prepare_proxy(self, conn: Any) -> None:
        """CONNECT to a checked address, tried in turn, while TLS checks the certificate for the
        name (SNI and hostname): the proxy never sees the name, so it cannot resolve it again."""
        exchange: _Exchange | None = getattr(_local, "exchange", None)
        name = _normal_host(self.host)
        if exchange is None or exchange.host != name or not exchange.addresses:
            raise NewConnectionError(conn, f"{self.host} was not checked by the egress guard")
        scheme = "https" if self.proxy and self.proxy.scheme == "https" else "http"
        shown = f"[{name}]" if ":" in name else name
        conn.server_hostname = name
        conn.tunnel_host_header = shown if self.port in (None, 443) else f"{shown}:{self.port}"
        error: OSError | None = None
        for ip in exchange.addresses:
            if time.monotonic() >= exchange.deadline:
                break
            conn.set_tunnel(str(ip), port=self.port, headers=self.proxy_headers, scheme=scheme)
            try:
                conn.connect()
                return
            except OSError as exc:  # the proxy could not reach this address: try the next
                error = exc
                conn.close()
        raise error or ConnectTimeoutError(conn, f"Connection to {self.host} timed out.")


_POOL_CLASSES = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOL_CLASSES)

    def proxy_manager_for(self, proxy, **proxy_kwargs):  # type: ignore[no-untyped-def]
        # Only CONNECT proxies: SOCKS (refused by the configuration) has classes of its own.
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = dict(_POOL_CLASSES)
        return manager


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


_TUNNEL_FAILED = "Tunnel connection failed: "  # http.client's words for a CONNECT refused


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
        if isinstance(item, OSError) and str(item).startswith(_TUNNEL_FAILED):
            return f"the proxy could not connect: {str(item)[len(_TUNNEL_FAILED) :]}"
        if isinstance(item, urllib3.exceptions.ProtocolError):
            return f"connection broken: {item.args[0] if item.args else item}"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS error: {exc}"
    if isinstance(exc, requests.ConnectionError):
        return "could not connect to the target"
    return f"{type(exc).__name__}: {exc}"


def kept_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The response's headers up to RESPONSE_HEADERS_CAP in all, in order; those that do not
    fit are dropped, and an entry named DROPPED_HEADERS says how many and how large."""
    items = list(headers)
    sizes = [len(name) + len(value) + 4 for name, value in items]
    if sum(sizes) <= RESPONSE_HEADERS_CAP:
        return dict(items)
    kept: dict[str, str] = {}
    room = RESPONSE_HEADERS_CAP - _DROPPED_RESERVE
    dropped = dropped_bytes = 0
    for (name, value), size in zip(items, sizes, strict=True):
        if size <= room:
            kept[name] = value
            room -= size
        else:
            dropped += 1
            dropped_bytes += size
    kept[DROPPED_HEADERS] = (
        f"{dropped} header{'s' if dropped != 1 else ''} ({dropped_bytes:,} bytes) not kept: "
        f"at most {RESPONSE_HEADERS_CAP // 1024} KiB of response headers are stored"
    )
    return kept


def _forwarded(url: str, target: egress.Target) -> tuple[str, str]:
    """An http:// URL (sent whole to a forwarding proxy) rewritten to a checked address, and
    the Host header that keeps the name."""
    parts = urllib3.util.parse_url(egress.canonical_url(url))
    ip = target.addresses[0]
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    host = f"[{target.host}]" if ":" in target.host else target.host
    if parts.port is not None:
        literal, host = f"{literal}:{parts.port}", f"{host}:{parts.port}"
    return parts._replace(host=literal, port=None, auth=None).url, host


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    ca_bundle: str | None = None,
    proxy_url: str | None = None,
    allowed_networks: Iterable[egress.Network] = (),
    allow_http: bool = False,
    allowed_ports: Iterable[tuple[int, int]] = egress.DEFAULT_PORTS,
) -> Result:
    """POST `body` once: egress-checked, no redirects, one deadline for the whole exchange,
    body read to a cap.

    The target must pass the egress guard (https:// unless `allow_http`; a port inside
    `allowed_ports`; every address public or inside `allowed_networks`); a refused target is a
    failed Result and nothing connects.
    """
    started = time.monotonic()
    exchange = _Exchange(started + timeout)
    try:
        target = egress.check_target(
            url,
            allowed_networks,
            allow_http=allow_http,
            allowed_ports=allowed_ports,
            deadline=exchange.deadline,
        )
    except egress.TargetNotAllowed as exc:
        return Result(duration_ms=_elapsed_ms(started), error=f"target not allowed: {exc}")
    except egress.LookupTimeout as exc:
        error = f"timed out after {timeout:g} s ({exc.host} did not resolve)"
        return Result(duration_ms=_elapsed_ms(started), error=error)
    except (OSError, UnicodeError):
        return Result(duration_ms=_elapsed_ms(started), error="the host name does not resolve")
    except ValueError as exc:
        return Result(duration_ms=_elapsed_ms(started), error=f"invalid URL: {exc}")
    exchange.host = _normal_host(target.host)
    exchange.addresses = target.addresses
    exchange.proxied = bool(proxy_url)
    if proxy_url and target.scheme == "http":
        url, host_header = _forwarded(url, target)
        headers = {**headers, "Host": host_header}
    _local.exchange = exchange
    token = _watchdog.watch(exchange.deadline, exchange.cut)
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
        if exchange.expired:
            # The deadline cut the socket: whatever was parsed is a fragment, never a success
            # (a status line with the headers cut off reads like a complete empty answer).
            raise TimeoutError("deadline reached")
        return Result(
            status_code=response.status_code,
            headers=kept_headers(response.headers.items()),
            body=raw.decode("utf-8", errors="replace"),
            duration_ms=_elapsed_ms(started),
        )
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        return Result(
            status_code=response.status_code if response and not exchange.expired else None,
            headers=kept_headers(response.headers.items())
            if response and not exchange.expired
            else {},
            duration_ms=_elapsed_ms(started),
            error=_describe(exc, timeout, exchange.expired),
        )
    finally:
        _watchdog.cancel(token)
        _local.exchange = None
        if response is not None:
            response.close()
