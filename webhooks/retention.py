"""Retention: delivery logs older than WEBHOOK_RETENTION_DAYS are purged, in small batches.

Ended deliveries created before the cutoff go with their attempts, then events older than it
with no delivery left, then old sent or failed notifications. A pending delivery is never
purged, whatever its age (nor its event). Each batch of at most BATCH ids is one short
transaction, so neither database is locked for long, and a pass stops after a time budget;
the scheduler continues it on its next pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from redis import Redis
from sqlalchemy import delete, exists, select

from webhooks import metrics, notifications
from webhooks.config import Settings
from webhooks.models import (
    Attempt,
    Delivery,
    DeliveryStatus,
    Event,
    Notification,
    Session,
    Workspace,
    changed,
    utcnow,
)

BATCH = 1000
BUDGET_SECONDS = 2.0  # per pass: the scheduler's other duties must not wait long
GATE_KEY = "webhooks:retention"


@dataclass
class Purged:
    deliveries: int = 0
    attempts: int = 0
    events: int = 0
    notifications: int = 0
    finished: bool = True


def due(redis: Redis, settings: Settings) -> bool:
    """True at most once per WEBHOOK_RETENTION_INTERVAL, across every scheduler process."""
    if settings.retention_days <= 0:
        return False
    interval_ms = max(1, int(settings.retention_interval * 1000))
    return bool(redis.set(GATE_KEY, "1", nx=True, px=interval_ms))


def unfinished(redis: Redis) -> None:
    """Let the next pass continue at once what this one's time budget cut short."""
    redis.delete(GATE_KEY)


def purge(
    session: Session,
    settings: Settings,
    now: datetime | None = None,
    *,
    budget: float = BUDGET_SECONDS,
) -> Purged:
    """Delete what is older than the retention window, batch by batch, until done or `budget`
    seconds have passed (then `finished` is False)."""
    cutoff = (now or utcnow()) - timedelta(days=settings.retention_days)
    deadline = time.monotonic() + budget
    purged = Purged()
    # Workspace by workspace, so that each batch is found through a (workspace, created_at) index.
    workspaces = session.scalars(select(Workspace.id).order_by(Workspace.id)).all()
    session.rollback()
    steps = [(_deliveries, ws) for ws in workspaces] + [(_events, ws) for ws in workspaces]
    for step, workspace_id in [*steps, (_notifications, "")]:
        while True:
            if time.monotonic() > deadline:
                purged.finished = False
                return purged
            if not step(session, workspace_id, cutoff, purged):
                break
    return purged


def _deliveries(session: Session, workspace_id: str, cutoff: datetime, purged: Purged) -> bool:
    ids = session.scalars(
        select(Delivery.id)
        .where(
            Delivery.workspace_id == workspace_id,
            Delivery.created_at < cutoff,
            Delivery.status != DeliveryStatus.PENDING,
        )
        .order_by(Delivery.created_at)
        .limit(BATCH)
    ).all()
    if not ids:
        session.rollback()
        return False
    chosen = Delivery.id.in_(ids)
    metrics.carry_over(session, chosen)  # /metrics counters never go down
    purged.attempts += changed(
        session,
        delete(Attempt)
        .where(Attempt.delivery_id.in_(ids))
        .execution_options(synchronize_session=False),
    )
    purged.deliveries += changed(
        session,
        delete(Delivery)
        .where(chosen, Delivery.status != DeliveryStatus.PENDING)
        .execution_options(synchronize_session=False),
    )
    session.commit()
    return True


def _events(session: Session, workspace_id: str, cutoff: datetime, purged: Purged) -> bool:
    delivered = exists().where(Delivery.event_id == Event.id)
    ids = session.scalars(
        select(Event.id)
        .where(Event.workspace_id == workspace_id, Event.created_at < cutoff, ~delivered)
        .order_by(Event.created_at)
        .limit(BATCH)
    ).all()
    if not ids:
        session.rollback()
        return False
    purged.events += changed(
        session,
        delete(Event)
        .where(Event.id.in_(ids), ~delivered)
        .execution_options(synchronize_session=False),
    )
    session.commit()
    return True


def _notifications(session: Session, _: str, cutoff: datetime, purged: Purged) -> bool:
    ids = session.scalars(
        select(Notification.id)
        .where(
            Notification.status.in_((notifications.SENT, notifications.FAILED)),
            Notification.created_at < cutoff,
        )
        .limit(BATCH)
    ).all()
    if not ids:
        session.rollback()
        return False
    purged.notifications += changed(
        session,
        delete(Notification)
        .where(Notification.id.in_(ids))
        .execution_options(synchronize_session=False),
    )
    session.commit()
    return True
