"""The delivery state machine: claim, build, sign, send, record, and decide what comes next."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, joinedload

from webhooks import failures, notifications, retry, signing, transforms, transport
from webhooks.config import Settings
from webhooks.models import (
    Attempt,
    AttemptOutcome,
    Delivery,
    DeliveryStatus,
    Event,
    Webhook,
    utcnow,
)

log = logging.getLogger(__name__)

# A job may run a little before its row's due time when clocks differ between hosts.
CLOCK_TOLERANCE = timedelta(seconds=2)
MAX_LOST_ATTEMPTS = 3
# Names a custom header may never take: ours, and what the HTTP client owns.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Content-Type",
        "User-Agent",
        "X-CloudThinker-Signature",
        "X-CloudThinker-Event",
        "X-CloudThinker-Delivery",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
    )
)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, as the API and the envelope show times."""
    if moment is None:
        return None
    return moment.isoformat(timespec="microseconds") + "Z"


def envelope(event: Event) -> dict[str, Any]:
    """The standard payload; built from the stored event, so it never changes across retries."""
    return {
        "id": event.id,
        "type": event.type,
        "timestamp": event.occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "workspace_id": event.workspace_id,
        "data": event.data,
    }


class RenderError(Exception):
    """The body could not be built; retrying would fail the same way."""


def render_body(webhook: Webhook, event: Event) -> bytes:
    """The exact bytes to send and sign: the envelope, or the webhook's transform of it."""
    payload: Any = envelope(event)
    if webhook.transform is not None:
        try:
            payload = transforms.render(webhook.transform, payload)
        except transforms.TransformError as exc:
            raise RenderError(f"transform failed: {exc}") from None
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def valid_secrets(webhook: Webhook, now: datetime) -> list[str]:
    """The secrets that sign now, newest first."""
    return [s.secret for s in webhook.secrets if s.expires_at is None or s.expires_at > now]


def build_headers(
    delivery: Delivery, webhook: Webhook, body: bytes, now: datetime
) -> dict[str, str]:
    headers = {
        name: str(value)
        for name, value in (webhook.headers or {}).items()
        if name.lower() not in RESERVED_HEADERS
    }
    headers.update(
        {
            "Content-Type": "application/json",
            "User-Agent": transport.USER_AGENT,
            "X-CloudThinker-Event": delivery.event_type,
            "X-CloudThinker-Delivery": delivery.id,
        }
    )
    headers.update(
        signing.signature_headers(
            event_id=delivery.event_id,
            timestamp=int(_epoch(now)),
            body=body,
            secrets=valid_secrets(webhook, now),
        )
    )
    return headers


def _epoch(naive_utc: datetime) -> float:
    return (naive_utc - datetime(1970, 1, 1)).total_seconds()


@dataclass
class Prepared:
    """A claimed delivery with its attempt row written: everything needed to send."""

    delivery_id: str
    attempt_id: int
    token: str
    url: str
    body: bytes
    headers: dict[str, str]
    render_error: str | None = None
    webhook_id: str = ""


def claim(
    session: Session,
    delivery_ids: Sequence[str],
    settings: Settings,
    *,
    skip_webhooks: Collection[str] = (),
) -> list[Prepared]:
    """Take each delivery with a leased conditional update, and write its in-flight attempt.

    The claim is per delivery (one statement takes every row that is still pending, unleased
    and due); a delivery someone else holds, that is not due or has ended is left out, and one
    whose webhook is paused ends `failed` with the reason. Deliveries to `skip_webhooks` are
    left alone. Returns what is to be sent, in order.
    """
    if not delivery_ids:
        return []
    now = utcnow()
    token = secrets.token_hex(8)
    claimable = [
        Delivery.id.in_(delivery_ids),
        Delivery.status == DeliveryStatus.PENDING,
        Delivery.lease_token.is_(None),
        Delivery.next_attempt_at <= now + CLOCK_TOLERANCE,
    ]
    if skip_webhooks:
        claimable.append(Delivery.webhook_id.not_in(list(skip_webhooks)))
    claimed = session.execute(
        update(Delivery)
        .where(*claimable)
        .values(
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=settings.timeout + settings.lease_margin),
            enqueued_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount == 0:
        session.rollback()
        return []
    rows = session.scalars(
        select(Delivery)
        .where(Delivery.id.in_(delivery_ids), Delivery.lease_token == token)
        .options(joinedload(Delivery.webhook).selectinload(Webhook.secrets))
        .options(joinedload(Delivery.event))
        .execution_options(populate_existing=True)
    ).all()
    order = {delivery_id: i for i, delivery_id in enumerate(delivery_ids)}
    bodies: dict[str, bytes] = {}  # the envelope's bytes, per event, when nothing transforms it
    pending: list[tuple[Delivery, Attempt, bytes, dict[str, str], str | None]] = []
    for delivery in sorted(rows, key=lambda d: order[d.id]):
        webhook = delivery.webhook
        if not webhook.active and not delivery.ignores_pause:
            _end(delivery, DeliveryStatus.FAILED, now)
            delivery.last_error = (
                f"not sent: attempt {delivery.attempt_count + 1} fell due while the webhook "
                f"was inactive ({webhook.disabled_reason or 'paused'})"
            )
            continue
        render_error = None
        try:
            if webhook.transform is None:
                body = bodies.get(delivery.event_id) or bodies.setdefault(
                    delivery.event_id, render_body(webhook, delivery.event)
                )
            else:
                body = render_body(webhook, delivery.event)
        except RenderError as exc:
            body, render_error = b"", str(exc)
        headers = build_headers(delivery, webhook, body, now)
        delivery.attempt_count += 1
        attempt = Attempt(
            delivery_id=delivery.id,
            number=delivery.attempt_count,
            started_at=now,
            request_url=webhook.url,
            request_headers=_loggable(headers),
            request_body=body.decode("utf-8", errors="replace"),
        )
        session.add(attempt)
        pending.append((delivery, attempt, body, headers, render_error))
    session.flush()
    # Everything the POST needs is read before the commit: touching an expired attribute
    # afterwards would open a new transaction (on SQLite, the write lock) for the whole POST.
    prepared = [
        Prepared(
            delivery_id=delivery.id,
            attempt_id=attempt.id,
            token=token,
            url=delivery.webhook.url,
            body=body,
            headers=headers,
            render_error=render_error,
            webhook_id=delivery.webhook_id,
        )
        for delivery, attempt, body, headers, render_error in pending
    ]
    session.commit()
    return prepared


def unclaimed_of(
    session: Session, delivery_ids: Sequence[str], webhook_ids: Collection[str]
) -> list[tuple[str, int, str]]:
    """(delivery id, attempt count, webhook id) of the deliveries among `delivery_ids` to
    `webhook_ids` that are still waiting for a worker."""
    if not delivery_ids or not webhook_ids:
        return []
    rows = session.execute(
        select(Delivery.id, Delivery.attempt_count, Delivery.webhook_id).where(
            Delivery.id.in_(delivery_ids),
            Delivery.webhook_id.in_(list(webhook_ids)),
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.lease_token.is_(None),
        )
    ).all()
    session.rollback()
    return [(d, n, w) for d, n, w in rows]


def _loggable(headers: dict[str, str]) -> dict[str, str]:
    """Headers as the log shows them: credentials in custom headers are masked."""
    masked = {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"}
    return {k: ("••••••" if k.lower() in masked else v) for k, v in headers.items()}


def _end(delivery: Delivery, status: str, now: datetime) -> None:
    delivery.status = status
    delivery.next_attempt_at = None
    delivery.lease_token = None
    delivery.lease_expires_at = None
    delivery.enqueued_at = None
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
    deliveries = {
        d.id: d
        for d in session.scalars(
            select(Delivery)
            .where(Delivery.id.in_([p.delivery_id for p, _ in results]))
            .execution_options(populate_existing=True)
        )
    }
    statuses: dict[str, str] = {}
    written: list[tuple[Prepared, transport.Result, str | None]] = []
    for prepared, result in results:
        delivery = deliveries.get(prepared.delivery_id)
        if delivery is None or delivery.lease_token != prepared.token:
            # The lease ran out and the attempt was declared lost; the delivery has moved on.
            statuses[prepared.delivery_id] = delivery.status if delivery else DeliveryStatus.FAILED
            log.warning("late result for %s ignored: its lease had expired", prepared.delivery_id)
            continue
        error = _failure_text(result) if prepared.render_error is None else prepared.render_error
        written.append((prepared, result, error))
    if written:
        table = Attempt.__table__
        session.execute(
            update(table)
            .where(table.c.id == bindparam("attempt"), table.c.outcome == AttemptOutcome.IN_FLIGHT)
            .values(
                outcome=bindparam("result"),
                duration_ms=bindparam("duration"),
                response_status=bindparam("status"),
                response_headers=bindparam("headers"),
                response_body=bindparam("body"),
                error=bindparam("failure"),
            ),
            [
                {
                    "attempt": prepared.attempt_id,
                    "result": AttemptOutcome.SUCCESS if error is None else AttemptOutcome.FAILURE,
                    "duration": result.duration_ms,
                    "status": result.status_code,
                    "headers": result.headers or None,
                    "body": result.body if result.status_code is not None else None,
                    "failure": error,
                }
                for prepared, result, error in written
            ],
        )
    notify: list[str] = []
    succeeded: list[Delivery] = []
    for prepared, result, error in written:
        delivery = deliveries[prepared.delivery_id]
        delivery.last_status_code = result.status_code
        delivery.last_error = error
        if error is None:
            _end(delivery, DeliveryStatus.SUCCEEDED, now)
            succeeded.append(delivery)
        else:
            disabled = _schedule_next(
                session, delivery, result, settings, now, retryable=prepared.render_error is None
            )
            if disabled:
                notify += failures.gone(session, delivery, now, settings)
            elif delivery.status == DeliveryStatus.FAILED:
                notify += failures.exhausted(session, delivery, now, settings)
        statuses[prepared.delivery_id] = delivery.status
    failures.succeeded(session, succeeded)
    session.commit()
    # Messages are only written above; they are sent by their own jobs, never from here.
    if notify:
        notifications.hand_off(redis or notifications.job_redis(), settings, notify)
    return statuses


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
    disabled = session.execute(
        update(Webhook)
        .where(Webhook.id == webhook_id, Webhook.active.is_(True))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if disabled.rowcount == 1:
        return True
    # Already paused (a redelivery got the 410): the reason still says why it is off now.
    session.execute(
        update(Webhook)
        .where(Webhook.id == webhook_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return False


def send(prepared: Prepared, settings: Settings) -> transport.Result:
    """The POST of one claimed delivery (or the render error that stopped it)."""
    if prepared.render_error is not None:
        return transport.Result(error=prepared.render_error)
    return transport.post(
        prepared.url,
        prepared.body,
        prepared.headers,
        timeout=settings.timeout,
        ca_bundle=settings.ca_bundle,
        proxy_url=settings.proxy_url,
        allowed_networks=settings.allowed_private_networks,
        allow_http=settings.allow_http,
    )


def timed_out(result: transport.Result) -> bool:
    """The target let the attempt run into the timeout."""
    return (result.error or "").startswith("timed out")


def deliver(session: Session, delivery_id: str, settings: Settings) -> str | None:
    """One attempt of one delivery, if it is ours to make; returns the resulting status."""
    prepared = claim(session, [delivery_id], settings)
    if not prepared:
        return None
    return record(session, [(prepared[0], send(prepared[0], settings))], settings)[delivery_id]
