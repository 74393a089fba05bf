"""The claim: which due deliveries a worker takes now, one transaction per batch.

The database is the queue. A claim walks the due deliveries in the order they fell due
(`_candidates`), decides which of them may go now (`_choose`: each webhook's share of the
worker's POST slots, and its rate limit: `flow.ration`; a delivery over the limit is given a start
time of its own instead, `flow.settle`), leases those with one conditional update
(`_lease`: a delivery is leased once, so a second wake-up never sends it twice), then reads
their webhooks and events, ends those whose webhook is paused, and writes an in-flight attempt
for each of the others (`_prepare`). Bodies, headers and signatures are built after the commit
before their POSTs (`outgoing.render`), never while this transaction holds its locks.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, select, update

from webhooks import batchsql, fastsql, flow, outgoing, pgbatch, sqlite
from webhooks.config import Settings
from webhooks.models import (
    ATTEMPTS,
    DELIVERIES,
    ENDED,
    EVENTS,
    UNLEASED,
    WEBHOOK_SECRETS,
    WEBHOOKS,
    DeliveryStatus,
    Session,
    WebhookSecret,
    utcnow,
)
from webhooks.outgoing import Prepared, RenderLater, Target

_D = DELIVERIES.c
_E = EVENTS.c
_W = WEBHOOKS.c
_S = WEBHOOK_SECRETS.c
_INSERT_ATTEMPTS = insert(ATTEMPTS).returning(ATTEMPTS.c.delivery_id, ATTEMPTS.c.id)
# Candidates read per delivery asked for: room for the rows `_choose` leaves to a webhook that
# has used its share, without a second walk.
OVERFETCH = 2


@dataclass(frozen=True)
class Lane:
    """Which webhooks a claim may take: every one but `skip` (the normal lane), or only those
    in `only` (the slow lane, for targets that kept POSTs waiting)."""

    skip: Collection[str] = frozenset()
    only: Collection[str] | None = None


@dataclass
class Claimed:
    """What a claim took, how many due deliveries it saw and left for lack of room, and how
    many it made wait for their webhook's rate limit (they are no longer due)."""

    prepared: list[Prepared] = field(default_factory=list)
    left: int = 0
    seen: int = 0
    deferred: int = 0


def claim(
    session: Session,
    settings: Settings,
    *,
    limit: int,
    lane: Lane = Lane(),
    room: Callable[[str], int] | None = None,
    rates: flow.Rates | None = None,
) -> Claimed:
    """Take up to `limit` due deliveries of `lane` and prepare their attempts, committed.

    `room(webhook_id)` says how many more POSTs to that webhook may start now (default: no
    bound). Deliveries not taken stay due, unleased: nothing holds them, nothing loses them.
    `rates` is what the worker knows of which webhooks have a rate limit (default: read now).
    """
    if limit <= 0 or (lane.only is not None and not lane.only):
        return Claimed()
    now = utcnow()
    pgbatch.by_key_without_flush(session)
    rows = _candidates(session, now, limit * OVERFETCH, lane)
    ration = flow.ration(session, rates, {row.webhook_id for row in rows}, now)
    chosen, left = _choose(rows, limit, room, ration)
    deferred = flow.settle(session, ration, chosen, now)
    if not chosen:
        session.commit() if deferred else session.rollback()
        return Claimed(left=left, seen=len(rows), deferred=deferred)
    token = secrets.token_hex(8)
    taken = _lease(session, chosen, token, now, settings)
    prepared = _prepare(session, taken, token, now)
    session.commit()
    return Claimed(prepared=prepared, left=left, seen=len(rows), deferred=deferred)


def _candidates(session: Session, now: datetime, count: int, lane: Lane) -> list[Any]:
    """Due, unleased deliveries in the order they fell due (the (status, next_attempt_at)
    index is walked in order; rows leased meanwhile by another worker are skipped on
    PostgreSQL, and SQLite has one writer at a time)."""
    query = _due_query(pgbatch.used_by(session), lane.only is not None, bool(lane.skip))
    params: dict[str, Any] = {"now": now, "count": count}
    if lane.only is not None:
        params["only"] = list(lane.only)
    if lane.skip:
        params["skip"] = list(lane.skip)
    return fastsql.rows(session, query, params)


@functools.lru_cache(maxsize=8)
def _due_query(postgres: bool, only: bool, skip: bool) -> Any:
    """The candidates' query, built once per database and kind of lane (a claim runs many
    times a second)."""
    query = select(_D.id, _D.webhook_id, _D.waiting).where(
        *UNLEASED, _D.next_attempt_at <= bindparam("now")
    )
    if only:
        query = query.where(batchsql.among(_D.webhook_id, "only", postgres=postgres))
    if skip:
        query = query.where(~batchsql.among(_D.webhook_id, "skip", postgres=postgres))
    query = query.order_by(_D.next_attempt_at).limit(bindparam("count"))
    return query.with_for_update(skip_locked=True) if postgres else query


def _choose(
    rows: list[Any], limit: int, room: Callable[[str], int] | None, ration: flow.Ration
) -> tuple[list[str], int]:
    """The ids that may go now, in order, and how many were left: a webhook takes no more
    than its room (the rest stay due) nor than its rate limit's starts (`ration` notes that
    the rest must wait)."""
    chosen: list[str] = []
    left = 0
    rooms: dict[str, int] = {}
    for row in rows:
        if len(chosen) == limit:
            break
        if room is not None:
            free = rooms.setdefault(row.webhook_id, room(row.webhook_id))
            if free <= 0:
                left += 1
                continue
        starts = ration.room(row.webhook_id, row.waiting)
        if starts is not None and starts <= 0:
            ration.refuse(row.webhook_id)
            continue
        if room is not None:
            rooms[row.webhook_id] -= 1
        ration.take(row.webhook_id)
        chosen.append(row.id)
    return chosen, left


def _lease(
    session: Session, ids: list[str], token: str, now: datetime, settings: Settings
) -> list[Any]:
    """Lease the chosen rows (still pending and unleased: the compare-and-set that makes a
    delivery ours alone), in the order they were chosen."""
    taken = fastsql.rows(
        session,
        _LEASE[sqlite.used_by(session)],
        {
            "ids": ids,
            "token": token,
            "expires": now + timedelta(seconds=settings.timeout + settings.lease_margin),
            "now": now,
        },
    )
    order = {delivery_id: i for i, delivery_id in enumerate(ids)}
    return sorted(taken, key=lambda r: order[r.id])


def _lease_statement(status: Any, *, postgres: bool) -> Any:
    return (
        update(DELIVERIES)
        .where(
            batchsql.among(_D.id, "ids", postgres=postgres),
            status == DeliveryStatus.PENDING,
            _D.lease_token.is_(None),
        )
        .values(
            lease_token=bindparam("token"),
            lease_expires_at=bindparam("expires"),
            enqueued_at=None,
            updated_at=bindparam("now"),
            attempt_count=_D.attempt_count + 1,
            waiting=None,
        )
        .returning(
            _D.id,
            _D.event_id,
            _D.webhook_id,
            _D.event_type,
            _D.attempt_count,
            _D.ignores_pause,
            _D.order_key,
        )
    )


# By key: `status = 'pending'` would walk every due row of the backlog instead (on SQLite, and
# on PostgreSQL whenever its statistics misjudge how many rows are pending).
_LEASE = {
    False: _lease_statement(pgbatch.unindexed(_D.status), postgres=True),
    True: _lease_statement(sqlite.unindexed(_D.status), postgres=False),
}


def _prepare(session: Session, taken: list[Any], token: str, now: datetime) -> list[Prepared]:
    """Read the leased rows' webhooks and events; end those whose webhook is paused; write an
    in-flight attempt for each other, whose message is built after the commit."""
    if not taken:
        return []
    webhooks = targets(session, {row.webhook_id for row in taken})
    events = _events(session, {row.event_id for row in taken})
    inactive: list[dict[str, Any]] = []
    ready: list[tuple[Any, Target]] = []
    for row in taken:
        webhook = webhooks[row.webhook_id]
        if not webhook.active and not row.ignores_pause:
            inactive.append({"b_id": row.id, "b_error": _paused_text(row, webhook)})
        else:
            ready.append((row, webhook))
    if inactive:
        _fail_inactive(session, inactive, now)
        ended = {row.id for row in taken if row.order_key is not None}
        flow.release(session, [r["b_id"] for r in inactive if r["b_id"] in ended], now)
    attempt_ids = _write_attempts(session, ready, now)
    return [
        Prepared(
            delivery_id=row.id,
            attempt_id=attempt_id,
            token=token,
            url=webhook.url,
            body=b"",
            headers={},
            webhook_id=row.webhook_id,
            later=RenderLater(webhook=webhook, event=events[row.event_id], delivery=row),
            ordered=row.order_key is not None,
        )
        for (row, webhook), attempt_id in zip(ready, attempt_ids, strict=True)
    ]


def _paused_text(row: Any, webhook: Target) -> str:
    return (
        f"not sent: attempt {row.attempt_count} fell due while the webhook was inactive "
        f"({webhook.disabled_reason or 'paused'})"
    )


def _write_attempts(session: Session, ready: list[tuple[Any, Target]], now: datetime) -> list[int]:
    """One in-flight attempt per delivery to send, in one statement; their ids in order. The
    request is logged with the result: it is built after the commit, before the POST."""
    if not ready:
        return []
    found = batchsql.of(session).insert_attempts(
        session, [(row.id, row.attempt_count, webhook.url) for row, webhook in ready], now
    )
    return [found[row.id] for row, _webhook in ready]


def _events(session: Session, event_ids: set[str]) -> dict[str, Any]:
    query = _EVENTS[pgbatch.used_by(session)]
    return {e.id: e for e in fastsql.rows(session, query, {"ids": list(event_ids)})}


_EVENTS = {
    postgres: select(_E.id, _E.type, _E.occurred_at, _E.workspace_id, _E.data).where(
        batchsql.among(_E.id, "ids", postgres=postgres)
    )
    for postgres in (False, True)
}


def targets(session: Session, webhook_ids: set[str]) -> dict[str, Target]:
    """The webhooks as sending needs them, with their secrets (newest first), in one query."""
    found: dict[str, Target] = {}
    rows = fastsql.rows(session, _TARGETS[pgbatch.used_by(session)], {"ids": list(webhook_ids)})
    for row in rows:
        target = found.get(row.id)
        if target is None:
            target = found[row.id] = outgoing.target_of(row)
        if row.secret is not None:
            target.secrets.append(row)
    return found


_TARGETS = {
    postgres: select(
        _W.id,
        _W.url,
        _W.active,
        _W.disabled_reason,
        _W.headers,
        _W.transform,
        _W.template,
        _W.template_params,
        _S.secret,
        _S.expires_at,
    )
    .outerjoin(WebhookSecret, _S.webhook_id == _W.id)
    .where(batchsql.among(_W.id, "ids", postgres=postgres))
    .order_by(_S.id.desc())
    for postgres in (False, True)
}


def _fail_inactive(session: Session, rows: list[dict[str, Any]], now: datetime) -> None:
    """Deliveries that fell due while their webhook was paused end `failed`, unattempted."""
    session.execute(
        update(DELIVERIES)
        .where(_D.id == bindparam("b_id"))
        .values(
            **ENDED,
            status=DeliveryStatus.FAILED,
            attempt_count=_D.attempt_count - 1,
            updated_at=now,
            last_error=bindparam("b_error"),
        ),
        rows,
    )
