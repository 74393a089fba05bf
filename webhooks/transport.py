"""The one function through which every outbound request goes, and its result object.

Every exchange is checked by the egress guard first (`webhooks.egress`): the host is resolved,
every address must be allowed, and the connection then goes to one of those checked addresses
(TLS still uses the host name for SNI and certificate checks, and `Host` stays the name).
Through WEBHOOK_PROXY_URL the proxy is asked to `CONNECT` to that checked address, never to
the name, so it cannot resolve the name again.

Threads share urllib3's pools (one PoolManager per CA bundle and proxy), so a kept-alive
connection serves whichever thread posts to its host next. urllib3 is used alone: through
requests a POST cost about 2.5 times its CPU (bench/transport_cpu.py). The worker's own POSTs
go through `webhooks.aiotransport`, on an event loop, under the same rules (and through this
module when a proxy is configured).
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import itertools
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as _connection
from urllib3.util.ssl_ import create_urllib3_context

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

    def __post_init__(self) -> None:
        # PostgreSQL's text and JSON cannot hold NUL: one receiver answering with a NUL byte
        # failed the whole batch of results recorded with its own. Kept as U+FFFD, as bytes
        # that are not UTF-8 are.
        if "\x00" in self.body:
            self.body = _no_nul(self.body)
        if self.error is not None and "\x00" in self.error:
            self.error = _no_nul(self.error)
        if any("\x00" in name or "\x00" in value for name, value in self.headers.items()):
            self.headers = {_no_nul(name): _no_nul(value) for name, value in self.headers.items()}

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


def _no_nul(text: str) -> str:
    return text.replace("\x00", "\ufffd")


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
            if self._heap[0] is entry:
                # Only an earlier deadline changes what the thread waits for: waking it for
                # every exchange cost about 0.03 ms of CPU per POST.
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
    """One request in flight: its checked target, and the connections it holds, whose sockets
    the watchdog cuts at the deadline.

    Connections are shared by the threads through the pools, so the exchange lets go of one as
    it goes back to its pool (and of all of them as it ends): a late cut must never reach a
    connection that another exchange has taken since.
    """

    def __init__(self, deadline: float) -> None:
        self.expired = False
        self.deadline = deadline
        self.host: str | None = None  # the host name, as urllib3 spells it
        self.addresses: tuple[egress.IPAddress, ...] = ()  # the checked addresses of `host`
        self.proxied = False  # through WEBHOOK_PROXY_URL: the proxy connects to the target
        self._connections: set[Any] = set()
        self._ended = False
        self._lock = threading.Lock()

    def permits(self, conn: Any) -> bool:
        """Whether a kept-alive connection still goes where this exchange may go."""
        if not self.proxied:
            # The address it was connected to (a TCP peer never changes): no syscall per POST.
            return getattr(conn, "checked_peer", None) in self.addresses
        tunnel = getattr(conn, "_tunnel_host", None)
        if tunnel is None:
            return True  # a plain connection to the proxy itself (http:// forwarding)
        try:
            return ipaddress.ip_address(tunnel) in self.addresses
        except ValueError:
            return False

    def hold(self, conn: Any) -> None:
        with self._lock:
            if not self._ended:
                self._connections.add(conn)

    def let_go(self, conn: Any) -> None:
        with self._lock:
            self._connections.discard(conn)

    def cut(self) -> None:
        """Shut the sockets of the connections held (the reading thread then sees the end)."""
        with self._lock:
            if self._ended:
                return
            self.expired = True
            for conn in self._connections:
                _shut(conn.sock)

    def end(self) -> bool:
        """No cut from now on; whether the exchange ended before its deadline cut it."""
        with self._lock:
            self._ended = True
            self._connections.clear()
            return not self.expired


def _shut(sock: Any) -> None:
    """Shut a connection's socket down under its TLS layers (an SSLSocket's own shutdown
    would drop its TLS state under the thread reading it)."""
    while sock is not None and not isinstance(sock, socket.socket):
        sock = getattr(sock, "socket", None)  # TLS in TLS: an SSLTransport over the proxy's
    if sock is None:
        return
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def normal_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


class _Tracked:
    """Mixin for urllib3 connections: connect to the exchange's checked address, never to a
    fresh resolution of the name."""

    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    checked_peer: egress.IPAddress | None = None

    def _new_conn(self) -> socket.socket:
        exchange: _Exchange | None = getattr(_local, "exchange", None)
        if exchange is not None and exchange.proxied:
            return super()._new_conn()  # type: ignore[misc]  # the trusted proxy
        return self._connect_checked(exchange)

    def _connect_checked(self, exchange: _Exchange | None) -> socket.socket:
        """A socket to one of the addresses the egress guard checked for this host, never to a
        fresh resolution of the name; `checked_peer` says which."""
        if (
            exchange is None
            or exchange.host is None
            or normal_host(self.host) != exchange.host
            or not exchange.addresses
        ):
            raise NewConnectionError(self, f"{self.host} was not checked by the egress guard")  # type: ignore[arg-type]  # a mixin of an HTTPConnection
        error: OSError | None = None
        for ip in exchange.addresses:
            left = exchange.deadline - time.monotonic()
            if left <= 0:
                break
            wait = left if not isinstance(self.timeout, int | float) else min(self.timeout, left)
            try:
                sock = _connection.create_connection(
                    (str(ip), self.port),
                    wait,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except OSError as exc:  # socket.timeout included
                error = exc
            else:
                self.checked_peer = ip
                return sock
        if error is None or isinstance(error, TimeoutError):
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from error
        message = f"Failed to establish a new connection: {error}"
        raise NewConnectionError(self, message) from error  # type: ignore[arg-type]  # a mixin

    def request(self, *args: Any, **kwargs: Any) -> None:
        name = getattr(self, "tunnel_host_header", None)
        if name is not None and getattr(self, "_tunnel_host", None) is not None:
            # http.client would name the tunnel's address literal in Host; keep the name.
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "Host": name}
        super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Tracked, HTTPConnection):
    pass


class _HTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _Pinned:
    """Mixin for urllib3 pools: a kept-alive connection is reused only while its peer is one of
    the addresses checked for this exchange (DNS may have changed since it was opened), and the
    exchange holds the connections it takes (for the watchdog) until they are put back."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        sock = getattr(conn, "sock", None)
        exchange: _Exchange | None = getattr(_local, "exchange", None)
        if sock is not None and (exchange is None or not exchange.permits(conn)):
            conn.close()  # urllib3 connects it again, through _new_conn (or the proxy's CONNECT)
        if exchange is not None:
            exchange.hold(conn)
        return conn

    def _put_conn(self, conn: Any) -> None:
        exchange: _Exchange | None = getattr(_local, "exchange", None)
        if exchange is not None and conn is not None:
            exchange.let_go(conn)
        super()._put_conn(conn)  # type: ignore[misc]


class _HTTPPool(_Pinned, HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(_Pinned, HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection

    def _prepare_proxy(self, conn: Any) -> None:
        """CONNECT to a checked address, tried in turn, while TLS checks the certificate for the
        name (SNI and hostname): the proxy never sees the name, so it cannot resolve it again."""
        exchange: _Exchange | None = getattr(_local, "exchange", None)
        name = normal_host(self.host)
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


# Connections kept per host: as many as a worker's POST slots (32), so that a host that many
# webhooks share (a chat service's incoming hooks) does not make urllib3 discard connections.
POOL_MAXSIZE = 32
POOL_HOSTS = 128  # hosts whose kept-alive connections are kept, the least recently used dropped


def tls_context(cafile: str) -> ssl.SSLContext:
    """Verification against `cafile` alone: nothing read from the environment
    (REQUESTS_CA_BUNDLE, SSL_CERT_FILE, SSL_CERT_DIR) can widen or replace it."""
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    context.load_verify_locations(cafile=cafile)
    return context


def _proxy_headers(proxy_url: str) -> dict[str, str]:
    """Proxy-Authorization from the proxy URL's user and password (urllib3 leaves them)."""
    auth = urllib3.util.parse_url(proxy_url).auth
    if not auth:
        return {}
    user, _, password = auth.partition(":")
    basic = urllib3.util.make_headers(proxy_basic_auth=f"{unquote(user)}:{unquote(password)}")
    return {"Proxy-Authorization": basic["proxy-authorization"]}


def _manager(cafile: str, proxy_url: str | None) -> urllib3.PoolManager:
    context = tls_context(cafile)
    options: dict[str, Any] = {
        "num_pools": POOL_HOSTS,
        "maxsize": POOL_MAXSIZE,
        "block": False,
        "retries": False,
        "cert_reqs": ssl.CERT_REQUIRED,
        "ssl_context": context,
    }
    manager: urllib3.PoolManager
    if proxy_url:
        # Only CONNECT proxies: SOCKS (refused by the configuration) has classes of its own.
        # The proxy's own TLS, if any, is checked against the same CAs.
        manager = urllib3.ProxyManager(
            proxy_url, proxy_headers=_proxy_headers(proxy_url), proxy_ssl_context=context, **options
        )
    else:
        manager = urllib3.PoolManager(**options)
    manager.pool_classes_by_scheme = dict(_POOL_CLASSES)
    return manager


class _Managers:
    """One PoolManager per CA file and proxy URL, shared by every thread (urllib3's pools are
    thread-safe). A CA file replaced on disk gets a new manager, so new connections trust what
    it says now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, str | None], tuple[tuple[int, ...], urllib3.PoolManager]] = {}

    def get(self, ca_bundle: str | None, proxy_url: str | None) -> urllib3.PoolManager:
        """Raises OSError or ssl.SSLError if the CA file cannot be read."""
        cafile = ca_bundle or certifi.where()
        stat = os.stat(cafile)
        version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        key = (cafile, proxy_url)
        held = self._by_key.get(key)
        if held is not None and held[0] == version:
            return held[1]
        with self._lock:
            held = self._by_key.get(key)
            if held is None or held[0] != version:
                if held is not None:
                    held[1].clear()  # idle connections close; those in use end with their POST
                held = (version, _manager(cafile, proxy_url))
                self._by_key[key] = held
            return held[1]


_managers = _Managers()


_TUNNEL_FAILED = "Tunnel connection failed: "  # http.client's words for a CONNECT refused


def describe(exc: BaseException, timeout: float, expired: bool) -> str:
    """A sentence a person understands for a failed exchange (the worker's loop words its own
    failures with it too: `aiotransport.describe`)."""
    if expired or _timed_out(exc):
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
    if isinstance(exc, urllib3.exceptions.SSLError):
        return f"TLS error: {exc}"
    if isinstance(exc, _CONNECTING_ERRORS):
        return "could not connect to the target"
    return f"{type(exc).__name__}: {exc}"


_CONNECTING_ERRORS = (
    OSError,
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ProxyError,
    urllib3.exceptions.PoolError,
    urllib3.exceptions.ProtocolError,
)


def _timed_out(exc: BaseException) -> bool:
    """A connect or read timeout (urllib3 still files a refused connection under its connect
    timeouts, for compatibility)."""
    return isinstance(exc, urllib3.exceptions.TimeoutError) and not isinstance(
        exc, NewConnectionError
    )


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
    if parts.port is not None:
        literal = f"{literal}:{parts.port}"
    return parts._replace(host=literal, port=None, auth=None).url, host_header(parts, target)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_header(parts: urllib3.util.Url, target: egress.Target) -> str:
    """`Host` as http.client writes it: the name, with the port unless it is the scheme's."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme or ""):
        return f"{host}:{parts.port}"
    return host


def elapsed_ms(started: float) -> int:
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
    checked = vetted(url, timeout, exchange.deadline, allowed_networks, allow_http, allowed_ports)
    if isinstance(checked, str):
        return Result(duration_ms=elapsed_ms(started), error=checked)
    url, target = checked
    exchange.host = normal_host(target.host)
    exchange.addresses = target.addresses
    exchange.proxied = bool(proxy_url)
    headers = request_headers(headers)
    if proxy_url and target.scheme == "http":
        url, host_header = _forwarded(url, target)
        headers["Host"] = host_header
    try:
        manager = _managers.get(ca_bundle, proxy_url)
    except (OSError, ssl.SSLError) as exc:
        error = f"the CA bundle {ca_bundle or certifi.where()} cannot be loaded: {exc}"
        return Result(duration_ms=elapsed_ms(started), error=error)
    return _exchange(manager, url, body, headers, timeout, exchange, started)


def vetted(
    url: str,
    timeout: float,
    deadline: float,
    allowed_networks: Iterable[egress.Network],
    allow_http: bool,
    allowed_ports: Iterable[tuple[int, int]],
) -> tuple[str, egress.Target] | str:
    """The URL as it is sent (IDNA host, quoted path) and its checked target, or the error."""
    try:
        canonical = _canonical_url(url)
        target = egress.check_target(
            canonical,
            allowed_networks,
            allow_http=allow_http,
            allowed_ports=allowed_ports,
            deadline=deadline,
        )
    except egress.TargetNotAllowed as exc:
        return f"target not allowed: {exc}"
    except egress.LookupTimeout as exc:
        return f"timed out after {timeout:g} s ({exc.host} did not resolve)"
    except (OSError, UnicodeError):
        return "the host name does not resolve"
    except ValueError as exc:
        return f"invalid URL: {exc}"
    return canonical, target


@functools.lru_cache(maxsize=1024)
def _canonical_url(url: str) -> str:
    """egress.canonical_url, remembered: a worker posts to the same few URLs again and again,
    and preparing one takes 30-40 µs."""
    return egress.canonical_url(url)


def request_headers(headers: dict[str, str]) -> dict[str, str]:
    """The caller's headers over the ones every POST has always sent (those of requests,
    with our User-Agent); a name in any case replaces the default."""
    merged = dict(_defaults_left(tuple(headers)))
    merged.update(headers)
    return merged


@functools.lru_cache(maxsize=256)
def _defaults_left(names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The default headers that none of `names` replaces (deliveries send the same names
    every time: remembered)."""
    given = {name.lower() for name in names}
    return tuple((n, v) for n, v in _DEFAULT_HEADERS.items() if n.lower() not in given)


_DEFAULT_HEADERS = {
    "User-Agent": USER_AGENT,
    "Accept-Encoding": "gzip, deflate",
    "Accept": "*/*",
    "Connection": "keep-alive",
}


def _exchange(
    manager: urllib3.PoolManager,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    exchange: _Exchange,
    started: float,
) -> Result:
    """The POST itself, watched by the deadline; its connection goes back to the pool only if
    the answer was read whole and in time."""
    _local.exchange = exchange
    token = _watchdog.watch(exchange.deadline, exchange.cut)
    response: urllib3.BaseHTTPResponse | None = None
    whole = False
    try:
        response = manager.urlopen(
            "POST",
            url,
            body=body,
            headers=headers,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            retries=False,
            redirect=False,
            preload_content=False,
        )
        raw = response.read(RESPONSE_BODY_CAP + 1)
        whole = len(raw) <= RESPONSE_BODY_CAP
        if not exchange.end():
            # The deadline cut the socket: whatever was parsed is a fragment, never a success
            # (a status line with the headers cut off reads like a complete empty answer).
            raise TimeoutError("deadline reached")
        return Result(
            status_code=response.status,
            headers=kept_headers(response.headers.items()),
            body=raw[:RESPONSE_BODY_CAP].decode("utf-8", errors="replace"),
            duration_ms=elapsed_ms(started),
        )
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        # What arrived before a failure is kept, unless the deadline cut it (then a fragment).
        answer = response if exchange.end() else None
        return Result(
            status_code=answer.status if answer is not None else None,
            headers=kept_headers(answer.headers.items()) if answer is not None else {},
            duration_ms=elapsed_ms(started),
            error=describe(exc, timeout, exchange.expired),
        )
    finally:
        exchange.end()
        _watchdog.cancel(token)
        if response is not None:
            _release(response, whole and not exchange.expired)
        _local.exchange = None


def _release(response: urllib3.BaseHTTPResponse, whole: bool) -> None:
    """Back to the pool if the answer was read whole; otherwise the connection is closed (its
    slot returns to the pool, and it connects afresh when next taken)."""
    if not whole:
        response.close()
    response.release_conn()
