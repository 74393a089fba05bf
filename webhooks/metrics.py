"""Prometheus metrics, computed from the database and Redis at scrape time.

Web, worker and scheduler are separate processes, possibly on several hosts, and the database
already records the work of all of them; so a scrape counts rows there (a few aggregate
queries) instead of each process keeping counters of its own. Counters must never go down,
yet retention and deleting a webhook delete rows: whatever deletes deliveries first calls
`carry_over` in the same transaction, which adds what those rows counted to `metric_totals`.
Deleting a webhook through the ORM does so by itself (the listener at the end).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from sqlalchemy import ColumnElement, and_, case, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstrumentedAttribute

from webhooks import flow, pgbatch
from webhooks.models import (
    Attempt,
    AttemptOutcome,
    Delivery,
    DeliveryStatus,
    MetricTotal,
    Session,
    Webhook,
    utcnow,
)
from webhooks.sqltime import epoch

log = logging.getLogger(__name__)

# Seconds. A changed list starts its new buckets from the rows still stored.
ATTEMPT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FIRST_ATTEMPT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0)
OUTCOMES = (AttemptOutcome.SUCCESS, AttemptOutcome.FAILURE, AttemptOutcome.LOST)
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "none")
ENDED = (DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED)

Executor = Session | Connection


def _count(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _histogram(
    prefix: str,
    value: ColumnElement[Any] | InstrumentedAttribute[Any],
    buckets: tuple[float, ...],
    per_second: float = 1,
) -> dict[str, ColumnElement[Any]]:
    """Cumulative bucket counts, count and sum (in seconds) of `value`, in `per_second` units."""
    columns: dict[str, ColumnElement[Any]] = {
        f"{prefix}:le={le:g}": _count(value <= le * per_second) for le in buckets
    }
    columns[f"{prefix}:count"] = func.count(value)
    columns[f"{prefix}:sum"] = func.coalesce(func.sum(value), 0) / float(per_second)
    return columns


def _attempt_columns() -> dict[str, ColumnElement[Any]]:
    ended = Attempt.outcome != AttemptOutcome.IN_FLIGHT
    status = Attempt.response_status
    columns = {f"attempts:{outcome}": _count(Attempt.outcome == outcome) for outcome in OUTCOMES}
    for hundreds, name in enumerate(STATUS_CLASSES[:4], start=2):
        in_class = and_(status >= hundreds * 100, status < hundreds * 100 + 100)
        columns[f"responses:{name}"] = _count(and_(ended, in_class))
    columns["responses:none"] = _count(
        and_(ended, (status.is_(None)) | (status < 200) | (status >= 600))
    )
    columns.update(_histogram("attempt_seconds", Attempt.duration_ms, ATTEMPT_BUCKETS, 1000))
    return columns


def _row(executor: Executor, columns: dict[str, ColumnElement[Any]], query: Any) -> dict:
    values = executor.execute(query).one()
    return {key: float(value or 0) for key, value in zip(columns, values, strict=True)}


def totals(executor: Executor, only: ColumnElement[bool] | None = None) -> dict[str, float]:
    """Every counter and histogram value over the rows stored now, or over the deliveries that
    `only` (a condition on Delivery) picks, and their attempts.

    Three aggregate queries, each one pass over its table whatever its size: the table is
    bounded by retention, and nothing is fetched row by row.
    """
    attempt_columns = _attempt_columns()
    attempts = select(*attempt_columns.values()).select_from(Attempt)
    lag = epoch(Attempt.started_at) - epoch(Delivery.created_at)
    first_columns = _histogram("first_attempt_seconds", lag, FIRST_ATTEMPT_BUCKETS)
    first = (
        select(*first_columns.values())
        .select_from(Attempt)
        .join(Delivery, Delivery.id == Attempt.delivery_id)
        .where(Attempt.number == 1)
    )
    ended = (
        select(Delivery.status, func.count())
        .where(Delivery.status.in_(ENDED))
        .group_by(Delivery.status)
    )
    if only is not None:
        attempts = attempts.where(Attempt.delivery_id.in_(select(Delivery.id).where(only)))
        first = first.where(only)
        ended = ended.where(only)
    values = _row(executor, attempt_columns, attempts)
    values.update(_row(executor, first_columns, first))
    values.update({f"deliveries:{status}": 0.0 for status in ENDED})
    for status, count in executor.execute(ended):
        values[f"deliveries:{status}"] = float(count)
    return values


def stored_totals(executor: Executor) -> dict[str, float]:
    """What deleted rows had counted, by key."""
    rows = executor.execute(select(MetricTotal.key, MetricTotal.value))
    return {key: value for key, value in rows}


def carry_over(executor: Executor, deliveries: ColumnElement[bool]) -> None:
    """Keep in `metric_totals` what the deliveries picked by `deliveries`, and their attempts,
    count now; call it in the transaction that deletes them."""
    values = [{"key": k, "value": v} for k, v in totals(executor, deliveries).items() if v]
    if not values:
        return
    dialect = executor.dialect if isinstance(executor, Connection) else executor.get_bind().dialect
    insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
    statement = insert(MetricTotal).values(values)
    executor.execute(
        statement.on_conflict_do_update(
            index_elements=[MetricTotal.key],
            set_={"value": MetricTotal.value + statement.excluded.value},
        )
    )


def gauges(executor: Executor, now: datetime) -> dict[str, float]:
    """Pending deliveries: due and waiting for a worker, waiting for a retry, being attempted."""
    leased = Delivery.lease_token.is_not(None)
    due, scheduled, in_flight = executor.execute(
        select(
            _count(and_(Delivery.next_attempt_at <= now, ~leased)),
            _count(and_(Delivery.next_attempt_at > now, ~leased, Delivery.waiting.is_(None))),
            _count(leased),
        ).where(Delivery.status == DeliveryStatus.PENDING)
    ).one()
    values = {"due": float(due), "scheduled": float(scheduled), "in_flight": float(in_flight)}
    # Flow control (webhooks.flow): deliveries not due because of a rate limit (until their
    # start time) or an earlier delivery of their ordering key, by reason.
    values.update({f"waiting:{reason}": 0.0 for reason in flow.REASONS})
    for reason, n in executor.execute(
        select(Delivery.waiting, func.count())
        .where(
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.waiting.is_not(None),
            Delivery.next_attempt_at > now,
        )
        .group_by(Delivery.waiting)
    ):
        values[f"waiting:{reason}"] = float(n)
    return values


class Collector:
    """A prometheus_client collector over the database and the RQ queue."""

    def __init__(
        self,
        session: Session,
        redis: Redis,
        queue: str,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.session, self.redis, self.queue, self.now = session, redis, queue, now

    def collect(self) -> Iterator[Metric]:
        counts, pending = self._read_database()
        yield from counters(counts)
        yield from histograms(counts)
        yield _gauge(
            "webhook_deliveries_due", "Pending deliveries due now and not leased.", pending["due"]
        )
        yield _gauge(
            "webhook_retries_scheduled",
            "Pending deliveries waiting for a later attempt (next_attempt_at in the future).",
            pending["scheduled"],
        )
        yield _gauge(
            "webhook_deliveries_in_flight",
            "Pending deliveries a worker has claimed and is attempting.",
            pending["in_flight"],
        )
        waiting = GaugeMetricFamily(
            "webhook_deliveries_waiting",
            "Pending deliveries held back by flow control, by reason: rate_limit (until their "
            "start time) or order (until an earlier delivery with their ordering key ends).",
            labels=["reason"],
        )
        for reason in flow.REASONS:
            waiting.add_metric([reason], pending[f"waiting:{reason}"])
        yield waiting
        yield from self._queue_gauges()

    def _read_database(self) -> tuple[dict[str, float], dict[str, float]]:
        session = self.session
        session.rollback()
        if pgbatch.used_by(session):
            # One snapshot for every query: a purge committing in between could otherwise be
            # counted twice or not at all, and a counter would seem to jump or reset.
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        try:
            counts = totals(session)
            for key, value in stored_totals(session).items():
                counts[key] = counts.get(key, 0.0) + value
            return counts, gauges(session, self.now())
        finally:
            session.rollback()

    def _queue_gauges(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("webhook_redis_up", "1 when Redis answered this scrape.")
        try:
            depth = Queue(self.queue, connection=self.redis).count
        except RedisError as exc:
            log.warning("metrics: Redis unavailable (%s); queue depth left out", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        family = GaugeMetricFamily(
            "webhook_queue_depth", "Jobs waiting in the RQ queue.", labels=["queue"]
        )
        family.add_metric([self.queue], depth)
        yield family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def counters(counts: dict[str, float]) -> Iterator[Metric]:
    attempts = CounterMetricFamily(
        "webhook_delivery_attempts", "Attempts that ended, by outcome.", labels=["outcome"]
    )
    for outcome in OUTCOMES:
        attempts.add_metric([outcome], counts.get(f"attempts:{outcome}", 0.0))
    yield attempts
    responses = CounterMetricFamily(
        "webhook_attempt_responses",
        "Attempts that ended, by the class of the target's HTTP status (none: no response).",
        labels=["class"],
    )
    for name in STATUS_CLASSES:
        responses.add_metric([name], counts.get(f"responses:{name}", 0.0))
    yield responses
    deliveries = CounterMetricFamily(
        "webhook_deliveries", "Deliveries that ended, by status.", labels=["status"]
    )
    for status in ENDED:
        deliveries.add_metric([status], counts.get(f"deliveries:{status}", 0.0))
    yield deliveries


def histograms(counts: dict[str, float]) -> Iterator[Metric]:
    for name, prefix, buckets, documentation in (
        (
            "webhook_attempt_duration_seconds",
            "attempt_seconds",
            ATTEMPT_BUCKETS,
            "Time from sending a request to its response or error, per attempt.",
        ),
        (
            "webhook_publish_to_first_attempt_seconds",
            "first_attempt_seconds",
            FIRST_ATTEMPT_BUCKETS,
            "Time from a delivery's creation (its event's publication) to its first attempt.",
        ),
    ):
        family = HistogramMetricFamily(name, documentation)
        total = counts.get(f"{prefix}:count", 0.0)
        family.add_metric(
            [],
            [(floatToGoString(le), counts.get(f"{prefix}:le={le:g}", 0.0)) for le in buckets]
            + [("+Inf", total)],
            counts.get(f"{prefix}:sum", 0.0),
        )
        yield family


@event.listens_for(Webhook, "before_delete")
def _keep_counts_of_deleted_webhook(_mapper: Any, connection: Connection, webhook: Webhook) -> None:
    # Its deliveries and attempts go with it (ON DELETE CASCADE), their counts stay.
    carry_over(connection, Delivery.webhook_id == webhook.id)
