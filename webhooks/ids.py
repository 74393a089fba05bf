"""Prefixed, time-ordered identifiers (`evt_01J…`): sortable like the rows they name."""

from __future__ import annotations

import base64
import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32
# RFC 4648's base32 alphabet, letter for letter into Crockford's: `base64.b32encode` does the
# encoding in C (a publish makes eleven ids; digit by digit in Python was a twentieth of it).
_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())


def encode(value: int) -> str:
    """A 128-bit `value` in 26 Crockford base32 digits, most significant first."""
    # 20 bytes are 32 digits, no padding: the first 6 hold the 30 leading zero bits.
    return base64.b32encode(value.to_bytes(20, "big"))[6:].translate(_CROCKFORD).decode()


def new_id(prefix: str) -> str:
    """A ULID (48-bit milliseconds, 80 random bits) behind `prefix` and an underscore."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{encode(ms << 80 | rand)}"
