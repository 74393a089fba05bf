"""The retry policy: one pure function of the attempt, its outcome and the schedule."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRY_AFTER_STATUSES = (429, 503)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds asked for by a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now.replace(tzinfo=UTC)).total_seconds())


def next_delay(
    completed: int,
    schedule: tuple[float, ...],
    *,
    status_code: int | None = None,
    retry_after: float | None = None,
    retryable: bool = True,
) -> float | None:
    """Seconds until the next attempt after `completed` failed attempts, or None when done.

    A `Retry-After` on a 429 or 503 is honoured when it asks for longer than the scheduled
    delay, up to twice that delay.
    """
    if not retryable or status_code == 410 or completed >= len(schedule):
        return None
    delay = schedule[completed]
    if status_code in RETRY_AFTER_STATUSES and retry_after is not None and retry_after > delay:
        delay = min(retry_after, 2 * delay)
    return delay
