"""Sign-in throttling, per client address and per account, and who the client is behind proxies.

The counters live in Redis so that every web process shares them. While Redis cannot be
reached they live in this process's memory instead: a throttle per process is weaker than one
for the whole deployment, but a password guesser never gets an unlimited run because Redis is
down.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Iterable
from typing import Any

from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from webhooks import logthrottle

log = logging.getLogger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusted: Iterable[Network]
) -> str:
    """The client's address: the socket's `peer`, unless that is a trusted proxy; then the
    nearest address in `X-Forwarded-For` (read from the right) that is not a trusted proxy.

    Entries left of the first untrusted one were written by the client and are ignored, so a
    client cannot choose its own bucket by sending the header itself.
    """
    networks = tuple(trusted)

    def is_trusted(address: Any) -> bool:
        return any(address.version == n.version and address in n for n in networks)

    found = _address(peer or "")
    if found is None:
        return peer or "unknown"
    if not networks or not is_trusted(found):
        return str(found)
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:  # garbage: the last proxy we trust is as near as we can tell
            break
        found = address
        if not is_trusted(address):
            break
    return str(found)


def _account_key(email: str) -> str:
    # E-mail addresses never reach Redis in clear.
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


class LoginThrottle:
    """Counts sign-in attempts per address and wrong passwords per account."""

    def __init__(self, storage_uri: str, per_address: str, per_account: str) -> None:
        storage = storage_from_string(
            storage_uri,
            key_prefix="webhooks-login",
            wrap_exceptions=True,
            socket_connect_timeout=1,
            socket_timeout=2,
        )
        self._shared = FixedWindowRateLimiter(storage)
        self._local = FixedWindowRateLimiter(MemoryStorage())
        self.per_address = parse_many(per_address)
        self.per_account = parse_many(per_account)
        logthrottle.install(__name__, "sign-in throttle")

    def _run(self, method: str, item: RateLimitItem, *identifiers: str) -> Any:
        try:
            return getattr(self._shared, method)(item, *identifiers)
        except StorageError as exc:
            log.warning("sign-in throttle: Redis unreachable, counting in this process: %s", exc)
            return getattr(self._local, method)(item, *identifiers)

    def _wait(self, item: RateLimitItem, *identifiers: str) -> int:
        stats = self._run("get_window_stats", item, *identifiers)
        return max(1, math.ceil(stats.reset_time - time.time()))

    def attempt(self, address: str, email: str) -> tuple[str, int] | None:
        """Count an attempt; `(which limit, seconds to wait)` when it must not go on."""
        for item in self.per_address:
            if not self._run("hit", item, "address", address):
                return "address", self._wait(item, "address", address)
        account = _account_key(email)
        for item in self.per_account:
            if not self._run("test", item, "account", account):
                return "account", self._wait(item, "account", account)
        return None

    def failed(self, email: str) -> None:
        """Count a wrong password against the account, whoever sent it."""
        account = _account_key(email)
        for item in self.per_account:
            self._run("hit", item, "account", account)
