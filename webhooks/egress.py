"""The egress guard: which addresses a webhook may reach, checked at save time and at send time.

Every address a host resolves to must be public (or inside WEBHOOK_ALLOWED_PRIVATE_NETWORKS);
one bad address refuses the whole host. The transport then connects to an address that was
checked here, never to a fresh resolution of the name.
"""

from __future__ import annotations

import ipaddress
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Union
from urllib.parse import quote, urlsplit, urlunparse

import idna
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url
from urllib3.util.connection import allowed_gai_family

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]  # noqa: UP007
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]  # noqa: UP007
Resolver = Callable[[str, int], Iterable[Any]]

_net = ipaddress.ip_network

# IPv4 ranges, most specific reason first. Anything else that is not `is_global` is reserved.
_V4_RANGES: tuple[tuple[Network, str, str], ...] = (
    (_net("0.0.0.0/32"), "unspecified", ""),
    (_net("0.0.0.0/8"), "reserved", " (this network)"),
    (_net("127.0.0.0/8"), "loopback", ""),
    (_net("169.254.169.254/32"), "link-local", " (cloud metadata)"),
    (_net("169.254.0.0/16"), "link-local", ""),
    (_net("10.0.0.0/8"), "private", ""),
    (_net("172.16.0.0/12"), "private", ""),
    (_net("192.168.0.0/16"), "private", ""),
    (_net("100.64.0.0/10"), "shared", " (carrier-grade NAT)"),
    (_net("224.0.0.0/4"), "multicast", ""),
    (_net("198.18.0.0/15"), "benchmark", ""),
    (_net("192.0.2.0/24"), "reserved", " (documentation)"),
    (_net("198.51.100.0/24"), "reserved", " (documentation)"),
    (_net("203.0.113.0/24"), "reserved", " (documentation)"),
    (_net("192.0.0.0/24"), "reserved", " (IETF protocol assignments)"),
    (_net("192.88.99.0/24"), "reserved", " (6to4 relay)"),
    (_net("255.255.255.255/32"), "reserved", " (broadcast)"),
    (_net("240.0.0.0/4"), "reserved", ""),
)

# IPv6 ranges (after the IPv4-embedding forms have been unwrapped).
_V6_RANGES: tuple[tuple[Network, str, str], ...] = (
    (_net("::/128"), "unspecified", ""),
    (_net("::1/128"), "loopback", ""),
    (_net("ff00::/8"), "multicast", ""),
    (_net("fe80::/10"), "link-local", ""),
    (_net("fd00:ec2::254/128"), "private", " (cloud metadata)"),
    (_net("fc00::/7"), "private", " (unique local)"),
    (_net("fec0::/10"), "private", " (site-local)"),
    (_net("2001:db8::/32"), "reserved", " (documentation)"),
    (_net("3fff::/20"), "reserved", " (documentation)"),
    (_net("2001::/32"), "reserved", " (Teredo)"),
    (_net("2001::/23"), "reserved", " (IETF protocol assignments)"),
    (_net("100::/64"), "reserved", " (discard)"),
    (_net("5f00::/16"), "reserved", " (segment routing)"),
)
_V6_GLOBAL_UNICAST = _net("2000::/3")
_NAT64 = _net("64:ff9b::/96")
_NAT64_LOCAL = _net("64:ff9b:1::/48")
_SIX_TO_FOUR = _net("2002::/16")
_V4_COMPATIBLE = _net("::/96")


class TargetNotAllowed(Exception):
    """The egress policy refuses a target: `address` is what was refused, `reason` its class."""

    def __init__(
        self,
        address: Any,
        reason: str,
        *,
        host: str | None = None,
        note: str = "",
        message: str | None = None,
        literal: bool = False,
    ) -> None:
        self.address = str(address)
        self.reason = reason
        self.host = host
        if message is None:
            kind = f"{_article(reason)} {reason} address{note}"
            if host is None or host.strip("[]") == self.address:
                message = f"{self.address} is {kind}"
            elif literal:  # another spelling of the address, e.g. 2130706433
                message = f"{host} is {self.address}, {kind}"
            else:
                message = f"{host} resolves to {self.address}, {kind}"
        self.message = message
        super().__init__(message)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


# -- spelling -------------------------------------------------------------------------------

_DEC = re.compile(r"[0-9]+")
_OCT = re.compile(r"0[0-7]*")
_HEX = re.compile(r"[0-9a-fA-F]+")


def _ipv4_part(part: str) -> int | None:
    """One dotted part as inet_aton and browsers read it: decimal, 0-octal or 0x-hex."""
    if part[:2] in ("0x", "0X"):
        digits = part[2:]
        if not digits:
            return 0  # "0x" alone is zero for browsers
        return int(digits, 16) if _HEX.fullmatch(digits) else None
    if len(part) > 1 and part[0] == "0":
        return int(part, 8) if _OCT.fullmatch(part) else None
    return int(part) if _DEC.fullmatch(part) else None


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # a trailing dot: "127.0.0.1."
    if not 1 <= len(parts) <= 4 or any(p == "" for p in parts):
        return None
    numbers = [_ipv4_part(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    values: list[int] = numbers  # type: ignore[assignment]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    value = values[-1]
    for index, number in enumerate(values[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def parse_literal(host: str) -> IPAddress | None:
    """The address `host` spells, in any form a resolver or a browser accepts; None for a name.

    IPv4 may be dotted, shortened (`127.1`), one number (`2130706433`), octal (`0177.0.0.1`)
    or hex (`0x7f.0.0.1`); IPv6 may be bracketed. A zone id (`fe80::1%eth0`) is refused.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        bare, _, zone = text.partition("%")
        try:
            address = ipaddress.IPv6Address(bare)
        except ValueError:
            return None
        if zone:
            raise TargetNotAllowed(
                text,
                "scoped",
                message=f"{text} carries a zone id; scoped IPv6 addresses are not allowed",
            )
        return address
    return _parse_ipv4(text)


# -- classification ---------------------------------------------------------------------------


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address carried inside an IPv6 one, and the name of that form."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    if ip in _V4_COMPATIBLE and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "IPv4-compatible"
    return None


def _in_any(ip: IPAddress, networks: Iterable[Network]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def _plain_verdict(ip: IPAddress) -> tuple[str, str] | None:
    ranges = _V4_RANGES if ip.version == 4 else _V6_RANGES
    for network, reason, note in ranges:
        if ip in network:
            return reason, note
    if ip.version == 6 and ip not in _V6_GLOBAL_UNICAST:
        return "reserved", ""
    if not ip.is_global:
        return "reserved", ""
    return None


def verdict(ip: IPAddress, allowed_networks: Iterable[Network] = ()) -> tuple[str, str] | None:
    """(reason, note) when `ip` may not be reached, None when it may."""
    allowed = tuple(allowed_networks)
    if ip.version == 6 and ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).partition("%")[0])
    if _in_any(ip, allowed):
        return None
    if ip.version == 6:
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner, form = embedded
            if form == "IPv4-mapped" and _in_any(inner, allowed):
                return None  # the socket reaches the IPv4 address itself
            found = _plain_verdict(inner)
            if found is not None:
                reason, note = found
                return reason, f" ({form} {inner}){note}"
            if form == "IPv4-compatible":
                return "reserved", " (deprecated IPv4-compatible form)"
            if ip in _NAT64_LOCAL:
                return "reserved", " (local-use NAT64)"
            return None  # a mapped or translated (NAT64, 6to4) public IPv4 address is public
    return _plain_verdict(ip)


def classify(ip: IPAddress, allowed_networks: Iterable[Network] = ()) -> str | None:
    """Why `ip` is not public (loopback, private, link-local, shared, multicast, reserved,
    unspecified, benchmark), or None when it is public or inside an allowed network."""
    found = verdict(ip, allowed_networks)
    return found[0] if found else None


def refuse_if_not_allowed(
    ip: IPAddress,
    allowed_networks: Iterable[Network] = (),
    *,
    host: str | None = None,
    literal: bool = False,
) -> None:
    """Raise TargetNotAllowed naming the address and why, unless `ip` may be reached."""
    found = verdict(ip, allowed_networks)
    if found is None:
        return
    shown: Any = ip
    if literal and ip.version == 6 and host:
        shown, host = host.strip("[]"), None  # keep the IPv6 spelling given, e.g. ::ffff:10.0.0.1
    raise TargetNotAllowed(shown, found[0], host=host, note=found[1], literal=literal)


# -- resolution ---------------------------------------------------------------------------------


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, family=allowed_gai_family(), type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]


_resolver: Resolver = _system_resolver


def set_resolver(fn: Resolver | None) -> Resolver:
    """Replace how names are resolved (tests); None restores the system's. Returns the old one."""
    global _resolver
    previous = _resolver
    _resolver = fn if fn is not None else _system_resolver
    return previous


@contextmanager
def resolver(fn: Resolver) -> Iterator[None]:
    """Resolve names with `fn` inside the block."""
    previous = set_resolver(fn)
    try:
        yield
    finally:
        set_resolver(previous)


class LookupTimeout(TimeoutError):
    """A name did not resolve within the time it was given."""

    def __init__(self, host: str, seconds: float) -> None:
        self.host, self.seconds = host, seconds
        super().__init__(f"{host} did not resolve within {seconds:g} s")


# At save time a lookup may keep a web request waiting this long (then the name is saved with
# the "does not resolve yet" warning); at send time it gets what is left of the attempt.
SAVE_LOOKUP_SECONDS = 3.0
LOOKUP_THREADS = 32


class _Lookups:
    """Threads that run the resolver, so that a caller stops waiting at its deadline while a
    hanging lookup ends (or not) on its own. getaddrinfo cannot be interrupted; this is the only
    way to bound it. Threads start when needed and stay; callers asking for a name whose lookup
    is already running wait for that one, so one hanging name holds one thread."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[tuple[Resolver, str, int, Future[list[Any]]]] = (
            queue.SimpleQueue()
        )
        self._running: dict[tuple[str, int], tuple[Resolver, Future[list[Any]]]] = {}
        self._threads = 0
        self._idle = 0

    def lookup(self, host: str, port: int, timeout: float) -> list[Any]:
        fn = _resolver
        with self._lock:
            running = self._running.get((host, port))
            if running is not None and running[0] is fn:
                future = running[1]
            else:
                future = Future()
                self._running[(host, port)] = (fn, future)
                self._tasks.put((fn, host, port, future))
                if self._idle < self._tasks.qsize() and self._threads < self._size:
                    self._threads += 1
                    threading.Thread(target=self._run, name="egress-dns", daemon=True).start()
        try:
            return future.result(timeout=max(timeout, 0))
        except TimeoutError:
            raise LookupTimeout(host, timeout) from None

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            fn, host, port, future = self._tasks.get()
            with self._lock:
                self._idle -= 1
            try:
                future.set_result(list(fn(host, port)))
            except BaseException as exc:  # handed to the caller, who raises it
                future.set_exception(exc)
            finally:
                with self._lock:
                    running = self._running.get((host, port))
                    if running is not None and running[1] is future:
                        del self._running[(host, port)]


_lookups = _Lookups(LOOKUP_THREADS)


def resolve(host: str, port: int, *, timeout: float = SAVE_LOOKUP_SECONDS) -> list[IPAddress]:
    """Every address `host` resolves to, in order, without duplicates.

    Raises socket.gaierror when the name does not resolve, LookupTimeout when it takes longer
    than `timeout` seconds.
    """
    literal = parse_literal(host)
    if literal is not None:
        return [literal]
    addresses: list[IPAddress] = []
    for raw in _lookups.lookup(host, port, timeout):
        ip = raw if isinstance(raw, ipaddress.IPv4Address | ipaddress.IPv6Address) else None
        if ip is None:
            ip = ipaddress.ip_address(str(raw))
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"{host} has no addresses")
    return addresses


def check(
    host: str,
    port: int,
    allowed_networks: Iterable[Network] = (),
    *,
    timeout: float = SAVE_LOOKUP_SECONDS,
) -> list[IPAddress]:
    """The addresses of `host`, all of them allowed; one bad address refuses the host.

    Raises TargetNotAllowed, socket.gaierror when the name does not resolve, or LookupTimeout.
    """
    allowed = tuple(allowed_networks)
    literal = parse_literal(host)
    if literal is not None:
        refuse_if_not_allowed(literal, allowed, host=host, literal=True)
        return [literal]
    addresses = resolve(host, port, timeout=timeout)
    for ip in addresses:
        refuse_if_not_allowed(ip, allowed, host=host)
    return addresses


# -- URLs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A checked target: where the URL points and the addresses that may be connected to."""

    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def canonical_url(url: str) -> str:
    """The URL as the HTTP client will send it (IDNA-encoded host, lowercase scheme and host):
    what requests' `PreparedRequest.prepare_url` makes of it, without loading requests in a
    worker for it (3 MB). Raises ValueError with requests' words for a URL it refuses."""
    url = url.lstrip()
    if ":" in url and not url.lower().startswith("http"):
        return url  # not HTTP: left as it is (the scheme check refuses it)
    try:
        scheme, auth, host, port, path, query, fragment = parse_url(url)
    except LocationParseError as exc:
        raise ValueError(*exc.args) from None
    if not scheme:
        raise ValueError(
            f"Invalid URL {url!r}: No scheme supplied. Perhaps you meant https://{url}?"
        )
    if not host:
        raise ValueError(f"Invalid URL {url!r}: No host supplied")
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("utf-8")
        except idna.IDNAError:
            raise ValueError("URL has an invalid label.") from None
    elif host.startswith(("*", ".")):
        raise ValueError("URL has an invalid label.")
    netloc = f"{auth}@{host}" if auth else host
    if port:
        netloc += f":{port}"
    return _requote(urlunparse((scheme, netloc, path or "/", "", query, fragment)))


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _requote(uri: str) -> str:
    """Percent-escapes made consistent, as requests' `requote_uri`: unreserved characters
    unescaped, illegal ones escaped, reserved ones and `%` left as they are."""
    parts = uri.split("%")
    try:
        for i in range(1, len(parts)):
            h = parts[i][0:2]
            if len(h) == 2 and h.isalnum():
                c = chr(int(h, 16))  # ValueError: not a percent-escape at all
                parts[i] = c + parts[i][2:] if c in _UNRESERVED else f"%{parts[i]}"
            else:
                parts[i] = f"%{parts[i]}"
    except ValueError:
        return quote(uri, safe="!#$&'()*+,/:;=?@[]~")
    return quote("".join(parts), safe="!#$%&'()*+,/:;=?@[]~")


DEFAULT_PORTS: tuple[tuple[int, int], ...] = ((443, 443), (1024, 65535))


def describe_ports(ranges: Iterable[tuple[int, int]]) -> str:
    """Port ranges as WEBHOOK_ALLOWED_PORTS spells them: 443,1024-65535."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def refuse_port(port: int, scheme: str, allowed_ports: Iterable[tuple[int, int]]) -> None:
    """Raise TargetNotAllowed unless `port` is allowed (80 too for http:// when allowed)."""
    ranges = tuple(allowed_ports)
    if scheme == "http" and port == 80:
        return  # reaching http:// at all takes WEBHOOK_ALLOW_HTTP
    if any(low <= port <= high for low, high in ranges):
        return
    allowed = describe_ports(ranges)
    raise TargetNotAllowed(
        port,
        "port",
        message=f"port {port} is not allowed (WEBHOOK_ALLOWED_PORTS allows {allowed})",
    )


def _split(
    url: str, allow_http: bool, allowed_ports: Iterable[tuple[int, int]] = DEFAULT_PORTS
) -> tuple[str, str, int]:
    parts = urlsplit(canonical_url(url))
    host = parts.hostname
    if not host:
        raise ValueError(f"URL has no host: {url!r}")
    scheme = parts.scheme.lower()
    if scheme not in (("https", "http") if allow_http else ("https",)):
        raise TargetNotAllowed(
            host,
            "scheme",
            message=f"{scheme}:// targets are not allowed (https:// only)",
        )
    port = parts.port or (443 if scheme == "https" else 80)
    refuse_port(port, scheme, allowed_ports)
    return scheme, host, port


def check_target(
    url: str,
    allowed_networks: Iterable[Network] = (),
    *,
    allow_http: bool = False,
    allowed_ports: Iterable[tuple[int, int]] = DEFAULT_PORTS,
    deadline: float | None = None,
) -> Target:
    """Send-time check of a URL: scheme and port, then every address of its host, resolved
    before `deadline` (time.monotonic()).

    Raises TargetNotAllowed, socket.gaierror (the name does not resolve), LookupTimeout or
    ValueError.
    """
    scheme, host, port = _split(url, allow_http, allowed_ports)
    left = SAVE_LOOKUP_SECONDS if deadline is None else deadline - time.monotonic()
    addresses = check(host, port, allowed_networks, timeout=left)
    return Target(scheme, host, port, tuple(addresses))


def check_url(url: str, settings: Any, *, resolve_names: bool = True) -> str | None:
    """Save-time check of a URL against `settings` (allowed_private_networks, allow_http,
    allowed_ports).

    A literal address that breaks the rule, or a name with any such address, raises
    TargetNotAllowed. A name that does not resolve yet is accepted: the warning to show is
    returned (the address is checked again at send time). Returns None when all is well.
    """
    allowed = tuple(settings.allowed_private_networks or ())
    ports = getattr(settings, "allowed_ports", DEFAULT_PORTS)
    scheme, host, port = _split(url, bool(settings.allow_http), ports)
    literal = parse_literal(host)
    if literal is not None:
        refuse_if_not_allowed(literal, allowed, host=host, literal=True)
        return None
    if not resolve_names:
        return None
    try:
        check(host, port, allowed, timeout=SAVE_LOOKUP_SECONDS)
    except LookupTimeout as exc:
        return f"{exc}; it is saved, and its addresses will be checked when a delivery is sent"
    except (OSError, UnicodeError):
        return f"{host} does not resolve yet; its addresses will be checked when a delivery is sent"
    return None
