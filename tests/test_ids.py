"""Identifiers: ULIDs behind a prefix, in Crockford's base32, sorted by when they were made."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from webhooks import ids

DIGITS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _digits(value: int) -> str:
    """The 26 digits of a 128-bit value, one at a time (the definition)."""
    out = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        out.append(DIGITS[rem])
    return "".join(reversed(out))


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_every_128_bit_value_has_its_26_crockford_digits(value: int) -> None:
    assert ids.encode(value) == _digits(value)


def test_an_id_carries_its_prefix_and_the_time_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    made = ids.new_id("dlv")
    after = time.time_ns() // 1_000_000

    prefix, _, ulid = made.partition("_")
    assert prefix == "dlv" and len(ulid) == 26 and set(ulid) <= set(DIGITS)
    assert before <= _ms(made) <= after


def _ms(made: str) -> int:
    ms = 0
    for ch in made.partition("_")[2][:10]:
        ms = ms * 32 + DIGITS.index(ch)
    return ms


def test_ids_made_in_later_milliseconds_sort_later() -> None:
    first = ids.new_id("evt")
    deadline = time.monotonic() + 1
    later = first
    while _ms(later) == _ms(first) and time.monotonic() < deadline:
        later = ids.new_id("evt")
    assert _ms(later) > _ms(first) and later > first
