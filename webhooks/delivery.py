"""The delivery state machine: claim, build, sign, send, record, and decide what comes next."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
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


def claim(session: Session, delivery_id: str, settings: Settings) -> Prepared | None:
    """Take the delivery with a leased conditional update, and write its in-flight attempt.

    Returns None when there is nothing to send: someone else holds it, it is not due, it has
    ended, or its webhook is paused (then it ends `failed` with the reason).
    """
    now = utcnow()
    token = secrets.token_hex(8)
    claimed = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.lease_token.is_(None),
            Delivery.next_attempt_at <= now + CLOCK_TOLERANCE,
        )
        .values(
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=settings.timeout + settings.lease_margin),
            enqueued_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        session.rollback()
        return None
    delivery = session.scalars(
        select(Delivery)
        .where(Delivery.id == delivery_id)
        .options(joinedload(Delivery.webhook).selectinload(Webhook.secrets))
        .options(joinedload(Delivery.event))
        .execution_options(populate_existing=True)
    ).one()
    webhook = delivery.webhook
    if not webhook.active and not delivery.ignores_pause:
        _end(delivery, DeliveryStatus.FAILED, now)
        delivery.last_error = (
            f"not sent: attempt {delivery.attempt_count + 1} fell due while the webhook was "
            f"inactive ({webhook.disabled_reason or 'paused'})"
        )
        session.commit()
        return None
    render_error = None
    try:
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
    session.flush()
    # Everything the POST needs is read before the commit: touching an expired attribute
    # afterwards would open a new transaction (on SQLite, the write lock) for the whole POST.
    prepared = Prepared(
        delivery_id=delivery.id,
        attempt_id=attempt.id,
        token=token,
        url=webhook.url,
        body=body,
        headers=headers,
        render_error=render_error,
        webhook_id=webhook.id,
    )
    session.commit()
    return prepared


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
    session: Session, prepared: Prepared, result: transport.Result, settings: Settings
) -> str:
    """Write the attempt's result and move the delivery on; returns its status."""
    now = utcnow()
    error = _failure_text(result) if prepared.render_error is None else prepared.render_error
    outcome = AttemptOutcome.SUCCESS if error is None else AttemptOutcome.FAILURE
    written = session.execute(
        update(Attempt)
        .where(Attempt.id == prepared.attempt_id, Attempt.outcome == AttemptOutcome.IN_FLIGHT)
        .values(
            outcome=outcome,
            duration_ms=result.duration_ms,
            response_status=result.status_code,
            response_headers=result.headers or None,
            response_body=result.body if result.status_code is not None else None,
            error=error,
        )
        .execution_options(synchronize_session=False)
    )
    delivery = session.scalars(
        select(Delivery)
        .where(Delivery.id == prepared.delivery_id)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if written.rowcount != 1 or delivery is None or delivery.lease_token != prepared.token:
        # The lease ran out and the attempt was declared lost; the delivery has moved on.
        status = delivery.status if delivery else DeliveryStatus.FAILED
        session.commit()
        log.warning("late result for %s ignored: its lease had expired", prepared.delivery_id)
        return status
    delivery.last_status_code = result.status_code
    delivery.last_error = error
    notify: list[str] = []
    if outcome == AttemptOutcome.SUCCESS:
        _end(delivery, DeliveryStatus.SUCCEEDED, now)
        failures.succeeded(session, delivery)
    else:
        disabled = _schedule_next(
            session, delivery, result, settings, now, retryable=prepared.render_error is None
        )
        if disabled:
            notify = failures.gone(session, delivery, now, settings)
        elif delivery.status == DeliveryStatus.FAILED:
            notify = failures.exhausted(session, delivery, now, settings)
    status = delivery.status
    session.commit()
    # Messages are only written above; they are sent by their own jobs, never from here.
    notifications.hand_off(notifications.job_redis(), settings, notify)
    return status


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


def deliver(
    session: Session,
    delivery_id: str,
    settings: Settings,
    on_timeout: Callable[[str], None] | None = None,
) -> str | None:
    """One attempt of one delivery, if it is ours to make; returns the resulting status.

    `on_timeout(webhook_id)` is told when the target let the attempt run into the timeout.
    """
    prepared = claim(session, delivery_id, settings)
    if prepared is None:
        return None
    if prepared.render_error is not None:
        result = transport.Result(error=prepared.render_error)
    else:
        result = transport.post(
            prepared.url,
            prepared.body,
            prepared.headers,
            timeout=settings.timeout,
            ca_bundle=settings.ca_bundle,
            proxy_url=settings.proxy_url,
            allowed_networks=settings.allowed_private_networks,
            allow_http=settings.allow_http,
        )
        if on_timeout is not None and (result.error or "").startswith("timed out"):
            on_timeout(prepared.webhook_id)
    return record(session, prepared, result, settings)
