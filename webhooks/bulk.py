"""Recover, replay-missed and redeliver-matching: bulk jobs that create deliveries in batches.

`start` (or `start_redeliver`) counts what will be created and stores a `BulkJob`; an RQ job
(`jobs.bulk.run`) then creates the deliveries, each batch in its own short transaction and
handed to RQ after its commit. Each recover or replay batch asks the database again for what
still lacks a delivery, so a run that stops half-way, a second run, or a second request never
creates a delivery twice. A redeliver job walks a fixed set (the failed deliveries its filter
matched when it started) in key order and commits how far it got with each batch's deliveries,
so a run that starts again goes on after the last batch it committed.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from rq import Queue
from sqlalchemy import and_, exists, func, insert, or_, select, tuple_, update
from sqlalchemy.orm import aliased

from webhooks import catalog, logs, publishing, queueing
from webhooks.config import Settings
from webhooks.errors import Invalid
from webhooks.models import (
    BulkJob,
    Delivery,
    DeliveryStatus,
    Event,
    Session,
    Webhook,
    changed,
    utcnow,
)

log = logging.getLogger(__name__)

RECOVER, REPLAY, REDELIVER = "recover", "replay", "redeliver"
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
BATCH = 500
MAX_PER_CALL = 10_000  # deliveries one request creates at most; ask again for more
RUN_JOB = "jobs.bulk.run"
# A running job whose progress has not moved for this long lost its worker: it may start again.
STALLED_AFTER = timedelta(minutes=2)


class Stopped(Exception):
    """The webhook was paused, disabled or deleted while the job ran."""


def _failed_events(webhook_id: str, since: datetime, until: datetime) -> Any:
    """Events with a failed delivery to the webhook created in [since, until), and neither a
    succeeded nor a pending one: oldest first, one row per event."""
    other = aliased(Delivery)
    settled = (
        exists()
        .where(
            other.webhook_id == webhook_id,
            other.event_id == Delivery.event_id,
            other.status.in_((DeliveryStatus.SUCCEEDED, DeliveryStatus.PENDING)),
        )
        .correlate(Delivery)
    )
    return (
        select(Delivery.event_id)
        .join(Event, Event.id == Delivery.event_id)
        .where(
            Delivery.webhook_id == webhook_id,
            Delivery.status == DeliveryStatus.FAILED,
            Delivery.created_at >= since,
            Delivery.created_at < until,
            Event.is_test.is_(False),
            ~settled,
        )
        .group_by(Delivery.event_id)
        .order_by(func.min(Delivery.created_at), Delivery.event_id)
    )


def _missed_events(webhook: Webhook, since: datetime, until: datetime) -> Any:
    """Events of its types published in [max(since, its creation), until) with no delivery to
    it, test events excepted: oldest first."""
    types = [e.type for e in catalog.CATALOG if publishing.subscribes(webhook, e.type)]
    delivered = exists().where(Delivery.webhook_id == webhook.id, Delivery.event_id == Event.id)
    return (
        select(Event.id)
        .where(
            Event.workspace_id == webhook.workspace_id,
            Event.created_at >= max(since, webhook.created_at),
            Event.created_at < until,
            Event.is_test.is_(False),
            Event.type.in_(types),
            ~delivered,
        )
        .order_by(Event.created_at, Event.id)
    )


def _count(session: Session, query: Any) -> int:
    """How many rows a (limited) query gives."""
    count: int = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    return count


def candidates(webhook: Webhook, kind: str, params: dict[str, Any]) -> Any:
    """The query of event ids that still need a delivery of this kind."""
    since = datetime.fromisoformat(params["since"])
    until = datetime.fromisoformat(params["until"])
    if kind == RECOVER:
        return _failed_events(webhook.id, since, until)
    return _missed_events(webhook, since, until)


def start(
    session: Session,
    redis: Redis,
    webhook: Webhook,
    kind: str,
    since: datetime,
    until: datetime | None,
    settings: Settings,
) -> BulkJob:
    """Count what the job will create (at most MAX_PER_CALL), store it and queue it.

    Raises Invalid: 409 `webhook_inactive` while the webhook is paused or disabled, 400 when
    the window is empty."""
    if not webhook.active:
        state = "disabled" if (webhook.disabled_reason or "").startswith("Disabled") else "paused"
        raise Invalid(
            "webhook_inactive",
            f"webhook {webhook.id} is {state}; turn it on before sending it anything",
            status=409,
        )
    now = utcnow()
    until = until or now
    if until <= since:
        msg = "until must be later than since"
        raise Invalid("validation_error", msg, {"until": msg})
    params = {"since": since.isoformat(), "until": until.isoformat()}
    count = _count(session, candidates(webhook, kind, params).limit(MAX_PER_CALL))
    return _queue(
        session, redis, settings, now, (webhook.workspace_id, webhook.id, kind), params, count
    )


def _queue(
    session: Session,
    redis: Redis,
    settings: Settings,
    now: datetime,
    owner: tuple[str, str | None, str],
    params: dict[str, Any],
    count: int,
) -> BulkJob:
    """Store a job of `count` deliveries for `owner` (workspace id, webhook id, kind) and queue
    its run (with none to run it is done at once)."""
    workspace_id, webhook_id, kind = owner
    job = BulkJob(
        workspace_id=workspace_id,
        webhook_id=webhook_id,
        kind=kind,
        status=QUEUED if count else DONE,
        params=params,
        done=0,
        total=count,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.commit()
    if count:
        queueing.safe("queue a bulk job", enqueue, redis, settings, job.id)
    return job


def enqueue(redis: Redis, settings: Settings, job_id: str) -> None:
    Queue(settings.queue, connection=redis).enqueue(
        RUN_JOB,
        job_id,
        job_id=f"{job_id}-run",
        result_ttl=0,
        failure_ttl=7 * 24 * 3600,
        job_timeout=3600,
    )


def run(session: Session, redis: Redis, job_id: str, settings: Settings) -> str | None:
    """Create the job's deliveries batch by batch; returns its final status, or None when
    another worker has it."""
    now = utcnow()
    claimed = changed(
        session,
        update(BulkJob)
        .where(
            BulkJob.id == job_id,
            or_(
                BulkJob.status == QUEUED,
                and_(BulkJob.status == RUNNING, BulkJob.updated_at < now - STALLED_AFTER),
            ),
        )
        .values(status=RUNNING, updated_at=now)
        .execution_options(synchronize_session=False),
    )
    session.commit()
    if claimed != 1:
        return None
    job = session.get(BulkJob, job_id, populate_existing=True)
    assert job is not None
    step = _redeliver_batch if job.kind == REDELIVER else _batch
    try:
        while job.done < job.total and step(session, redis, job, settings):
            pass
    except Stopped as exc:
        session.rollback()
        job.status, job.error = FAILED, f"stopped after {job.done} of {job.total}: {exc}"
        session.commit()
        return job.status
    except Exception as exc:
        session.rollback()
        job.status, job.error = FAILED, f"{type(exc).__name__}: {exc}"
        session.commit()
        raise
    # Fewer may be left than were counted (a delivery succeeded meanwhile): done is the total.
    job.status, job.total, job.updated_at = DONE, job.done, utcnow()
    session.commit()
    return job.status


def _batch(session: Session, redis: Redis, job: BulkJob, settings: Settings) -> int:
    """Create one batch of deliveries and commit it; returns how many."""
    # Locking the webhook's row makes runs for one webhook take turns (PostgreSQL; SQLite's
    # BEGIN IMMEDIATE already does), so each batch sees what the previous one created. NO KEY
    # UPDATE, so that publishing (whose foreign key check takes KEY SHARE) never waits on it.
    webhook = session.scalars(
        select(Webhook)
        .where(Webhook.id == job.webhook_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).first()
    if webhook is None or not webhook.active:
        raise Stopped("the webhook was paused, disabled or deleted")
    wanted = min(BATCH, job.total - job.done)
    ids = session.scalars(candidates(webhook, job.kind, job.params).limit(wanted)).all()
    if not ids:
        session.rollback()
        return 0
    order = {event_id: n for n, event_id in enumerate(ids)}
    events = sorted(
        session.scalars(select(Event).where(Event.id.in_(ids))), key=lambda e: order[e.id]
    )
    now = utcnow()
    rows = [
        publishing.delivery_row(event, webhook.id, now, kind=job.kind, settings=settings)
        for event in events
    ]
    session.execute(insert(Delivery), rows)
    job.done += len(rows)
    job.updated_at = now
    session.commit()
    publishing.dispatch(session, redis, settings, [r["id"] for r in rows])
    return len(rows)


# -- redeliver matching -------------------------------------------------------------------------


def _redeliverable_clauses(
    session: Session, workspace_id: str, params: dict[str, Any]
) -> list[Any]:
    """The failed deliveries the job's filter matched when it started, after its cursor. `upto`
    (the start) keeps out what was created or ended later: a delivery that fails after the
    start, and the redeliveries themselves."""
    filters = logs.LogFilter.from_args({**params["filter"], "status": DeliveryStatus.FAILED})
    upto = datetime.fromisoformat(params["upto"])
    # One upper bound on created_at, the earlier of To and the start (created_at <= upto is
    # created_at < upto + 1 µs, the columns' precision). With From, To and the start as three
    # bounds, SQLite read every delivery of the window by time, where the status or webhook
    # index reads only the failed ones or the webhook's (counting 10 matches over a day's
    # From and To at a million rows: 270 ms, then 7 ms).
    if filters.until is None or filters.until > upto:
        filters.until = upto + timedelta(microseconds=1)
    clauses = logs.matching(session, workspace_id, filters)
    clauses.append(Delivery.updated_at <= upto)
    if params.get("after"):
        created, delivery_id = params["after"]
        clauses.append(
            tuple_(Delivery.created_at, Delivery.id)
            > tuple_(datetime.fromisoformat(created), delivery_id)
        )
    return clauses


def _redeliverable(session: Session, workspace_id: str, params: dict[str, Any]) -> Any:
    """Those deliveries in key order, the order a job walks them in."""
    clauses = _redeliverable_clauses(session, workspace_id, params)
    return select(Delivery).where(*clauses).order_by(Delivery.created_at, Delivery.id)


def redeliver_count(session: Session, workspace_id: str, filters: logs.LogFilter) -> int:
    """How many failed deliveries the filter matches, counted up to MAX_PER_CALL + 1."""
    params = {"filter": filters.to_args(), "upto": utcnow().isoformat()}
    # Counting needs neither the rows' columns nor their order.
    clauses = _redeliverable_clauses(session, workspace_id, params)
    return _count(session, select(Delivery.id).where(*clauses).limit(MAX_PER_CALL + 1))


def start_redeliver(
    session: Session,
    redis: Redis,
    workspace_id: str,
    filters: logs.LogFilter,
    settings: Settings,
) -> BulkJob:
    """Redeliver every failed delivery of the workspace that the log's filter matches now.

    Raises Invalid (400) when more than MAX_PER_CALL match: the filter must be narrowed."""
    now = utcnow()
    params: dict[str, Any] = {"filter": filters.to_args(), "upto": now.isoformat(), "after": None}
    params["filter"].pop("status", None)  # always the failed ones
    count = redeliver_count(session, workspace_id, filters)
    if count > MAX_PER_CALL:
        msg = (
            f"more than {MAX_PER_CALL:,} failed deliveries match; narrow the filter "
            "(From and To, say) to redeliver them in parts"
        )
        raise Invalid("validation_error", msg, {"filter": msg})
    webhook_id = filters.webhook_id if count else None
    return _queue(
        session, redis, settings, now, (workspace_id, webhook_id, REDELIVER), params, count
    )


def _redeliver_batch(session: Session, redis: Redis, job: BulkJob, settings: Settings) -> int:
    """Redeliver one batch, as the logs' Redeliver does each (a new delivery of the same event
    to the same webhook, sent even while it is paused), and commit it with the job's cursor."""
    # The job's row, locked and read again: a second run of a stalled job waits here, then
    # sees the cursor this one committed (SQLite's BEGIN IMMEDIATE serialises as well).
    locked = session.scalars(
        select(BulkJob)
        .where(BulkJob.id == job.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    if locked is None:
        raise Stopped("the job was deleted")
    wanted = min(BATCH, job.total - job.done)
    if wanted <= 0:
        session.rollback()
        return 0
    pairs = session.execute(
        _redeliverable(session, job.workspace_id, job.params)
        .add_columns(Event)
        .join(Event, Event.id == Delivery.event_id)
        .limit(wanted)
    ).all()
    if not pairs:
        session.rollback()
        return 0
    now = utcnow()
    rows = [
        publishing.delivery_row(
            event, original.webhook_id, now, kind="redelivery", settings=settings
        )
        for original, event in pairs
    ]
    last = pairs[-1][0]
    session.execute(insert(Delivery), rows)
    job.done += len(rows)
    job.params = {**job.params, "after": [last.created_at.isoformat(), last.id]}
    job.updated_at = now
    session.commit()
    publishing.dispatch(session, redis, settings, [r["id"] for r in rows])
    return len(rows)


def requeue_stalled(session: Session, redis: Redis, settings: Settings) -> int:
    """Queue again the jobs whose hand-off to RQ failed or whose worker died."""
    now = utcnow()
    rows = session.scalars(
        select(BulkJob.id).where(
            BulkJob.status.in_((QUEUED, RUNNING)), BulkJob.updated_at < now - STALLED_AFTER
        )
    ).all()
    session.rollback()
    live = queueing.live_jobs(redis, [f"{job_id}-run" for job_id in rows])
    stalled = [job_id for job_id in rows if f"{job_id}-run" not in live]
    for job_id in stalled:
        enqueue(redis, settings, job_id)
    return len(stalled)


def recover_offer(
    session: Session, webhook: Webhook, anchor: datetime, settings: Settings
) -> tuple[datetime, int] | None:
    """For "recover failed since then" when a webhook is turned on again: where the window
    starts (the creation of the first delivery that failed since `anchor`) and how many
    deliveries it would create; None when there is nothing to recover."""
    # A delivery that ended after `anchor` was created at most its retry schedule earlier
    # (twice that with Retry-After), which bounds the search.
    lookback = timedelta(seconds=2 * sum(settings.retry_schedule) + 3600)
    first = session.scalar(
        select(func.min(Delivery.created_at)).where(
            Delivery.webhook_id == webhook.id,
            Delivery.status == DeliveryStatus.FAILED,
            Delivery.created_at >= anchor - lookback,
            Delivery.updated_at >= anchor,
        )
    )
    since = min(first, anchor) if first is not None else anchor
    params = {"since": since.isoformat(), "until": utcnow().isoformat()}
    count = _count(session, candidates(webhook, RECOVER, params).limit(MAX_PER_CALL))
    return (since, count) if count else None


def replay_offer(session: Session, webhook: Webhook, paused_at: datetime) -> int:
    """For "replay missed" when a paused webhook is turned on again: how many events of its
    types were published since it was paused (at most MAX_PER_CALL), none of which it got."""
    params = {"since": paused_at.isoformat(), "until": utcnow().isoformat()}
    return _count(session, candidates(webhook, REPLAY, params).limit(MAX_PER_CALL))
