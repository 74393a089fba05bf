"""The worker's POSTs on one event loop: the rules of `webhooks.transport`, without a thread
per POST in flight, and with no HTTP library's machinery around each exchange.

A thread per POST cost a worker three times the CPU of the same POSTs made one after another
(every blocking call hands Python's lock to another thread); one loop thread costs less than
either (bench/transport_cpu.py). Each exchange here is one write of the request and one parse
of the answer by llhttp, Node.js's parser (`httptools`, in C) on an asyncio protocol: a
general client's request and response objects, streams and tasks per exchange were a quarter
of a worker's CPU. What `transport.post` promises holds here:

- the egress guard checks the target before anything connects, and the connection goes to
  one of the checked addresses: the request is made to that address, with the name in `Host`,
  in SNI and in the certificate check, and a kept-alive connection is reused only for the same
  checked address and the same verified name (the pool's key);
- one deadline for the whole exchange (connect, TLS, request, answer);
- at most RESPONSE_BODY_CAP bytes of the answer read (a gzip or deflate body inflated no
  further), its headers kept to RESPONSE_HEADERS_CAP, and parsed within http.client's own
  bounds (a line of 64 KiB, fewer than 100 headers);
- TLS always verified, against WEBHOOK_CA_BUNDLE alone (nothing read from the environment),
  a bundle replaced on disk trusted for new connections;
- no redirects, no cookies, no proxy settings from the environment.

Sends through WEBHOOK_PROXY_URL keep to `transport.post` (on a thread): its CONNECT to a
checked address is urllib3's.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import functools
import os
import re
import ssl
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

import certifi
import httptools
import urllib3

from webhooks import egress, transport
from webhooks.transport import RESPONSE_BODY_CAP, Result, elapsed_ms

# http.client's bounds on what a response's head may be: a line of 64 KiB, and fewer than 100
# headers (it refuses a hundredth).
MAX_LINE = 65536
MAX_HEADERS = 99
MAX_HEAD = (MAX_HEADERS + 1) * MAX_LINE  # what the parser may hold before the head is whole
# A kept-alive connection unused this long is closed (receivers close theirs after 60-75 s).
KEEP_ALIVE = 15.0
# A pool left for a replaced CA bundle closes once its POSTs have had their time.
CLOSE_AFTER = 120.0
# asyncio gives every TLS connection a read buffer of 256 KiB, written whole when it is made:
# 8 MB of a worker's memory for 32 kept-alive connections. A TLS record holds at most 16 KiB.
asyncio.sslproto.SSLProtocol.max_size = 16 * 1024
# What may stand in a header's name and value (RFC 9110 tokens; no CR, LF or NUL in a value).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[^\r\n\x00]*")


class Broken(Exception):
    """The answer could not be read as HTTP: the text says why ("connection broken: …")."""


class Client:
    """Pools of kept-alive connections, one per CA bundle: used on one event loop only."""

    def __init__(self) -> None:
        self._pools: dict[str, tuple[tuple[int, ...], Pool]] = {}
        self._retired: set[Pool] = set()  # replaced, closed a while later

    def session(self, ca_bundle: str | None) -> Pool:
        """The pool that trusts `ca_bundle` as it is on disk now. Raises OSError or
        ssl.SSLError if the CA file cannot be read."""
        cafile = ca_bundle or certifi.where()
        stat = os.stat(cafile)
        version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        held = self._pools.get(cafile)
        if held is not None and held[0] == version:
            return held[1]
        pool = Pool(transport.tls_context(cafile))
        if held is not None:  # idle connections of the old bundle close when it does
            self._retired.add(held[1])
            asyncio.get_running_loop().call_later(CLOSE_AFTER, self._close_retired, held[1])
        self._pools[cafile] = (version, pool)
        return pool

    def _close_retired(self, pool: Pool) -> None:
        self._retired.discard(pool)
        pool.close()

    async def close(self) -> None:
        for pool in [*(held[1] for held in self._pools.values()), *self._retired]:
            pool.close()
        self._pools.clear()
        self._retired.clear()

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        timeout: float,
        ca_bundle: str | None = None,
        allowed_networks: Any = (),
        allow_http: bool = False,
        allowed_ports: Any = egress.DEFAULT_PORTS,
        session: Pool | None = None,
    ) -> Result:
        """`transport.post` without a proxy, on the running loop. `session` is what
        `session(ca_bundle)` answered for this batch of POSTs (default: asked now)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        rules = (allowed_networks, allow_http, allowed_ports)
        checked = _literal(url, *rules)
        if checked is None:  # a name: its lookup blocks, on a thread, as `transport` bounds it
            check = (url, timeout, deadline, *rules)
            checked = await loop.run_in_executor(None, transport.vetted, *check)
        if isinstance(checked, str):
            return Result(duration_ms=elapsed_ms(started), error=checked)
        url, target = checked
        try:
            pool = session or self.session(ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            error = f"the CA bundle {ca_bundle or certifi.where()} cannot be loaded: {exc}"
            return Result(duration_ms=elapsed_ms(started), error=error)
        route = _route(url, target)
        try:
            head = _head(route, transport.request_headers(headers), len(body))
        except ValueError as exc:
            return Result(duration_ms=elapsed_ms(started), error=f"ValueError: {exc}")
        return await _Exchange(pool, route, head, body, timeout, started).run(deadline)


@functools.lru_cache(maxsize=256)
def _literal(
    url: str, allowed_networks: Any, allow_http: bool, allowed_ports: Any
) -> tuple[str, egress.Target] | str | None:
    """The egress guard's verdict on a URL whose host is an address: nothing to look up, so
    the same at every POST under the same rules (a worker posts to the same few URLs again and
    again); None for a name, whose addresses are looked up at every POST."""
    try:
        host = urllib3.util.parse_url(url).host or ""
    except urllib3.exceptions.LocationParseError:
        return None  # `transport.vetted` says what is wrong with it
    if egress.parse_literal(host) is None:
        return None
    return transport.vetted(url, 0.0, time.monotonic(), allowed_networks, allow_http, allowed_ports)


@dataclass(frozen=True)
class _Route:
    """Where a checked URL's POST goes: each checked address (tried in turn), the port, the
    request line's target, the Host header, and the name for SNI and the certificate (None
    for an address, which the certificate must then name), or no TLS at all."""

    addresses: tuple[str, ...]
    port: int
    path: str
    host: str
    tls: bool
    sni: str | None


@functools.lru_cache(maxsize=256)
def _route(url: str, target: egress.Target) -> _Route:
    parts = urllib3.util.parse_url(url)
    name = transport.normal_host(target.host)
    path = parts.path or "/"
    return _Route(
        addresses=tuple(str(ip) for ip in target.addresses),
        port=target.port,
        path=f"{path}?{parts.query}" if parts.query is not None else path,
        host=transport.host_header(parts, target),
        tls=parts.scheme == "https",
        sni=None if egress.parse_literal(name) is not None else name,
    )


def _head(route: _Route, headers: dict[str, str], length: int) -> bytes:
    """The request line and headers; ValueError for a header no HTTP message may carry."""
    lines = [f"POST {route.path} HTTP/1.1", f"Host: {route.host}"]
    for name, value in headers.items():
        if name.lower() in ("host", "content-length"):
            continue  # ours, from the route and the body
        if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"header {name!r} cannot be sent: a newline or an invalid character")
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {length}\r\n\r\n")
    return "\r\n".join(lines).encode()


Key = tuple[str, int, bool, str | None]  # (address, port, TLS, SNI name)


class Pool:
    """Kept-alive connections by (checked address, port, TLS, verified name), at most
    `transport.POOL_MAXSIZE` to each: a POST beyond them waits for one to be free, inside its
    deadline (each costs the worker about 100 KB while it is kept alive)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self._idle: dict[Key, list[_Connection]] = {}
        self._open: dict[Key, int] = {}  # connections open or opening, per key
        self._waiting: dict[Key, deque[asyncio.Future[None]]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self.closed = False

    async def connection(self, key: Key) -> _Connection:
        """A kept-alive connection for `key`, or a new one (`open` then connects it)."""
        while True:
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if conn.usable():
                    return conn
                self._gone(key)
            if self._open.get(key, 0) < transport.POOL_MAXSIZE:
                self._open[key] = self._open.get(key, 0) + 1
                return _Connection(self, key)
            freed = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(key, deque()).append(freed)
            try:
                await freed
            except asyncio.CancelledError:
                if freed.done() and not freed.cancelled():
                    self._wake(key)  # woken as the deadline struck: the next one goes
                raise

    def give_back(self, conn: _Connection, reuse: bool) -> None:
        """The exchange is over: keep the connection for the next POST, or drop it (an
        exchange that was cut or failed leaves nothing worth closing gracefully)."""
        if reuse and not self.closed and conn.usable():
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.key, []).append(conn)
            if self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(KEEP_ALIVE, self._close_idle)
        else:
            conn.abort()
            self._gone(conn.key)
        self._wake(conn.key)

    def _gone(self, key: Key) -> None:
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)

    def _wake(self, key: Key) -> None:
        waiting = self._waiting.get(key)
        while waiting:
            freed = waiting.popleft()
            if not freed.done():
                freed.set_result(None)
                break
        if not waiting:
            self._waiting.pop(key, None)

    def _close_idle(self) -> None:
        """Close the connections kept longer than KEEP_ALIVE without a POST."""
        self._sweep = None
        oldest = time.monotonic() - KEEP_ALIVE
        for key, idle in list(self._idle.items()):
            for conn in [c for c in idle if c.idle_since < oldest or not c.usable()]:
                idle.remove(conn)
                conn.close()
                self._gone(key)
            if not idle:
                del self._idle[key]
        if self._idle and not self.closed:
            self._sweep = asyncio.get_running_loop().call_later(KEEP_ALIVE, self._close_idle)

    def close(self) -> None:
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        self._open.clear()


@dataclass
class _Answer:
    """A whole answer, or as much as its cap allowed (`whole` False: not reusable)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    whole: bool


class _Connection(asyncio.Protocol):
    """One connection, one exchange at a time: the request is written whole, the answer
    parsed by llhttp as it arrives."""

    def __init__(self, pool: Pool, key: Key) -> None:
        self.pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._lost = False
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[_Answer] | None = None
        self._new_message()

    def _new_message(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self._line = 0  # bytes of the status line or header being read
        self._sized = False  # the answer has a Content-Length
        self._chunked = False
        self._body: list[bytes] = []
        self._size = 0
        self._inflate: Any = None
        self._head_done = False
        self._head_size = 0  # bytes received before the head was whole

    # -- use ----------------------------------------------------------------------------------

    async def open(self, address: str) -> None:
        """Connect to `address` (TLS with the pool's context, verifying the key's name, or the
        address itself when there is none)."""
        _, port, tls, sni = self.key
        await _connect(
            lambda: self,
            address,
            port,
            ssl=self.pool.context if tls else None,
            server_hostname=(sni or address) if tls else None,
        )

    def usable(self) -> bool:
        return self.transport is not None and not self._lost and not self.transport.is_closing()

    async def exchange(self, head: bytes, body: bytes) -> _Answer:
        assert self.transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._new_message()
        self.transport.writelines((head, body))
        return await self._answer

    def close(self) -> None:
        self._lost = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (a deadline or a failure cut the exchange)."""
        self._lost = True
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            self.abort()  # bytes nobody asked for: the connection cannot be trusted again
            return
        if not self._head_done:
            self._head_size += len(data)
            if self._head_size > MAX_HEAD:
                self._fail(Broken(f"the answer's head is over {MAX_HEAD} bytes"))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Broken("the target switched protocols"))
        except httptools.HttpParserCallbackError as exc:
            self._fail(exc.__context__ or Broken(str(exc)))
        except httptools.HttpParserError as exc:
            self._fail(Broken(str(exc) or "invalid HTTP response"))

    def eof_received(self) -> bool:
        self._ended(None)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._ended(exc)

    def _ended(self, exc: Exception | None) -> None:
        """The target closed the connection (`exc`: how) before or during an answer."""
        if self._answer is None or self._answer.done():
            return
        if exc is None and self._head_done and self._until_close():
            self._complete(whole=False)  # a body that ends where the connection does
        elif isinstance(exc, OSError):
            self._fail(exc)
        elif self._head_done:
            self._fail(Broken("the answer ended before its body did"))
        else:
            self._fail(ConnectionResetError("the target closed the connection"))

    def _until_close(self) -> bool:
        """The answer's body runs until the connection closes (no length, not chunked)."""
        return not (self._sized or self._chunked)

    # -- llhttp's callbacks -------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._grow(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value) + 2)
        self._line = 0
        if len(self.headers) >= MAX_HEADERS:
            raise Broken(f"got more than {MAX_HEADERS} headers")
        text_name, text_value = name.decode("latin-1"), value.decode("latin-1")
        self.headers.append((text_name, text_value))
        lowered = text_name.lower()
        if lowered == "content-length":
            self._sized = True
        elif lowered == "transfer-encoding" and "chunked" in text_value.lower():
            self._chunked = True
        elif lowered == "content-encoding":
            self._inflate = _inflater(text_value)

    def _grow(self, size: int) -> None:
        self._line += size
        if self._line > MAX_LINE:
            raise Broken(f"a line of the answer is over {MAX_LINE} bytes")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim answer: the final one follows
        self.status = status
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        if self._inflate is not None:
            try:
                body = self._inflate(body, RESPONSE_BODY_CAP + 1 - self._size)
            except zlib.error as exc:
                raise Broken(f"the body cannot be decoded: {exc}") from None
        self._body.append(body)
        self._size += len(body)
        if self._size > RESPONSE_BODY_CAP:
            self._complete(whole=False)  # enough: the rest is not read

    def on_message_complete(self) -> None:
        if not self._head_done:
            self._new_message()  # the interim answer ended
            return
        self._complete(whole=self._parser.should_keep_alive())

    # -- ending -------------------------------------------------------------------------------

    def _complete(self, whole: bool) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            body = b"".join(self._body)
            assert self.status is not None
            answer.set_result(_Answer(self.status, self.headers, body, whole))
        if not whole:
            self.abort()

    def _fail(self, exc: BaseException) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_exception(exc)
        self.abort()


def _inflater(encoding: str) -> Any:
    """A function that inflates a gzip or deflate body piece by piece, never beyond what is
    asked of it; None for any other coding (kept as it came)."""
    coding = encoding.strip().lower()
    decompress: Any
    if coding in ("gzip", "x-gzip"):
        decompress = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress
    elif coding == "deflate":
        decompress = _Deflate().decompress
    else:
        return None
    return lambda data, most: decompress(data, max(1, most))


class _Deflate:
    """ "deflate" as servers send it: zlib-wrapped, or raw (as urllib3 also accepts)."""

    def __init__(self) -> None:
        self._first = True
        self._obj = zlib.decompressobj()

    def decompress(self, data: bytes, most: int) -> bytes:
        if not self._first:
            return self._obj.decompress(data, most)
        self._first = False
        try:
            return self._obj.decompress(data, most)
        except zlib.error:
            self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._obj.decompress(data, most)


async def _connect(factory: Any, host: str, port: int, **kwargs: Any) -> Any:
    """The one place a connection is opened (tests watch it)."""
    return await asyncio.get_running_loop().create_connection(factory, host, port, **kwargs)


class _Exchange:
    """One POST: tried at each checked address in turn until one connects."""

    def __init__(
        self, pool: Pool, route: _Route, head: bytes, body: bytes, timeout: float, started: float
    ) -> None:
        self.pool, self.route, self.head, self.body = pool, route, head, body
        self.timeout, self.started = timeout, started
        self.conn: _Connection | None = None

    async def run(self, deadline: float) -> Result:
        error: BaseException | None = None
        expired = False
        answer: _Answer | None = None
        try:
            async with asyncio.timeout_at(deadline):
                answer = await self._post()
        except TimeoutError as exc:
            error, expired = exc, True
        except (OSError, ValueError, Broken) as exc:  # ssl.SSLError is an OSError
            error = exc
        finally:
            if self.conn is not None:
                reuse = error is None and answer is not None and answer.whole
                self.pool.give_back(self.conn, reuse)
        if answer is not None:
            return Result(
                status_code=answer.status,
                headers=transport.kept_headers(answer.headers),
                body=answer.body[:RESPONSE_BODY_CAP].decode("utf-8", errors="replace"),
                duration_ms=elapsed_ms(self.started),
            )
        # What arrived before a failure is kept, unless the deadline cut it (then a fragment).
        conn = None if expired else self.conn
        status = conn.status if conn is not None else None
        return Result(
            status_code=status,
            headers=transport.kept_headers(conn.headers) if conn is not None and status else {},
            duration_ms=elapsed_ms(self.started),
            error=describe(error, self.timeout, expired),
        )

    async def _post(self) -> _Answer:
        route = self.route
        refused: OSError | None = None
        for address in route.addresses:
            key = (address, route.port, route.tls, route.sni)
            conn = self.conn = await self.pool.connection(key)
            if conn.transport is None:  # a new one
                try:
                    await conn.open(address)
                except ssl.SSLError:
                    raise  # the address answered, with a certificate or a handshake we refuse
                except OSError as exc:  # this address does not answer: the next one
                    self.conn = None
                    self.pool.give_back(conn, reuse=False)
                    refused = exc
                    continue
            return await conn.exchange(self.head, self.body)
        assert refused is not None
        raise _NotConnected(refused)


class _NotConnected(OSError):
    """No checked address accepted a connection (the last one's error is the cause)."""

    def __init__(self, last: OSError) -> None:
        super().__init__(str(last))
        self.last = last


def describe(exc: BaseException | None, timeout: float, expired: bool) -> str:
    """The sentence `transport` writes for the same failure (`transport.describe`), and ours
    for what only this client meets: an answer it could not read, and a connection that
    broke under a request it was writing."""
    if isinstance(exc, Broken):
        return f"connection broken: {exc}"
    if isinstance(exc, _NotConnected):
        if isinstance(exc.last, ConnectionRefusedError):
            return transport.describe(exc.last, timeout, expired)
        return "could not connect to the target"
    if isinstance(exc, BrokenPipeError | ConnectionAbortedError):
        return "connection reset by the target"
    if exc is None:
        return "could not connect to the target"
    return transport.describe(exc, timeout, expired)
