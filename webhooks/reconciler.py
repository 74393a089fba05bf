"""The scheduler's work: queue what is due, repair what Redis or a dead worker lost, and the
slower periodic duties (notification summaries and re-sends, stalled bulk jobs, retention)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from redis import Redis
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from webhooks import bulk, failures, listeners, notifications, queueing, retention
from webhooks.config import Settings
from webhooks.delivery import MAX_LOST_ATTEMPTS
from webhooks.models import Attempt, AttemptOutcome, Delivery, DeliveryStatus, utcnow

log = logging.getLogger(__name__)

BATCH = 1000


def queue_due(
    session: Session, redis: Redis, settings: Settings, *, lost_data: bool = False
) -> int:
    """Queue every due delivery that is not in flight; returns how many were queued.

    A delivery queued less than `requeue_after` ago is left alone unless Redis lost its data;
    one queued longer ago is queued again only if its job is no longer in Redis.
    """
    now = utcnow()
    query = select(
        Delivery.id, Delivery.attempt_count, Delivery.enqueued_at, Delivery.webhook_id
    ).where(
        Delivery.status == DeliveryStatus.PENDING,
        Delivery.next_attempt_at <= now,
        Delivery.lease_token.is_(None),
    )
    if not lost_data:
        stale = now - timedelta(seconds=settings.requeue_after)
        query = query.where(or_(Delivery.enqueued_at.is_(None), Delivery.enqueued_at < stale))
    rows = session.execute(query.order_by(Delivery.next_attempt_at).limit(BATCH)).all()
    session.rollback()
    if not rows:
        return 0
    live = queueing.queued(redis, [(d, n) for d, n, queued_at, _ in rows if queued_at is not None])
    items = [(d, n, w) for d, n, _, w in rows if d not in live]
    if not items:
        return 0
    ids = [d for d, _, _ in items]
    slow = queueing.slow_webhooks(redis)
    session.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids), Delivery.lease_token.is_(None))
        .values(enqueued_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    try:
        queueing.enqueue(
            redis,
            settings.queue,
            items,
            timeout=settings.timeout,
            slow=slow,
            batch_size=settings.batch_size,
        )
    except Exception:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids), Delivery.enqueued_at == now)
            .values(enqueued_at=None)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        raise
    return len(items)


def expire_leases(session: Session, settings: Settings, redis: Redis | None = None) -> int:
    """Deliveries whose worker died mid-attempt: record the attempt as lost and make them due."""
    now = utcnow()
    rows = session.execute(
        select(Delivery.id, Delivery.lease_token, Delivery.lost_count)
        .where(
            Delivery.lease_expires_at < now,
            Delivery.status == DeliveryStatus.PENDING,
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


def _gave_up(session: Session, delivery_id: str, now: datetime, settings: Settings) -> list[str]:
    """A delivery failed for good because its workers kept dying: it counts as exhausted."""
    delivery = session.get(Delivery, delivery_id, populate_existing=True)
    return failures.exhausted(session, delivery, now, settings) if delivery else []


def _expire_one(session: Session, delivery_id: str, token: str, lost: int, now: datetime) -> bool:
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
    changed = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.lease_token == token)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if changed.rowcount != 1:
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
