"""The delivery log: filtered, newest first, paged by keyset; and per-webhook summaries."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select, tuple_
from sqlalchemy.orm import Session

from webhooks.models import Delivery, DeliveryStatus


class BadFilter(ValueError):
    """A filter value that cannot be used; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_time(field: str, value: str) -> datetime:
    """An ISO 8601 time as the naive UTC datetime the columns store (no zone means UTC)."""
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise BadFilter(field, f"{field} must be an ISO 8601 time, got {value!r}") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


@dataclass
class LogFilter:
    """What the log is narrowed to; every field optional."""

    webhook_id: str | None = None
    status: str | None = None
    event_type: str | None = None
    since: datetime | None = None  # inclusive, on created_at
    until: datetime | None = None  # exclusive

    @classmethod
    def from_args(cls, args: Any) -> LogFilter:
        status = args.get("status") or None
        if status is not None and status not in DeliveryStatus.ALL:
            allowed = ", ".join(DeliveryStatus.ALL)
            raise BadFilter("status", f"status must be one of {allowed}, got {status!r}")
        return cls(
            webhook_id=args.get("webhook_id") or None,
            status=status,
            event_type=args.get("event_type") or None,
            since=parse_time("since", args["since"]) if args.get("since") else None,
            until=parse_time("until", args["until"]) if args.get("until") else None,
        )

    def clauses(self, workspace_id: str) -> list[Any]:
        clauses: list[Any] = [Delivery.workspace_id == workspace_id]
        if self.webhook_id:
            clauses.append(Delivery.webhook_id == self.webhook_id)
        if self.status:
            clauses.append(Delivery.status == self.status)
        if self.event_type:
            clauses.append(Delivery.event_type == self.event_type)
        if self.since:
            clauses.append(Delivery.created_at >= self.since)
        if self.until:
            clauses.append(Delivery.created_at < self.until)
        return clauses


def encode_cursor(delivery: Delivery) -> str:
    raw = json.dumps([delivery.created_at.isoformat(), delivery.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, delivery_id = json.loads(raw)
        return datetime.fromisoformat(created), str(delivery_id)
    except (ValueError, TypeError, binascii.Error):
        raise BadFilter("cursor", "cursor is not one this service gave out") from None


def page(
    session: Session,
    workspace_id: str,
    filters: LogFilter,
    *,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[Delivery], str | None]:
    """One page of deliveries, newest first, and the cursor of the next page (or None)."""
    clauses = filters.clauses(workspace_id)
    if cursor:
        created, last_id = decode_cursor(cursor)
        # A row-value comparison is one range on the (…, created_at, id) indexes; the
        # equivalent OR of two conditions is not, and filters half the table on deep pages.
        clauses.append(tuple_(Delivery.created_at, Delivery.id) < tuple_(created, last_id))
    rows = session.scalars(
        select(Delivery)
        .where(*clauses)
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())
        .limit(limit + 1)
    ).all()
    return list(rows[:limit]), encode_cursor(rows[limit - 1]) if len(rows) > limit else None


@dataclass
class Summary:
    """A webhook at a glance: its last delivery and how the last 24 hours went."""

    last: Delivery | None = None
    succeeded: int = 0
    failed: int = 0

    @property
    def success_rate(self) -> float | None:
        ended = self.succeeded + self.failed
        return None if ended == 0 else self.succeeded / ended


def summaries(session: Session, workspace_id: str, now: datetime) -> dict[str, Summary]:
    """Per webhook id: its newest delivery and its ended deliveries' outcomes over 24 hours."""
    result: dict[str, Summary] = {}
    counts = session.execute(
        select(Delivery.webhook_id, Delivery.status, func.count())
        .where(
            Delivery.workspace_id == workspace_id,
            Delivery.created_at >= now - timedelta(hours=24),
            Delivery.status != DeliveryStatus.PENDING,
        )
        .group_by(Delivery.webhook_id, Delivery.status)
    ).all()
    for webhook_id, status, count in counts:
        summary = result.setdefault(webhook_id, Summary())
        if status == DeliveryStatus.SUCCEEDED:
            summary.succeeded = count
        else:
            summary.failed = count
    newest = (
        select(Delivery.webhook_id, func.max(Delivery.created_at).label("created_at"))
        .where(Delivery.workspace_id == workspace_id)
        .group_by(Delivery.webhook_id)
        .subquery()
    )
    latest = session.scalars(
        select(Delivery).join(
            newest,
            and_(
                Delivery.webhook_id == newest.c.webhook_id,
                Delivery.created_at == newest.c.created_at,
            ),
        )
    ).all()
    for delivery in latest:
        result.setdefault(delivery.webhook_id, Summary()).last = delivery
    return result
