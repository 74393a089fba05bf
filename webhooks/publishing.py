"""Publishing: one transaction writes the event and a delivery row per subscribed webhook."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis import Redis
from sqlalchemy import Text, bindparam, cast, insert, select
from sqlalchemy.exc import IntegrityError

from webhooks import (
    batchsql,
    catalog,
    commitgroup,
    fastsql,
    flow,
    outgoing,
    pgbatch,
    queueing,
    sqlite,
)
from webhooks.accounts import WebhookRow
from webhooks.config import Settings
from webhooks.ids import new_id
from webhooks.models import (
    DELIVERIES,
    EVENTS,
    WEBHOOKS,
    Delivery,
    DeliveryStatus,
    Event,
    Session,
    Webhook,
    utcnow,
)

# Core statements, built once: publishing runs on every API call, and ORM-enabled inserts
# cost more than the rows they write.
_W = WEBHOOKS.c
# (webhook id, its event patterns, its ordering key)
Subscriber = tuple[str, Sequence[str], str | None]
# A webhook's event patterns as their JSON text, parsed once per distinct text
# (`_patterns`): every publish reads every webhook of its workspace.
_SUBSCRIBERS = select(_W.id, cast(_W.events, Text).label("events"), _W.ordering_key).where(
    _W.workspace_id == bindparam("workspace_id"), _W.active.is_(True)
)
MAX_BATCH = 100  # events per batch: one short transaction, one answer a client can read


class IdempotencyConflict(Exception):
    """The idempotency key was used before with another request body."""


class BatchConflict(IdempotencyConflict):
    """Events of a batch whose idempotency key was used before with another body: each index
    maps to the batch's own earlier event with that key, or to None for a stored event."""

    def __init__(self, indexes: dict[int, int | None]) -> None:
        super().__init__(indexes)
        self.indexes = indexes


@dataclass
class Published:
    event: Event
    delivery_ids: list[str] = field(default_factory=list)
    created: bool = True


@dataclass
class Item:
    """One event of a batch, as asked."""

    type: str
    data: dict[str, Any]
    idempotency_key: str | None = None


def request_hash(event_type: str, data: Any) -> str:
    """A stable digest of what was asked, to tell a retry from a reused key."""
    canonical = json.dumps(
        {"type": event_type, "data": data}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def subscribes(webhook: Webhook, event_type: str) -> bool:
    return any(catalog.matches(pattern, event_type) for pattern in webhook.events)


# Deliveries a person asked for: they go out even while the webhook is paused.
ASKED_FOR = ("test", "redelivery")


def _insert_deliveries(session: Session, rows: list[dict[str, Any]]) -> None:
    """New delivery rows, in one statement (`batchsql`)."""
    batchsql.of(session).insert_rows(session, DELIVERIES, rows)


def delivery_row(
    event: Event, webhook_id: str, now: datetime, *, kind: str, settings: Settings
) -> dict[str, Any]:
    """A new, due delivery of `event` to a webhook, as an INSERT's values. Its kind decides
    the rest: a test makes one attempt, and tests and redeliveries ignore a pause."""
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
        "max_attempts": 1 if kind == "test" else settings.max_attempts,
        "ignores_pause": kind in ASKED_FOR,
        "next_attempt_at": now,
        "enqueued_at": now,  # queued right after commit; the scheduler repairs a failed hand-off
        "order_key": None,
        "waiting": None,
        "waiting_for": None,
        "created_at": now,
        "updated_at": now,
    }


def _earlier(session: Session, workspace_id: str, digests: dict[str, str]) -> dict[str, Published]:
    """What was published before under these idempotency keys (key -> digest), by key.

    One query for the events and one for their deliveries, however many keys; raises
    IdempotencyConflict naming every key that was used with another body.
    """
    if not digests:
        return {}
    events = session.scalars(
        select(Event).where(
            Event.workspace_id == workspace_id, Event.idempotency_key.in_(list(digests))
        )
    ).all()
    keyed = [(e.idempotency_key or "", e) for e in events]  # found by their keys: none is None
    conflicts = [key for key, e in keyed if e.request_hash != digests[key]]
    if conflicts:
        raise IdempotencyConflict(*conflicts)
    for event in events:
        # Answers, not work: detached, a commit after this does not make them load again.
        session.expunge(event)
    found = {key: Published(event=e, delivery_ids=[], created=False) for key, e in keyed}
    if found:
        by_event = {p.event.id: p for p in found.values()}
        rows = session.execute(
            select(Delivery.event_id, Delivery.id)
            .where(Delivery.event_id.in_(list(by_event)), Delivery.kind == "event")
            .order_by(Delivery.id)
        ).all()
        for event_id, delivery_id in rows:
            by_event[event_id].delivery_ids.append(delivery_id)
    return found


def _existing(session: Session, workspace_id: str, key: str, digest: str) -> Published | None:
    return _earlier(session, workspace_id, {key: digest}).get(key)


def _event_values(
    workspace_id: str,
    event_type: str,
    data: dict[str, Any],
    now: datetime,
    idempotency_key: str | None,
    digest: str,
    event_id: str | None = None,
) -> dict[str, Any]:
    """The row of a published event, for a plain INSERT."""
    return {
        "id": event_id or new_id("evt"),
        "workspace_id": workspace_id,
        "type": event_type,
        "data": data,
        "occurred_at": now,
        "created_at": now,
        "idempotency_key": idempotency_key or None,
        "request_hash": digest,
        "is_test": False,
    }


def _subscribers(session: Session, workspace_id: str) -> list[Subscriber]:
    """The workspace's active webhooks as (id, patterns, ordering key): who gets what is
    published now, and in which lines."""
    rows = fastsql.rows(session, _SUBSCRIBERS, {"workspace_id": workspace_id})
    return [(wid, _patterns(patterns), ordering) for wid, patterns, ordering in rows]


@functools.lru_cache(maxsize=4096)
def _patterns(text: str) -> tuple[str, ...]:
    """The patterns of a webhook's `events` column (JSON), shared: a tuple."""
    return tuple(json.loads(text))


def _subscribed(webhooks: list[Subscriber], event_type: str) -> list[str]:
    """The ids of `webhooks` whose patterns cover `event_type`."""
    return [
        wid
        for wid, patterns, _ in webhooks
        if any(catalog.matches(p, event_type) for p in patterns)
    ]


def _in_line(webhooks: list[Subscriber], subscribed: list[str]) -> bool:
    """Some of the `subscribed` webhooks have an ordering key: their deliveries are put in
    their lines (`_line_up`) in the transaction that writes them."""
    return not {wid for wid, _, key in webhooks if key}.isdisjoint(subscribed)


def _line_up(
    session: Session,
    webhooks: list[Subscriber],
    events: dict[str, Event],
    rows: list[dict[str, Any]],
) -> None:
    """Render the ordering keys of the rows whose webhook has one, and put those rows in
    their keys' lines (`flow.line_up`); rows are in publish order."""
    ordering = {wid: key for wid, _, key in webhooks if key}
    ordered = [row for row in rows if row["webhook_id"] in ordering]
    if not ordered:
        return
    envelopes = {event_id: outgoing.envelope(event) for event_id, event in events.items()}
    keys = flow.render_keys(
        [(ordering[row["webhook_id"]], envelopes[row["event_id"]]) for row in ordered]
    )
    for row, key in zip(ordered, keys, strict=True):
        row["order_key"] = key
    flow.line_up(session, rows)


def _event_deliveries(
    event: Event, webhook_ids: list[str], now: datetime, settings: Settings
) -> list[dict[str, Any]]:
    """A delivery row of a freshly published event for each of `webhook_ids`."""
    return [delivery_row(event, wid, now, kind="event", settings=settings) for wid in webhook_ids]


def publish(
    session: Session,
    workspace_id: str,
    event_type: str,
    data: dict[str, Any],
    settings: Settings,
    *,
    idempotency_key: str | None = None,
    webhooks: Sequence[WebhookRow] | None = None,
) -> Published:
    """Store the event and its deliveries in one transaction; enqueue them with `dispatch`.
    `webhooks`: the workspace's active webhooks as read with the API key
    (`accounts.authenticate_publisher`), or None to read them here."""
    digest = request_hash(event_type, data)
    if idempotency_key:
        if sqlite.reading_now(session):
            session.rollback()  # the API key's read; an Idempotency-Key is looked up in the write
        found = _existing(session, workspace_id, idempotency_key, digest)
        if found:
            return found
    read = None if idempotency_key else _read_first(session, workspace_id, webhooks)
    asked: Asked = (workspace_id, event_type, data, settings, digest)
    if read is not None and not pgbatch.used_by(session):
        grouped = _write_grouped(session, asked, read)
        if grouped is not None:
            return grouped
    try:
        return _write(session, *asked, read, idempotency_key)
    except IntegrityError:
        if read is None:
            raise
        # A webhook read first was deleted before the write: read them again, in it.
        session.rollback()
        return _write(session, *asked, None, idempotency_key)


def _read_first(
    session: Session,
    workspace_id: str,
    given: Sequence[WebhookRow] | None = None,
) -> list[Subscriber] | None:
    """The subscribers, read before the event is written (or `given`, as read with the API
    key). On SQLite before the write lock is taken (a read waits for no one, and sees the last
    commit), in the API key's look-up's transaction when it is still open: the lock is then
    held for the two INSERTs alone, not for this query and the building of every row. On
    PostgreSQL in the transaction that goes on to write (`_write_one`)."""
    if given is not None:
        if sqlite.reading_now(session):
            session.rollback()  # the key's read, which read them: the write begins anew
        return [(wid, _patterns(patterns), ordering) for wid, patterns, ordering in given]
    if pgbatch.used_by(session):
        return _subscribers(session, workspace_id)
    if not (sqlite.reading_now(session) or sqlite.reading(session)):
        return None
    try:
        return _subscribers(session, workspace_id)
    finally:
        session.rollback()


# What a publish call asks: (workspace id, event type, data, settings, request digest).
Asked = tuple[str, str, dict[str, Any], Settings, str]


def _write_grouped(session: Session, asked: Asked, webhooks: list[Subscriber]) -> Published | None:
    """The event and its deliveries written with the publish calls of this process that write
    at the same moment (`commitgroup`), in one transaction; None when this call must write
    alone (`_write`): its group's transaction failed, or a webhook it goes to has an
    ordering key (its line is read in the transaction that writes it)."""
    workspace_id, event_type, data, settings, digest = asked
    subscribed = _subscribed(webhooks, event_type)
    if _in_line(webhooks, subscribed):
        return None
    now = utcnow()
    values = _event_values(workspace_id, event_type, data, now, None, digest)
    event = Event(**values)  # never attached to the session, as in `_write`
    rows = _event_deliveries(event, subscribed, now, settings)
    if not _PUBLISHES.write(session, (values, rows)):
        return None
    return Published(event=event, delivery_ids=[r["id"] for r in rows])


def _write_group(session: Session, items: Sequence[tuple[dict[str, Any], list[Any]]]) -> None:
    """The events and deliveries of a group of publish calls: one INSERT each, one commit."""
    batch = batchsql.of(session)
    batch.insert_rows(session, EVENTS, [values for values, _ in items])
    rows = [row for _, delivery_rows in items for row in delivery_rows]
    if rows:
        batch.insert_rows(session, DELIVERIES, rows)
    session.commit()


# This process's publish calls that write at the same moment (on SQLite, where the
# subscribers are read before the write: `_read_first`).
_PUBLISHES = commitgroup.Group(_write_group)


def _write(
    session: Session,
    workspace_id: str,
    event_type: str,
    data: dict[str, Any],
    settings: Settings,
    digest: str,
    webhooks: list[Subscriber] | None,
    idempotency_key: str | None = None,
) -> Published:
    """`publish`'s transaction: the event and its deliveries, committed (the subscribers read
    in it unless `webhooks` were read first)."""
    now = utcnow()
    values = _event_values(workspace_id, event_type, data, now, idempotency_key, digest)
    # Written with a plain INSERT; the answer is built from `event`, never attached to the
    # session, so nothing is reloaded after the commit (on SQLite that would open a new
    # transaction, holding the write lock until the request ends).
    event = Event(**values)
    if pgbatch.used_by(session):
        if webhooks is None:
            webhooks = _subscribers(session, workspace_id)
        one = _write_one(session, event, values, webhooks, settings)
        if one is not None:
            return one
    rows = None
    if webhooks is not None:
        rows = _event_deliveries(event, _subscribed(webhooks, event_type), now, settings)
    try:
        batchsql.of(session).insert_rows(session, EVENTS, [values])
    except IntegrityError:
        found = _published_meanwhile(session, workspace_id, idempotency_key, digest)
        if found is None:
            raise
        return found
    if webhooks is None:
        webhooks = _subscribers(session, workspace_id)
        rows = _event_deliveries(event, _subscribed(webhooks, event_type), now, settings)
    if rows:
        _line_up(session, webhooks, {event.id: event}, rows)
        _insert_deliveries(session, rows)
    session.commit()
    return Published(event=event, delivery_ids=[r["id"] for r in rows or ()])


def _write_one(
    session: Session,
    event: Event,
    values: dict[str, Any],
    webhooks: list[Subscriber],
    settings: Settings,
) -> Published | None:
    """On PostgreSQL, the event and its deliveries in one statement (`pgbatch.publish_event`),
    committed with it in one round trip; None when a webhook it goes to has an ordering key
    (`_write` lines its deliveries up). An event published meanwhile under the same
    idempotency key is the answer; any other conflict (a webhook deleted since it was read) is
    raised."""
    subscribed = _subscribed(webhooks, event.type)
    if _in_line(webhooks, subscribed):
        return None
    ids = [new_id("dlv") for _ in subscribed]
    try:
        pgbatch.publish_event(
            session, values, list(zip(ids, subscribed, strict=True)), settings.max_attempts
        )
    except IntegrityError:
        found = _published_meanwhile(
            session, event.workspace_id, event.idempotency_key, event.request_hash or ""
        )
        if found is None:
            raise
        return found
    return Published(event=event, delivery_ids=ids)


def _published_meanwhile(
    session: Session, workspace_id: str, idempotency_key: str | None, digest: str
) -> Published | None:
    """After a write failed on a conflict (rolled back here): the event another request
    published meanwhile under the same idempotency key, the answer to this one; None when
    the call has no key or none was published (another conflict, for the caller to raise)."""
    session.rollback()
    if not idempotency_key:
        return None
    return _existing(session, workspace_id, idempotency_key, digest)


# A batch whose key another request publishes meanwhile is written again, as a replay then.
_BATCH_WRITES = 3


def publish_batch(
    session: Session, workspace_id: str, items: list[Item], settings: Settings
) -> list[Published]:
    """Store a batch's events and their deliveries in one transaction: all of them, or none.

    The answer has one `Published` per item, in order. An item whose idempotency key was used
    before with the same body, in an earlier call or earlier in this batch, is a replay of
    that publish (nothing new is stored); with another body the whole batch is refused
    (BatchConflict). Enqueue the created deliveries with `dispatch`.
    """
    digests = [request_hash(item.type, item.data) for item in items]
    tries = 1
    while True:
        try:
            return _write_batch(session, workspace_id, items, digests, settings)
        except BatchConflict:
            session.rollback()  # end the look-up's transaction (on SQLite, the write lock)
            raise
        except IntegrityError:
            session.rollback()  # a key published concurrently: the next look finds it
            if tries == _BATCH_WRITES:
                raise
            tries += 1


def _write_batch(
    session: Session,
    workspace_id: str,
    items: list[Item],
    digests: list[str],
    settings: Settings,
) -> list[Published]:
    """One try of `publish_batch`: look the keys up, then one INSERT of events, one of
    deliveries, and commit."""
    first = _first_uses(items)
    replays = _replays(session, workspace_id, items, digests, first)
    now = utcnow()
    # Sorted ids keep the batch's order in every listing ordered by id (ULIDs of one
    # millisecond would otherwise sort at random).
    event_ids = iter(sorted(new_id("evt") for _ in items))
    answers: list[Published] = []
    fresh: list[dict[str, Any]] = []
    for index, (item, digest) in enumerate(zip(items, digests, strict=True)):
        key = item.idempotency_key
        if key in replays:
            answers.append(replays[key])
        elif key and first[key] != index:
            earlier = answers[first[key]]  # shares its delivery_ids list, filled below
            answers.append(Published(earlier.event, earlier.delivery_ids, created=False))
        else:
            values = _event_values(
                workspace_id, item.type, item.data, now, key, digest, next(event_ids)
            )
            fresh.append(values)
            answers.append(Published(event=Event(**values)))
    if fresh:
        batchsql.of(session).insert_rows(session, EVENTS, fresh)
        _add_deliveries(session, workspace_id, [a for a in answers if a.created], now, settings)
    session.commit()
    return answers


def _add_deliveries(
    session: Session,
    workspace_id: str,
    published: list[Published],
    now: datetime,
    settings: Settings,
) -> None:
    """Insert the deliveries of freshly published events in one statement (the webhooks read
    once, matched once per event type) and note their ids on each `Published`."""
    webhooks = _subscribers(session, workspace_id)
    by_type: dict[str, list[str]] = {}
    per_event = []
    for p in published:
        if p.event.type not in by_type:
            by_type[p.event.type] = _subscribed(webhooks, p.event.type)
        per_event.append(_event_deliveries(p.event, by_type[p.event.type], now, settings))
    rows = [row for rows in per_event for row in rows]
    for row, delivery_id in zip(rows, sorted(r["id"] for r in rows), strict=True):
        row["id"] = delivery_id
    for p, rows_of_event in zip(published, per_event, strict=True):
        p.delivery_ids.extend(r["id"] for r in rows_of_event)
    if rows:
        _line_up(session, webhooks, {p.event.id: p.event for p in published}, rows)
        _insert_deliveries(session, rows)


def _first_uses(items: list[Item]) -> dict[str, int]:
    """Each idempotency key of the batch, with the index of the first event that carries it."""
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.idempotency_key:
            first.setdefault(item.idempotency_key, index)
    return first


def _replays(
    session: Session,
    workspace_id: str,
    items: list[Item],
    digests: list[str],
    first: dict[str, int],
) -> dict[str, Published]:
    """The earlier publishes under the batch's keys, by key; BatchConflict names every event
    whose key was used with another body, earlier in the batch or before it."""
    clashes: dict[int, int | None] = {
        index: first[item.idempotency_key]
        for index, item in enumerate(items)
        if item.idempotency_key and digests[first[item.idempotency_key]] != digests[index]
    }
    try:
        found = _earlier(session, workspace_id, {k: digests[i] for k, i in first.items()})
    except IdempotencyConflict as exc:
        stale = set(exc.args)
        for index, item in enumerate(items):
            if item.idempotency_key in stale:
                clashes.setdefault(index, None)
        found = {}
    if clashes:
        raise BatchConflict(dict(sorted(clashes.items())))
    return found


def add_delivery(
    session: Session, event: Event, webhook: Webhook, settings: Settings, *, kind: str
) -> str:
    """One more delivery of a stored event to one webhook (test or redelivery), committed."""
    row = delivery_row(event, webhook.id, utcnow(), kind=kind, settings=settings)
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


def default_test_type(webhook: Webhook) -> str:
    """The event type a test event has when none is chosen: the first catalog type the
    webhook subscribes to."""
    for event in catalog.CATALOG:
        if subscribes(webhook, event.type):
            return event.type
    return catalog.CATALOG[0].type


def send_test(
    session: Session, redis: Redis, webhook: Webhook, event_type: str, settings: Settings
) -> tuple[Event, str]:
    """Send the catalog example of `event_type` to this webhook alone, active or not: the
    test event, and its delivery's id (committed; the workers are woken)."""
    event = create_test_event(session, webhook, event_type)
    delivery_id = add_delivery(session, event, webhook, settings, kind="test")
    dispatch(session, redis, settings, [delivery_id])
    return event, delivery_id


def redeliver(session: Session, redis: Redis, original: Delivery, settings: Settings) -> str:
    """Send a delivery's event to its webhook again, as a new delivery with the same
    `webhook-id` (even while the webhook is paused): the new delivery's id."""
    new_id = add_delivery(session, original.event, original.webhook, settings, kind="redelivery")
    dispatch(session, redis, settings, [new_id])
    return new_id


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
