"""The delivery state machine: record each attempt's result and decide what comes next (a
retry, success, failure, the webhook disabled), one transaction per batch of results.

What is claimed and when is `webhooks.claim`; what is sent is `webhooks.outgoing`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from sqlalchemy import select, update

from webhooks import (
    batchsql,
    failures,
    fastsql,
    flow,
    notifications,
    outgoing,
    pgbatch,
    queueing,
    retry,
    transport,
)
from webhooks.config import Settings
from webhooks.models import (
    ATTEMPTS,
    DELIVERIES,
    ENDED,
    AttemptOutcome,
    Delivery,
    DeliveryStatus,
    Session,
    Webhook,
    changed,
    utcnow,
)
from webhooks.outgoing import Prepared

log = logging.getLogger(__name__)

_D = DELIVERIES.c
_A = ATTEMPTS.c
MAX_LOST_ATTEMPTS = 3


def _end(delivery: Delivery, status: str, now: datetime) -> None:
    delivery.status = status
    for name, value in ENDED.items():
        setattr(delivery, name, value)
    delivery.updated_at = now


def _failure_text(result: transport.Result) -> str | None:
    if result.error:
        return result.error
    code = result.status_code
    if code is not None and 300 <= code < 400:
        where = result.headers.get("Location") or result.headers.get("location")
        return f"HTTP {code}: redirect{f' to {where}' if where else ''} not followed"
    if code is not None and not 200 <= code < 300:
        return f"HTTP {code}"
    return None


def record(
    session: Session,
    results: Sequence[tuple[Prepared, transport.Result]],
    settings: Settings,
    redis: Redis | None = None,
) -> dict[str, str]:
    """Write the attempts' results and move each delivery on, in one transaction; returns each
    delivery's status. `redis` sends the notifications this causes (default: the job's)."""
    if not results:
        return {}
    now = utcnow()
    # The requests as the log shows them (credentials masked), built before the transaction.
    sent = {p.attempt_id: _logged_request(p) for p, _ in results}
    pgbatch.by_key_without_flush(session)
    current = _leases(session, [p.delivery_id for p, _ in results])
    statuses: dict[str, str] = {}
    written = _still_ours(results, current, statuses)
    if not written:
        session.commit()
        return statuses
    _write_attempts(session, written, sent)
    ended: list[str] = []  # of deliveries in an ordering key's line
    succeeded = [(p, r) for p, r, error in written if error is None]
    if succeeded:
        _succeed(session, succeeded, now)
        failures.succeeded(session, [current[p.delivery_id] for p, _ in succeeded])
        statuses.update({p.delivery_id: DeliveryStatus.SUCCEEDED for p, _ in succeeded})
        ended += [p.delivery_id for p, _ in succeeded if p.ordered]
    failed = [(p, r, error) for p, r, error in written if error is not None]
    notify = _fail(session, failed, settings, now, statuses, ended) if failed else []
    # The next deliveries of the ended ones' lines go now.
    released = flow.release(session, ended, now) if ended else 0
    session.commit()
    waker = redis or notifications.job_redis()
    if released and waker is not None:  # else the scheduler's next scan wakes them
        queueing.safe(
            "wake the workers", queueing.wake, waker, settings.queue, hold=settings.requeue_after
        )
    # Messages are only written above; they are sent by their own jobs, never from here.
    if notify:
        notifications.hand_off(redis or notifications.job_redis(), settings, notify)
    return statuses


def _leases(session: Session, delivery_ids: list[str]) -> dict[str, Any]:
    """Each delivery's lease, status, kind and webhook as the database has them now."""
    query = _LEASES[pgbatch.used_by(session)]
    return {row.id: row for row in fastsql.rows(session, query, {"ids": delivery_ids})}


_LEASES = {
    postgres: select(_D.id, _D.lease_token, _D.status, _D.kind, _D.webhook_id).where(
        batchsql.among(_D.id, "ids", postgres=postgres)
    )
    for postgres in (False, True)
}


def _still_ours(
    results: Sequence[tuple[Prepared, transport.Result]],
    current: dict[str, Any],
    statuses: dict[str, str],
) -> list[tuple[Prepared, transport.Result, str | None]]:
    """The results whose lease still holds, each with its failure text (None: a success); the
    others are late (the attempt was declared lost) and only get their status in `statuses`."""
    written: list[tuple[Prepared, transport.Result, str | None]] = []
    for prepared, result in results:
        row = current.get(prepared.delivery_id)
        if row is None or row.lease_token != prepared.token:
            # The lease ran out and the attempt was declared lost; the delivery has moved on.
            statuses[prepared.delivery_id] = row.status if row else DeliveryStatus.FAILED
            log.warning("late result for %s ignored: its lease had expired", prepared.delivery_id)
            continue
        error = _failure_text(result) if prepared.render_error is None else prepared.render_error
        written.append((prepared, result, error))
    return written


def _fail(
    session: Session,
    failed: list[tuple[Prepared, transport.Result, str]],
    settings: Settings,
    now: datetime,
    statuses: dict[str, str],
    ended: list[str],
) -> list[str]:
    """Schedule each failed attempt's retry, or end its delivery (exhausted, or its target
    gone); the ids of the notifications this writes. Statuses go to `statuses`, deliveries
    that ended in an ordering key's line to `ended`."""
    notify: list[str] = []
    loaded = {
        d.id: d
        for d in session.scalars(
            select(Delivery)
            .where(Delivery.id.in_([p.delivery_id for p, _, _ in failed]))
            .execution_options(populate_existing=True)
        )
    }
    for prepared, result, error in failed:
        delivery = loaded[prepared.delivery_id]
        delivery.last_status_code = result.status_code
        delivery.last_error = error
        disabled = _schedule_next(
            session, delivery, result, settings, now, retryable=prepared.render_error is None
        )
        if disabled:
            notify += failures.gone(session, delivery, now, settings)
        elif delivery.status == DeliveryStatus.FAILED:
            notify += failures.exhausted(session, delivery, now, settings)
        statuses[prepared.delivery_id] = delivery.status
        if delivery.status != DeliveryStatus.PENDING and prepared.ordered:
            ended.append(prepared.delivery_id)
    return notify


def _logged_request(prepared: Prepared) -> tuple[dict[str, str], str]:
    return outgoing.loggable(prepared.headers), prepared.body.decode("utf-8", errors="replace")


def _write_attempts(
    session: Session,
    written: list[tuple[Prepared, transport.Result, str | None]],
    sent: dict[int, tuple[dict[str, str], str]],
) -> None:
    """Each attempt's request (built after the claim) and result, in one statement."""
    rows = [
        {
            "b_id": prepared.attempt_id,
            "b_request_headers": sent[prepared.attempt_id][0],
            "b_request_body": sent[prepared.attempt_id][1],
            "b_outcome": AttemptOutcome.SUCCESS if error is None else AttemptOutcome.FAILURE,
            "b_duration": result.duration_ms,
            "b_status": result.status_code,
            "b_headers": result.headers or None,
            "b_body": result.body if result.status_code is not None else None,
            "b_error": error,
        }
        for prepared, result, error in written
    ]
    batchsql.of(session).record_attempts(session, rows)


def _succeed(
    session: Session, succeeded: list[tuple[Prepared, transport.Result]], now: datetime
) -> None:
    rows = [
        {"b_id": p.delivery_id, "b_token": p.token, "b_code": r.status_code, "b_now": now}
        for p, r in succeeded
    ]
    batchsql.of(session).succeed(session, rows, now)


def _schedule_next(
    session: Session,
    delivery: Delivery,
    result: transport.Result,
    settings: Settings,
    now: datetime,
    *,
    retryable: bool,
) -> bool:
    """Schedule the next attempt or end the delivery; True when a 410 just disabled the webhook."""
    completed = delivery.attempt_count - delivery.lost_count
    schedule = settings.retry_schedule[: delivery.max_attempts]
    retry_after = None
    if result.status_code in retry.RETRY_AFTER_STATUSES:
        retry_after = retry.parse_retry_after(
            result.headers.get("Retry-After") or result.headers.get("retry-after"), now
        )
    delay = retry.next_delay(
        completed,
        schedule,
        status_code=result.status_code,
        retry_after=retry_after,
        retryable=retryable,
    )
    disabled = result.status_code == 410 and disable_gone(session, delivery.webhook_id, now)
    if delay is None:
        _end(delivery, DeliveryStatus.FAILED, now)
        return disabled
    delivery.next_attempt_at = now + timedelta(seconds=delay)
    delivery.lease_token = None
    delivery.lease_expires_at = None
    delivery.enqueued_at = None
    delivery.updated_at = now
    return disabled


def disable_gone(session: Session, webhook_id: str, now: datetime) -> bool:
    """A 410 Gone: the receiver says the endpoint is gone for good (Standard Webhooks).

    True when this disabled an active webhook (the workspace is then told)."""
    when = now.strftime("%Y-%m-%d %H:%M UTC")
    values = {
        "active": False,
        "disabled_reason": f"Disabled on {when}: the endpoint answered 410 Gone",
        "disabled_at": now,
        "updated_at": now,
    }
    disabled = changed(
        session,
        update(Webhook)
        .where(Webhook.id == webhook_id, Webhook.active.is_(True))
        .values(**values)
        .execution_options(synchronize_session=False),
    )
    if disabled == 1:
        return True
    # Already paused (a redelivery got the 410): the reason still says why it is off now.
    session.execute(
        update(Webhook)
        .where(Webhook.id == webhook_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return False


def timed_out(result: transport.Result) -> bool:
    """The target let the attempt run into the timeout."""
    return (result.error or "").startswith("timed out")
