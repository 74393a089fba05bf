"""The numbers behind the dashboard's charts: attempts per hour, success rates, latencies.

Every query reaches attempts through the deliveries of a webhook (or workspace) created since a
horizon before the window, so it walks the deliveries' (webhook_id, created_at) index instead
of every attempt stored: an attempt starts at most a retry schedule after its delivery.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, literal_column, select

from webhooks import pgbatch
from webhooks.config import Settings
from webhooks.models import Attempt, AttemptOutcome, Delivery, DeliveryStatus, Session
from webhooks.sqltime import epoch

HOURS = 24
WINDOWS = (("24 h", timedelta(hours=24)), ("7 days", timedelta(days=7)))
# On SQLite, percentiles come from at most this many durations per window (evenly spread).
SAMPLE = 5000
OUTCOMES = (AttemptOutcome.SUCCESS, AttemptOutcome.FAILURE, AttemptOutcome.LOST)


@dataclass
class Hour:
    """One hour's ended attempts, by outcome."""

    start: datetime
    success: int = 0
    failure: int = 0
    lost: int = 0

    @property
    def total(self) -> int:
        return self.success + self.failure + self.lost


@dataclass
class Window:
    """How a webhook did over a window: ended deliveries and attempt latency percentiles."""

    label: str
    succeeded: int = 0
    failed: int = 0
    timed: int = 0  # attempts with a measured duration
    p50_ms: float | None = None
    p95_ms: float | None = None

    @property
    def ended(self) -> int:
        return self.succeeded + self.failed

    @property
    def success_rate(self) -> float | None:
        return None if self.ended == 0 else self.succeeded / self.ended


@dataclass
class Activity:
    """A webhook's charts: the last 24 hours by hour, and each window's rate and latency."""

    hours: list[Hour]
    windows: list[Window] = field(default_factory=list)

    def total(self, outcome: str | None = None) -> int:
        if outcome is None:
            return sum(h.total for h in self.hours)
        return sum(getattr(h, outcome) for h in self.hours)

    @property
    def peak(self) -> Hour:
        return max(self.hours, key=lambda h: h.total)

    @property
    def scale(self) -> int:
        """The bar chart's top: a round number at or above the busiest hour."""
        return nice_ceiling(self.peak.total)

    @property
    def slowest_ms(self) -> float:
        return max((w.p95_ms or 0.0 for w in self.windows), default=0.0)


def nice_ceiling(value: float) -> int:
    """The smallest round number at or above `value`: 1, 2, 3, 4, 5, 6, 8, 10, 20, 30 …"""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 3, 4, 5, 6, 8, 10):
        if value <= step * power:
            return int(step * power)
    raise AssertionError("unreachable")


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The q-quantile with linear interpolation, like PostgreSQL's percentile_cont."""
    if not ordered:
        return None
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def horizon(settings: Settings) -> timedelta:
    """How long after its creation a delivery may still be attempted: its whole schedule, each
    delay doubled (Retry-After), plus time for lost attempts."""
    return timedelta(seconds=2 * sum(settings.retry_schedule)) + timedelta(hours=1)


def first_hour(now: datetime) -> datetime:
    """The start of the oldest of the 24 hourly bars; the newest is the hour now in progress."""
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)


def hourly(
    session: Session, deliveries: ColumnElement[bool], now: datetime, settings: Settings
) -> dict[str, list[Hour]]:
    """Per webhook id among the picked deliveries: ended attempts in each of the last 24 hours."""
    start = first_hour(now)
    # Inlined, not bound: PostgreSQL must see the same expression in SELECT and GROUP BY.
    start_epoch: ColumnElement[Any] = literal_column(
        str(int((start - datetime(1970, 1, 1)).total_seconds()))
    )
    bucket = func.floor((epoch(Attempt.started_at) - start_epoch) / 3600)
    rows = session.execute(
        select(Delivery.webhook_id, bucket, Attempt.outcome, func.count())
        .join(Delivery, Delivery.id == Attempt.delivery_id)
        .where(
            deliveries,
            Delivery.created_at >= start - horizon(settings),
            Attempt.started_at >= start,
            Attempt.outcome.in_(OUTCOMES),
        )
        .group_by(Delivery.webhook_id, bucket, Attempt.outcome)
    ).all()
    result: dict[str, list[Hour]] = {}
    for webhook_id, index, outcome, count in rows:
        hours = result.get(webhook_id) or empty_hours(start)
        result[webhook_id] = hours
        if 0 <= int(index) < HOURS:
            hour = hours[int(index)]
            setattr(hour, outcome, getattr(hour, outcome) + count)
    return result


def empty_hours(start: datetime) -> list[Hour]:
    return [Hour(start + timedelta(hours=i)) for i in range(HOURS)]


def sparklines(
    session: Session, workspace_id: str, now: datetime, settings: Settings
) -> dict[str, list[Hour]]:
    """For the webhooks list: per webhook id, its attempts in each of the last 24 hours."""
    return hourly(session, Delivery.workspace_id == workspace_id, now, settings)


def for_webhook(session: Session, webhook_id: str, now: datetime, settings: Settings) -> Activity:
    """Everything a webhook's page charts."""
    hours = hourly(session, Delivery.webhook_id == webhook_id, now, settings)
    windows = [Window(label) for label, _ in WINDOWS]
    _add_rates(session, webhook_id, now, windows)
    _add_latencies(session, webhook_id, now, settings, windows)
    return Activity(hours=hours.get(webhook_id) or empty_hours(first_hour(now)), windows=windows)


def _count(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _add_rates(session: Session, webhook_id: str, now: datetime, windows: list[Window]) -> None:
    """Succeeded / ended deliveries created in each window (as the webhooks list counts)."""
    columns = []
    for _, span in WINDOWS:
        recent = Delivery.created_at >= now - span
        columns.append(_count(and_(recent, Delivery.status == DeliveryStatus.SUCCEEDED)))
        columns.append(_count(and_(recent, Delivery.status == DeliveryStatus.FAILED)))
    row = session.execute(
        select(*columns).where(
            Delivery.webhook_id == webhook_id,
            Delivery.created_at >= now - max(span for _, span in WINDOWS),
            Delivery.status != DeliveryStatus.PENDING,
        )
    ).one()
    for i, window in enumerate(windows):
        window.succeeded, window.failed = int(row[2 * i]), int(row[2 * i + 1])


def _add_latencies(
    session: Session, webhook_id: str, now: datetime, settings: Settings, windows: list[Window]
) -> None:
    """p50 and p95 of attempt durations per window: in SQL on PostgreSQL, else from a sample."""
    in_sql = pgbatch.used_by(session)
    columns = []
    for _, span in WINDOWS:
        recent = Attempt.started_at >= now - span
        columns.append(_count(recent))
        if in_sql:
            columns += [
                func.percentile_cont(q).within_group(Attempt.duration_ms).filter(recent)
                for q in (0.5, 0.95)
            ]
    oldest = now - max(span for _, span in WINDOWS)
    row = session.execute(_timed_attempts(webhook_id, oldest, settings).add_columns(*columns)).one()
    per_window = len(columns) // len(WINDOWS)
    for i, (window, (_, span)) in enumerate(zip(windows, WINDOWS, strict=True)):
        values = row[i * per_window : (i + 1) * per_window]
        window.timed = int(values[0])
        if in_sql:
            window.p50_ms, window.p95_ms = _float(values[1]), _float(values[2])
        elif window.timed:
            durations = _sample(session, webhook_id, now - span, settings, window.timed)
            window.p50_ms, window.p95_ms = percentile(durations, 0.5), percentile(durations, 0.95)


def _timed_attempts(webhook_id: str, since: datetime, settings: Settings) -> Select:
    """Ended attempts of the webhook that started since `since` and have a duration."""
    return (
        select()
        .select_from(Attempt)
        .join(Delivery, Delivery.id == Attempt.delivery_id)
        .where(
            Delivery.webhook_id == webhook_id,
            Delivery.created_at >= since - horizon(settings),
            Attempt.started_at >= since,
            Attempt.duration_ms.is_not(None),
            Attempt.outcome.in_((AttemptOutcome.SUCCESS, AttemptOutcome.FAILURE)),
        )
    )


def _sample(
    session: Session, webhook_id: str, since: datetime, settings: Settings, count: int
) -> list[float]:
    """The window's durations, sorted; every k-th by id when there are more than SAMPLE."""
    query = _timed_attempts(webhook_id, since, settings).add_columns(Attempt.duration_ms)
    every = math.ceil(count / SAMPLE)
    if every > 1:
        query = query.where(Attempt.id % every == 0)
    return sorted(session.scalars(query).all())


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
