"""The worker's POSTs on one event loop: the rules of `webhooks.transport`, without a thread
per POST in flight.

A thread per POST cost a worker three times the CPU of the same POSTs made one after another
(every blocking call hands Python's lock to another thread); one loop thread with aiohttp
costs less than either (bench/transport_cpu.py). What `transport.post` promises holds here:

- the egress guard checks the target before anything connects, and the connection goes to
  one of the checked addresses: the request is made to that address, with the name in `Host`,
  in SNI and in the certificate check, so aiohttp's pool (keyed by address and name) reuses a
  kept-alive connection only for the same checked address and the same verified name;
- one deadline for the whole exchange (connect, TLS, request, answer);
- at most RESPONSE_BODY_CAP bytes of the answer read, its headers kept to
  RESPONSE_HEADERS_CAP, and parsed within http.client's own bounds;
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
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import certifi
import urllib3
from yarl import URL

from webhooks import egress, transport
from webhooks.transport import RESPONSE_BODY_CAP, Result, elapsed_ms

# http.client's bounds on what a response's head may be: a line of 64 KiB, and fewer than 100
# headers (it refuses a hundredth; aiohttp counts them so that 99 allows the same).
MAX_LINE = 65536
MAX_HEADERS = 99
# A session left for a replaced CA bundle closes once its POSTs have had their time.
CLOSE_AFTER = 120.0
_DEFAULT_PORTS = {"http": 80, "https": 443}
# asyncio gives every TLS connection a read buffer of 256 KiB, written whole when it is made:
# 8 MB of a worker's memory for 32 kept-alive connections. A TLS record holds at most 16 KiB.
asyncio.sslproto.SSLProtocol.max_size = 16 * 1024


class Client:
    """aiohttp sessions, one per CA bundle: used on one event loop only."""

    def __init__(self) -> None:
        self._sessions: dict[str, tuple[tuple[int, ...], aiohttp.ClientSession]] = {}
        self._retired: set[aiohttp.ClientSession] = set()  # replaced, closed a while later

    def session(self, ca_bundle: str | None) -> aiohttp.ClientSession:
        """Raises OSError or ssl.SSLError if the CA file cannot be read."""
        cafile = ca_bundle or certifi.where()
        stat = os.stat(cafile)
        version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        held = self._sessions.get(cafile)
        if held is not None and held[0] == version:
            return held[1]
        session = aiohttp.ClientSession(
            # At most as many connections to one host as `transport` keeps (a POST beyond
            # them waits for one to be free, inside its deadline): each costs the worker about
            # 100 KB while it is kept alive.
            connector=aiohttp.TCPConnector(
                ssl=transport.tls_context(cafile),
                limit=0,
                limit_per_host=transport.POOL_MAXSIZE,
                use_dns_cache=False,
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Content-Type", "Accept", "Accept-Encoding"),
            timeout=aiohttp.ClientTimeout(total=None),
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            max_headers=MAX_HEADERS,
            trust_env=False,
        )
        if held is not None:  # idle connections of the old bundle close when it does
            self._retired.add(held[1])
            asyncio.get_running_loop().call_later(CLOSE_AFTER, self._close_retired, held[1])
        self._sessions[cafile] = (version, session)
        return session

    def _close_retired(self, session: aiohttp.ClientSession) -> None:
        self._retired.discard(session)
        asyncio.ensure_future(session.close())

    async def close(self) -> None:
        for session in [*(held[1] for held in self._sessions.values()), *self._retired]:
            await session.close()
        self._sessions.clear()
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
        session: aiohttp.ClientSession | None = None,
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
            session = session or self.session(ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            error = f"the CA bundle {ca_bundle or certifi.where()} cannot be loaded: {exc}"
            return Result(duration_ms=elapsed_ms(started), error=error)
        route = _route(url, target)
        headers = transport.request_headers(headers)
        headers["Host"] = route.host
        exchange = _Exchange(session, body, headers, route.sni, timeout, started)
        return await exchange.run(route.urls, deadline)


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
    """Where a checked URL's POST goes: the URL at each checked address, the Host header, and
    the name for SNI and the certificate (None for an address)."""

    urls: tuple[URL, ...]
    host: str
    sni: str | None


@functools.lru_cache(maxsize=256)
def _route(url: str, target: egress.Target) -> _Route:
    parts = urllib3.util.parse_url(url)
    name = transport.normal_host(target.host)
    return _Route(
        urls=tuple(_pinned(parts, ip) for ip in target.addresses),
        host=_host_header(parts, target),
        sni=None if egress.parse_literal(name) is not None else name,
    )


class _Exchange:
    """One POST: tried at each checked address in turn until one connects."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        body: bytes,
        headers: dict[str, str],
        sni: str | None,
        timeout: float,
        started: float,
    ) -> None:
        self.session, self.body, self.headers, self.sni = session, body, headers, sni
        self.timeout, self.started = timeout, started
        self.response: aiohttp.ClientResponse | None = None

    async def run(self, urls: tuple[URL, ...], deadline: float) -> Result:
        error: BaseException | None = None
        expired = False
        try:
            async with asyncio.timeout_at(deadline):
                for pinned in urls:
                    try:
                        return await self._once(pinned)
                    except aiohttp.ClientConnectorError as exc:
                        if isinstance(exc, aiohttp.ClientSSLError):
                            raise
                        error = exc  # this address does not answer: the next one
                assert error is not None
                raise error
        except TimeoutError as exc:
            error, expired = exc, True
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            error = exc
        finally:
            if self.response is not None and error is not None:
                self.response.close()
        # What arrived before a failure is kept, unless the deadline cut it (then a fragment).
        answer = None if expired else self.response
        return Result(
            status_code=answer.status if answer is not None else None,
            headers=transport.kept_headers(answer.headers.items()) if answer is not None else {},
            duration_ms=elapsed_ms(self.started),
            error=describe(error, self.timeout, expired),
        )

    async def _once(self, pinned: URL) -> Result:
        response = self.response = await self.session.post(
            pinned,
            data=self.body,
            headers=self.headers,
            server_hostname=self.sni,
            allow_redirects=False,
        )
        raw = await _read(response.content, RESPONSE_BODY_CAP + 1)
        if len(raw) <= RESPONSE_BODY_CAP:
            response.release()  # read whole: the connection is kept alive
        else:
            response.close()
        return Result(
            status_code=response.status,
            headers=transport.kept_headers(response.headers.items()),
            body=raw[:RESPONSE_BODY_CAP].decode("utf-8", errors="replace"),
            duration_ms=elapsed_ms(self.started),
        )


async def _read(content: aiohttp.StreamReader, most: int) -> bytes:
    """Up to `most` bytes of the body (aiohttp's read(n) returns what has arrived)."""
    chunks: list[bytes] = []
    size = 0
    while size < most:
        chunk = await content.read(most - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _pinned(parts: urllib3.util.Url, ip: egress.IPAddress) -> URL:
    """The URL with a checked address in place of the name."""
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    return URL(parts._replace(host=literal, auth=None).url, encoded=True)


def _host_header(parts: urllib3.util.Url, target: egress.Target) -> str:
    """`Host` as http.client writes it: the name, with the port unless it is the scheme's."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme or ""):
        return f"{host}:{parts.port}"
    return host


def describe(exc: BaseException | None, timeout: float, expired: bool) -> str:
    """The sentence `transport` writes for the same failure."""
    if expired or isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return f"timed out after {timeout:g} s (connect and response)"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        error = exc.certificate_error
        reason = getattr(error, "verify_message", None) or getattr(error, "reason", None) or error
        return f"TLS certificate not accepted: {reason}"
    if isinstance(exc, aiohttp.ClientSSLError):
        os_error = getattr(exc, "os_error", None)
        return f"TLS handshake failed: {getattr(os_error, 'reason', None) or os_error or exc}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        return "could not connect to the target"
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return "connection reset by the target"
    if isinstance(exc, aiohttp.ClientOSError) and isinstance(exc.__cause__, ConnectionResetError):
        return "connection reset by the target"
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return f"connection broken: {getattr(exc, 'message', None) or exc}"
    if exc is None:
        return "could not connect to the target"
    return f"{type(exc).__name__}: {exc}"
