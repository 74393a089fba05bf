"""Prefixed, time-ordered identifiers (`evt_01J…`): sortable like the rows they name."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32
# Every pair of digits, by the 10 bits it stands for: 13 look-ups make an id's 26 digits. A
# publish makes eleven ids; `base64.b32encode` (Python code in 3.11, digit groups by bytes)
# took twice as long (6.3 against 3.1 µs an id).
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_SHIFTS = range(120, -1, -10)


def encode(value: int) -> str:
    """A 128-bit `value` in 26 Crockford base32 digits, most significant first."""
    return "".join([_PAIRS[(value >> shift) & 0x3FF] for shift in _SHIFTS])


def new_id(prefix: str) -> str:
    """A ULID (48-bit milliseconds, 80 random bits) behind `prefix` and an underscore."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{encode(ms << 80 | rand)}"
