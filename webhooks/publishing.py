"""Publishing: one transaction writes the event and a delivery row per subscribed webhook."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis import Redis
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webhooks import catalog, queueing
from webhooks.config import Settings
from webhooks.ids import new_id
from webhooks.models import Delivery, DeliveryStatus, Event, Webhook, utcnow

# Core tables: publishing runs on every API call, and ORM-enabled inserts cost more than
# the rows they write.
_EVENTS = Event.__table__
_DELIVERIES = Delivery.__table__
_W = Webhook.__table__.c


class IdempotencyConflict(Exception):
    """The idempotency key was used before with another request body."""


@dataclass
class Published:
    event: Event
    delivery_ids: list[str] = field(default_factory=list)
    created: bool = True


def request_hash(event_type: str, data: Any) -> str:
    """A stable digest of what was asked, to tell a retry from a reused key."""
    canonical = json.dumps(
        {"type": event_type, "data": data}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def subscribes(webhook: Webhook, event_type: str) -> bool:
    return any(catalog.matches(pattern, event_type) for pattern in webhook.events)


def _delivery_row(
    event: Event,
    webhook_id: str,
    now: datetime,
    *,
    kind: str,
    max_attempts: int,
    ignores_pause: bool,
) -> dict[str, Any]:
    return {
        "id": new_id("dlv"),
        "workspace_id": event.workspace_id,
        "event_id": event.id,
        "webhook_id": webhook_id,
        "event_type": event.type,
        "kind": kind,
        "status": DeliveryStatus.PENDING,
        "attempt_count": 0,
        "lost_count": 0,
        "max_attempts": max_attempts,
        "ignores_pause": ignores_pause,
        "next_attempt_at": now,
        "enqueued_at": now,  # queued right after commit; the scheduler repairs a failed hand-off
        "created_at": now,
        "updated_at": now,
    }


def _existing(session: Session, workspace_id: str, key: str, digest: str) -> Published | None:
    event = session.scalars(
        select(Event).where(Event.workspace_id == workspace_id, Event.idempotency_key == key)
    ).first()
    if event is None:
        return None
    if event.request_hash != digest:
        raise IdempotencyConflict(key)
    ids = session.scalars(
        select(Delivery.id).where(Delivery.event_id == event.id, Delivery.kind == "event")
    ).all()
    return Published(event=event, delivery_ids=list(ids), created=False)


def publish(
    session: Session,
    workspace_id: str,
    event_type: str,
    data: dict[str, Any],
    settings: Settings,
    *,
    idempotency_key: str | None = None,
) -> Published:
    """Store the event and its deliveries in one transaction; enqueue them with `dispatch`."""
    digest = request_hash(event_type, data)
    if idempotency_key:
        found = _existing(session, workspace_id, idempotency_key, digest)
        if found:
            return found
    now = utcnow()
    values = {
        "id": new_id("evt"),
        "workspace_id": workspace_id,
        "type": event_type,
        "data": data,
        "occurred_at": now,
        "created_at": now,
        "idempotency_key": idempotency_key or None,
        "request_hash": digest,
        "is_test": False,
    }
    # Written with a plain INSERT; the answer is built from `event`, never attached to the
    # session, so nothing is reloaded after the commit (on SQLite that would open a new
    # transaction, holding the write lock until the request ends).
    event = Event(**values)
    try:
        session.execute(insert(_EVENTS), [values])
    except IntegrityError:
        # The same key published concurrently: the other request's event is the answer.
        session.rollback()
        found = _existing(session, workspace_id, idempotency_key or "", digest)
        if found is None:
            raise
        return found
    webhooks = session.execute(
        select(_W.id, _W.events).where(_W.workspace_id == workspace_id, _W.active.is_(True))
    ).all()
    rows = [
        _delivery_row(
            event, wid, now, kind="event", max_attempts=settings.max_attempts, ignores_pause=False
        )
        for wid, patterns in webhooks
        if any(catalog.matches(p, event_type) for p in patterns)
    ]
    if rows:
        session.execute(insert(_DELIVERIES), rows)
    session.commit()
    return Published(event=event, delivery_ids=[r["id"] for r in rows])


def add_delivery(
    session: Session, event: Event, webhook: Webhook, settings: Settings, *, kind: str
) -> str:
    """One more delivery of a stored event to one webhook (test or redelivery), committed."""
    now = utcnow()
    max_attempts = 1 if kind == "test" else settings.max_attempts
    row = _delivery_row(
        event, webhook.id, now, kind=kind, max_attempts=max_attempts, ignores_pause=True
    )
    session.execute(insert(Delivery), [row])
    session.commit()
    return row["id"]


def create_test_event(session: Session, webhook: Webhook, event_type: str) -> Event:
    """Store the catalog example of `event_type` as a test event of the webhook's workspace."""
    example = catalog.BY_TYPE[event_type].example
    now = utcnow()
    event = Event(
        id=new_id("evt"),
        workspace_id=webhook.workspace_id,
        type=event_type,
        data=json.loads(json.dumps(example)),
        occurred_at=now,
        created_at=now,
        is_test=True,
    )
    session.add(event)
    session.flush()
    return event


def dispatch(session: Session, redis: Redis, settings: Settings, delivery_ids: list[str]) -> bool:
    """Wake the workers for freshly committed deliveries (they claim them from the database);
    on a Redis failure the scheduler's next scan wakes them instead. `session` is unused: the
    rows are committed, and nothing needs repairing."""
    if not delivery_ids:
        return True
    # The normal lane: its claims leave deliveries to slow targets to the slow lane, which
    # the scheduler's scan wakes (and a target turning slow wakes at once).
    return queueing.safe(
        "wake the workers", queueing.wake, redis, settings.queue, hold=settings.requeue_after
    )
