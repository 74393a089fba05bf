"""The scheduler's work: queue what is due, repair what Redis or a dead worker lost, and the
slower periodic duties (notification summaries and re-sends, stalled bulk jobs, retention)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from redis import Redis
from sqlalchemy import select, text, update

from webhooks import bulk, failures, flow, listeners, notifications, queueing, retention, sqlite
from webhooks.config import Settings
from webhooks.delivery import MAX_LOST_ATTEMPTS
from webhooks.models import (
    DELIVERIES,
    Attempt,
    AttemptOutcome,
    Delivery,
    DeliveryStatus,
    Session,
    changed,
    utcnow,
)

log = logging.getLogger(__name__)

BATCH = 1000


def queue_due(
    session: Session, redis: Redis, settings: Settings, *, lost_data: bool = False
) -> int:
    """Wake the workers of each lane that has due, unclaimed deliveries: retries that fell
    due, and whatever a lost wake-up left behind; returns how many such deliveries it saw (at
    most BATCH). A wake-up already queued is not queued again (`queueing.wake`); while one
    waits and no target is slow (every due delivery is the normal lane's), the database is
    not asked at all (0): under load, reading a thousand due rows cost PostgreSQL 5 ms a
    scan, to learn what the flag already says. `lost_data` (Redis lost its data) changes
    nothing here: the database alone says what is due."""
    slow = queueing.slow_webhooks(redis)
    if not slow and queueing.wake_queued(redis, settings.queue):
        return 0
    now = utcnow()
    if slow:
        park_slow(session, slow, settings, now)
    due = session.scalars(
        select(Delivery.webhook_id)
        .where(
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.next_attempt_at <= now,
            Delivery.lease_token.is_(None),
        )
        .order_by(Delivery.next_attempt_at)
        .limit(BATCH)
    ).all()
    session.rollback()
    if not due:
        return 0
    lanes = {queueing.slow_queue(settings.queue) if w in slow else settings.queue for w in due}
    for lane in lanes:
        queueing.wake(redis, lane, hold=settings.requeue_after)
    return len(due)


def park_slow(session: Session, slow: set[str], settings: Settings, now: datetime) -> int:
    """Move the due deliveries of slow targets that the slow lane cannot start soon out of the
    normal lane's way: all but the first `worker_threads` of them fall due again in
    `park_seconds` (the scan parks them again then if the lane is still full). The normal
    lane's claim walks the due deliveries in order, passing over the slow targets' ones;
    left due, a dead target's backlog cost PostgreSQL 5 µs a row on every claim (6 ms a claim
    with 1,300 of them, a third of the healthy deliveries' rate). How many were parked."""
    due = (
        select(Delivery.id)
        .where(
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.next_attempt_at <= now,
            Delivery.lease_token.is_(None),
            Delivery.waiting.is_(None),
            Delivery.webhook_id.in_(sorted(slow)),
        )
        .order_by(Delivery.next_attempt_at)
        .offset(settings.worker_threads)
        .limit(BATCH)
    )
    # Read first, in a transaction that only reads (on SQLite it takes no write lock): a scan
    # with nothing to park writes nothing.
    sqlite.reading(session)
    ids = session.scalars(due).all()
    session.rollback()
    if not ids:
        return 0
    # The conditions again on the row updated: one leased meanwhile stays as it is.
    parked = changed(
        session,
        update(Delivery)
        .where(
            Delivery.id.in_(ids),
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.lease_token.is_(None),
            Delivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=now + timedelta(seconds=park_seconds(settings)))
        .execution_options(synchronize_session=False),
    )
    session.commit()
    return parked


def park_seconds(settings: Settings) -> float:
    """How long a slow target's surplus due deliveries are parked: five times the wait that
    makes a target slow (10 s by default)."""
    return 5 * settings.slow_after


def expire_leases(session: Session, settings: Settings, redis: Redis | None = None) -> int:
    """Deliveries whose worker died mid-attempt: record the attempt as lost and make them due."""
    now = utcnow()
    # Through the attempts in flight (each lease has one; no index holds a lease, so that the
    # claim's UPDATE stays heap-only on PostgreSQL): on SQLite, `status = 'pending'` would walk
    # the whole backlog. The condition is the partial index's own text, which SQLite needs to
    # use it.
    status = sqlite.unindexed_on(session, DELIVERIES.c.status)
    rows = session.execute(
        select(Delivery.id, Delivery.lease_token, Delivery.lost_count)
        .select_from(Attempt)
        .join(Delivery, Delivery.id == Attempt.delivery_id)
        .where(
            _IN_FLIGHT,
            Delivery.lease_expires_at < now,
            status == DeliveryStatus.PENDING,
            Delivery.lease_token.is_not(None),
        )
        .limit(BATCH)
    ).all()
    expired = 0
    notify: list[str] = []
    for delivery_id, token, lost in rows:
        if _expire_one(session, delivery_id, token, lost + 1, now):
            expired += 1
            if lost + 1 >= MAX_LOST_ATTEMPTS:
                notify += _gave_up(session, delivery_id, now, settings)
    session.commit()
    notifications.hand_off(redis, settings, notify)
    return expired


_IN_FLIGHT = text(f"attempts.outcome = '{AttemptOutcome.IN_FLIGHT}'")


def _gave_up(session: Session, delivery_id: str, now: datetime, settings: Settings) -> list[str]:
    """A delivery failed for good because its workers kept dying: it counts as exhausted."""
    flow.release(session, [delivery_id], now)  # the next of its ordering key's line goes
    delivery = session.get(Delivery, delivery_id, populate_existing=True)
    return failures.exhausted(session, delivery, now, settings) if delivery else []


def _expire_one(
    session: Session, delivery_id: str, token: str | None, lost: int, now: datetime
) -> bool:
    gave_up = lost >= MAX_LOST_ATTEMPTS
    error = "worker lost: no result was recorded before the lease expired"
    values: dict = {
        "lease_token": None,
        "lease_expires_at": None,
        "enqueued_at": None,
        "lost_count": lost,
        "last_status_code": None,
        "last_error": error,
        "updated_at": now,
        "next_attempt_at": None if gave_up else now,
    }
    if gave_up:
        values["status"] = DeliveryStatus.FAILED
        values["last_error"] = f"{error} ({lost} times); giving up"
    ended = changed(
        session,
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.lease_token == token)
        .values(**values)
        .execution_options(synchronize_session=False),
    )
    if ended != 1:
        return False
    session.execute(
        update(Attempt)
        .where(Attempt.delivery_id == delivery_id, Attempt.outcome == AttemptOutcome.IN_FLIGHT)
        .values(outcome=AttemptOutcome.LOST, error=error)
        .execution_options(synchronize_session=False)
    )
    log.warning("delivery %s: %s", delivery_id, error)
    return True


def tick(session: Session, redis: Redis, settings: Settings, *, full: bool) -> int:
    """One scheduler pass: queue due deliveries; a full pass also repairs leases and Redis loss."""
    lost_data = False
    if full:
        expire_leases(session, settings, redis)
        # Deliveries waiting for an earlier one of their line that ended without letting them go.
        flow.release_stale(session, utcnow())
        lost_data = not queueing.sentinel_present(redis)
        if lost_data:
            log.warning(
                "Redis holds no record of queued work (first start, or its data was lost): "
                "queueing every due delivery not in flight"
            )
    queued = queue_due(session, redis, settings, lost_data=lost_data)
    if full:
        periodic(session, redis, settings)
    return queued


def periodic(session: Session, redis: Redis, settings: Settings) -> None:
    """The slower duties of a full pass: summaries of held-back notifications, re-sends of
    unsent ones, stalled bulk jobs, and (every WEBHOOK_RETENTION_INTERVAL) retention."""
    notifications.hand_off(redis, settings, notifications.summarize(session, settings, utcnow()))
    notifications.resend_due(session, redis, settings, utcnow())
    bulk.requeue_stalled(session, redis, settings)
    listeners.close_stale(session, utcnow())
    if retention.due(redis, settings):
        purged = retention.purge(session, settings)
        if purged.deliveries or purged.events or purged.notifications:
            log.info(
                "retention: purged %d deliveries (%d attempts), %d events, %d notifications",
                purged.deliveries,
                purged.attempts,
                purged.events,
                purged.notifications,
            )
        if not purged.finished:
            retention.unfinished(redis)
