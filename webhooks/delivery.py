"""The delivery state machine: claim, build, sign, send, record, and decide what comes next."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.orm import Session

from webhooks import (
    credentials,
    failures,
    listeners,
    notifications,
    renderpool,
    retry,
    signing,
    templates,
    transforms,
    transport,
)
from webhooks.config import Settings
from webhooks.models import (
    Attempt,
    AttemptOutcome,
    Delivery,
    DeliveryStatus,
    Event,
    Webhook,
    WebhookSecret,
    utcnow,
)

log = logging.getLogger(__name__)

# What ending a delivery clears (`_end` on an object, `**_ENDED` in a Core update).
_ENDED = {
    "next_attempt_at": None,
    "lease_token": None,
    "lease_expires_at": None,
    "enqueued_at": None,
}

# The tables as Core sees them: the hot path's statements skip the ORM's per-statement work.
_DELIVERIES = Delivery.__table__
_ATTEMPTS = Attempt.__table__
_D = _DELIVERIES.c
_E = Event.__table__.c
_W = Webhook.__table__.c
_S = WebhookSecret.__table__.c

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


def render_body(webhook: _Target, event: Event) -> bytes:
    """The exact bytes to send and sign: the envelope, or the webhook's transform of it (its
    own, or its template's, derived when it was read: see `_targets`)."""
    if webhook.template_error is not None:
        raise RenderError(webhook.template_error)
    payload: Any = envelope(event)
    if webhook.transform is not None:
        try:
            payload = renderpool.render(webhook.transform, payload)
        except transforms.TransformError as exc:
            raise RenderError(f"transform failed: {exc}") from None
        if webhook.body_fields and isinstance(payload, dict):
            payload = {**payload, **webhook.body_fields}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def valid_secrets(webhook: Webhook, now: datetime) -> list[str]:
    """The secrets that sign now, newest first."""
    return [s.secret for s in webhook.secrets if s.expires_at is None or s.expires_at > now]


def build_headers(
    delivery: Delivery, webhook: _Target, body: bytes, now: datetime
) -> dict[str, str]:
    """The request's headers: the webhook's (credentials in clear, for the receiver), then ours."""
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
class RenderLater:
    """What a transformed body is rendered from, once the claim has committed."""

    webhook: Any  # _Target
    event: Any  # the event's row
    delivery: Any  # the claimed row (id, event id, event type)


@dataclass
class Prepared:
    """A claimed delivery with its attempt row written: everything needed to send.

    With `later`, the body and headers are built by `render` (outside any transaction) and the
    attempt's request is written with its result."""

    delivery_id: str
    attempt_id: int
    token: str
    url: str
    body: bytes
    headers: dict[str, str]
    render_error: str | None = None
    webhook_id: str = ""
    later: RenderLater | None = None


def _transforms(webhook: Any) -> bool:
    """Whether the webhook's body is rendered from a transform (in a render process)."""
    return webhook.transform is not None


def claim(
    session: Session,
    delivery_ids: Sequence[str],
    settings: Settings,
    *,
    skip_webhooks: Collection[str] = (),
    room: Callable[[str], int] | None = None,
    passed_over: list[tuple[str, int, str]] | None = None,
) -> list[Prepared]:
    """Take each delivery with a leased conditional update, and write its in-flight attempt.

    The claim is per delivery (one statement takes every row that is still pending, unleased
    and due); a delivery someone else holds, that is not due or has ended is left out, and one
    whose webhook is paused ends `failed` with the reason. Deliveries to `skip_webhooks`, and
    those beyond `room(webhook_id)` per webhook, are left alone and added to `passed_over` as
    (id, attempt count, webhook id). Returns what is to be sent, in order.
    """
    if not delivery_ids:
        return []
    now = utcnow()
    token = secrets.token_hex(8)
    claimable = [
        _D.id.in_(delivery_ids),
        _D.status == DeliveryStatus.PENDING,
        _D.lease_token.is_(None),
        _D.next_attempt_at <= now + CLOCK_TOLERANCE,
    ]
    _no_wait_for_disk(session)
    if skip_webhooks:
        wanted = _within_room(session, claimable, delivery_ids, skip_webhooks, room, passed_over)
        if not wanted:
            session.rollback()
            return []
        claimable[0] = _D.id.in_(wanted)
    # Core statements, not ORM objects: this runs for every delivery, and loading and flushing
    # objects cost more than the POST itself.
    taken = session.execute(
        update(_DELIVERIES)
        .where(*claimable)
        .values(
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=settings.timeout + settings.lease_margin),
            enqueued_at=None,
            updated_at=now,
            attempt_count=_D.attempt_count + 1,
        )
        .returning(
            _D.id,
            _D.event_id,
            _D.webhook_id,
            _D.event_type,
            _D.attempt_count,
            _D.ignores_pause,
        )
    ).all()
    order = {delivery_id: i for i, delivery_id in enumerate(delivery_ids)}
    taken.sort(key=lambda r: order[r.id])
    if room is not None and not skip_webhooks:
        # The common case checks each webhook's room after the claim (one statement less);
        # what is over it is handed back in the same transaction.
        taken, over = _split_by_room(taken, room)
        if over:
            if passed_over is not None:
                passed_over += [(r.id, r.attempt_count - 1, r.webhook_id) for r in over]
            if taken:
                _hand_back(session, [r.id for r in over], token, now)
    if not taken:
        session.rollback()
        return []
    webhooks = _targets(session, {row.webhook_id for row in taken})
    events = {
        e.id: e
        for e in session.execute(
            select(_E.id, _E.type, _E.occurred_at, _E.workspace_id, _E.data).where(
                _E.id.in_({row.event_id for row in taken})
            )
        )
    }
    bodies: dict[str, bytes] = {}  # the envelope's bytes, per event, when nothing transforms it
    inactive: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    ready: list[tuple[Any, _Target, bytes, dict[str, str], RenderLater | None]] = []
    for row in taken:
        webhook = webhooks[row.webhook_id]
        if not webhook.active and not row.ignores_pause:
            inactive.append(
                {
                    "b_id": row.id,
                    "b_error": f"not sent: attempt {row.attempt_count} fell due while the "
                    f"webhook was inactive ({webhook.disabled_reason or 'paused'})",
                }
            )
            continue
        later = None
        if _transforms(webhook):
            # Never rendered while this transaction holds the claim (and SQLite's write lock):
            # `render` builds it once the claim has committed.
            later = RenderLater(webhook=webhook, event=events[row.event_id], delivery=row)
            body, headers = b"", {}
        else:
            body = bodies.get(row.event_id) or bodies.setdefault(
                row.event_id, render_body(webhook, events[row.event_id])
            )
            headers = build_headers(row, webhook, body, now)
        attempts.append(
            {
                "delivery_id": row.id,
                "number": row.attempt_count,
                "outcome": AttemptOutcome.IN_FLIGHT,
                "started_at": now,
                "request_url": webhook.url,
                "request_headers": _loggable(headers),
                "request_body": body.decode("utf-8", errors="replace"),
            }
        )
        ready.append((row, webhook, body, headers, later))
    if inactive:
        _fail_inactive(session, inactive, now)
    attempt_ids: list[int] = []
    if attempts:
        attempt_ids = list(
            session.scalars(
                insert(_ATTEMPTS).returning(_ATTEMPTS.c.id, sort_by_parameter_order=True), attempts
            )
        )
    session.commit()
    return [
        Prepared(
            delivery_id=row.id,
            attempt_id=attempt_id,
            token=token,
            url=webhook.url,
            body=body,
            headers=headers,
            webhook_id=row.webhook_id,
            later=later,
        )
        for (row, webhook, body, headers, later), attempt_id in zip(ready, attempt_ids, strict=True)
    ]


def render(prepared: Prepared) -> None:
    """Build a claimed delivery's transformed body (in a render process) and sign it.

    Runs after the claim has committed, on the thread that then POSTs it; a render that fails
    or hits a bound leaves `render_error`, and the attempt fails with it."""
    later = prepared.later
    if later is None or prepared.headers:
        return
    try:
        prepared.body = render_body(later.webhook, later.event)
    except RenderError as exc:
        prepared.body, prepared.render_error = b"", str(exc)
    prepared.headers = build_headers(later.delivery, later.webhook, prepared.body, utcnow())


def overran(prepared: Prepared) -> bool:
    """The attempt's render hit the time or CPU bound: the webhook holds threads for long."""
    error = prepared.render_error or ""
    return "s of CPU" in error or "rendering took longer" in error


def _no_wait_for_disk(session: Session) -> None:
    """On PostgreSQL, this transaction's commit returns before its WAL reaches the disk.

    A claim or a result lost in a database crash only means the attempt is made again, which
    at-least-once delivery allows; an event accepted by the API is never committed this way.
    Here disk flushes took up to 0.7 s under load, on the path of every delivery.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))


@dataclass
class _Target:
    """What sending needs of a webhook, read in one query per batch.

    `transform` and `headers` are what is sent: a template's are derived from its settings
    when the webhook is read (templates are live), credentials decrypted."""

    id: str
    url: str
    active: bool
    disabled_reason: str | None
    headers: dict[str, Any] | None
    transform: dict[str, Any] | None
    secrets: list[Any]
    body_fields: dict[str, Any] = field(default_factory=dict)
    template_error: str | None = None


def _target(row: Any) -> _Target:
    """A webhook row as sending needs it, its template (if any) applied now."""
    out = templates.outgoing(row.template, row.template_params, row.transform, row.headers)
    return _Target(
        id=row.id,
        url=row.url,
        active=row.active,
        disabled_reason=row.disabled_reason,
        headers=out.headers,
        transform=out.transform,
        secrets=[],
        body_fields=out.body_fields,
        template_error=out.error,
    )


def _targets(session: Session, webhook_ids: set[str]) -> dict[str, _Target]:
    """The webhooks with their secrets (newest first), in one query."""
    targets: dict[str, _Target] = {}
    for row in session.execute(
        select(
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
        .where(_W.id.in_(webhook_ids))
        .order_by(_S.id.desc())
    ):
        target = targets.get(row.id)
        if target is None:
            target = targets[row.id] = _target(row)
        if row.secret is not None:
            target.secrets.append(row)
    return targets


def _split_by_room(taken: list[Any], room: Callable[[str], int]) -> tuple[list[Any], list[Any]]:
    """The claimed rows within each webhook's room, and those over it."""
    left: dict[str, int] = {}
    within, over = [], []
    for row in taken:
        left.setdefault(row.webhook_id, room(row.webhook_id))
        if left[row.webhook_id] > 0:
            left[row.webhook_id] -= 1
            within.append(row)
        else:
            over.append(row)
    return within, over


def _hand_back(session: Session, delivery_ids: list[str], token: str, now: datetime) -> None:
    """Undo the claim of deliveries that are passed on to another lane."""
    session.execute(
        update(_DELIVERIES)
        .where(_D.id.in_(delivery_ids), _D.lease_token == token)
        .values(
            lease_token=None,
            lease_expires_at=None,
            attempt_count=_D.attempt_count - 1,
            enqueued_at=now,
        )
    )


def _fail_inactive(session: Session, rows: list[dict[str, Any]], now: datetime) -> None:
    """Deliveries that fell due while their webhook was paused end `failed`, unattempted."""
    table = _DELIVERIES
    session.execute(
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .values(
            **_ENDED,
            status=DeliveryStatus.FAILED,
            attempt_count=table.c.attempt_count - 1,
            updated_at=now,
            last_error=bindparam("b_error"),
        ),
        rows,
    )


def _within_room(
    session: Session,
    claimable: list[Any],
    delivery_ids: Sequence[str],
    skip_webhooks: Collection[str],
    room: Callable[[str], int] | None,
    passed_over: list[tuple[str, int, str]] | None,
) -> list[str]:
    """The claimable deliveries among `delivery_ids` to take: not to a skipped webhook, and
    within each webhook's room; the others go to `passed_over`."""
    order = {delivery_id: i for i, delivery_id in enumerate(delivery_ids)}
    rows = sorted(
        session.execute(select(_D.id, _D.attempt_count, _D.webhook_id).where(*claimable)).all(),
        key=lambda row: order[row.id],
    )
    wanted = [row for row in rows if row.webhook_id not in skip_webhooks]
    over = [row for row in rows if row.webhook_id in skip_webhooks]
    if room is not None:
        wanted, too_many = _split_by_room(wanted, room)
        over += too_many
    if passed_over is not None:
        passed_over += [(row.id, row.attempt_count, row.webhook_id) for row in over]
    return [row.id for row in wanted]


def _loggable(headers: dict[str, str]) -> dict[str, str]:
    """Headers as the log shows them: credentials are masked (`webhooks.credentials`)."""
    return credentials.mask_headers(headers)


def _end(delivery: Delivery, status: str, now: datetime) -> None:
    delivery.status = status
    for name, value in _ENDED.items():
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
    _no_wait_for_disk(session)
    current = {
        row.id: row
        for row in session.execute(
            select(
                _D.id,
                _D.lease_token,
                _D.status,
                _D.kind,
                _D.webhook_id,
            ).where(_D.id.in_([p.delivery_id for p, _ in results]))
        )
    }
    statuses: dict[str, str] = {}
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
    if not written:
        session.commit()
        return statuses
    _write_attempts(session, written)
    _write_requests(session, [p for p, _, _ in written if p.later is not None])
    succeeded = [(p, r) for p, r, error in written if error is None]
    if succeeded:
        _succeed(session, succeeded, now)
        failures.succeeded(session, [current[p.delivery_id] for p, _ in succeeded])
        statuses.update({p.delivery_id: DeliveryStatus.SUCCEEDED for p, _ in succeeded})
    notify: list[str] = []
    failed = [(p, r, error) for p, r, error in written if error is not None]
    if failed:
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
    session.commit()
    # Messages are only written above; they are sent by their own jobs, never from here.
    if notify:
        notifications.hand_off(redis or notifications.job_redis(), settings, notify)
    return statuses


def _write_attempts(
    session: Session, written: list[tuple[Prepared, transport.Result, str | None]]
) -> None:
    table = _ATTEMPTS
    session.execute(
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c.outcome == AttemptOutcome.IN_FLIGHT)
        .values(
            outcome=bindparam("b_outcome"),
            duration_ms=bindparam("b_duration"),
            response_status=bindparam("b_status"),
            response_headers=bindparam("b_headers"),
            response_body=bindparam("b_body"),
            error=bindparam("b_error"),
        ),
        [
            {
                "b_id": prepared.attempt_id,
                "b_outcome": AttemptOutcome.SUCCESS if error is None else AttemptOutcome.FAILURE,
                "b_duration": result.duration_ms,
                "b_status": result.status_code,
                "b_headers": result.headers or None,
                "b_body": result.body if result.status_code is not None else None,
                "b_error": error,
            }
            for prepared, result, error in written
        ],
    )


def _write_requests(session: Session, rendered: list[Prepared]) -> None:
    """The request of attempts whose body was rendered after the claim, logged with the result."""
    if not rendered:
        return
    table = _ATTEMPTS
    session.execute(
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .values(request_headers=bindparam("b_headers"), request_body=bindparam("b_body")),
        [
            {
                "b_id": p.attempt_id,
                "b_headers": _loggable(p.headers),
                "b_body": p.body.decode("utf-8", errors="replace"),
            }
            for p in rendered
        ],
    )


def _succeed(
    session: Session, succeeded: list[tuple[Prepared, transport.Result]], now: datetime
) -> None:
    table = _DELIVERIES
    session.execute(
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c.lease_token == bindparam("b_token"))
        .values(
            **_ENDED,
            status=DeliveryStatus.SUCCEEDED,
            updated_at=now,
            last_status_code=bindparam("b_code"),
            last_error=None,
        ),
        [
            {"b_id": p.delivery_id, "b_token": p.token, "b_code": r.status_code}
            for p, r in succeeded
        ],
    )


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
    render(prepared)
    if prepared.render_error is not None:
        return transport.Result(error=prepared.render_error)
    listener_id = listeners.listener_id_of(prepared.url)
    if listener_id is not None:  # a `listen` stream, not a URL: the command reports the result
        return listeners.relay(
            listener_id,
            prepared.delivery_id,
            prepared.attempt_id,
            prepared.headers,
            prepared.body,
            settings,
        )
    return transport.post(
        prepared.url,
        prepared.body,
        prepared.headers,
        timeout=settings.timeout,
        ca_bundle=settings.ca_bundle,
        proxy_url=settings.proxy_url,
        allowed_networks=settings.allowed_private_networks,
        allow_http=settings.allow_http,
        allowed_ports=settings.allowed_ports,
    )


def timed_out(result: transport.Result) -> bool:
    """The target let the attempt run into the timeout."""
    return (result.error or "").startswith("timed out")
