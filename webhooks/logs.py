"""The delivery log: filtered, newest first, paged by keyset; and per-webhook summaries."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, exists, func, literal_column, or_, select, text, tuple_
from sqlalchemy.orm import aliased

from webhooks import sqlite
from webhooks.models import (
    DELIVERIES,
    TITLE_SEARCH,
    Attempt,
    AttemptOutcome,
    Delivery,
    DeliveryStatus,
    Event,
    Session,
    Webhook,
)

RETRYING = "retrying"  # a filter, not a status: pending with at least one failed attempt
STATUSES = (*DeliveryStatus.ALL, RETRYING)
MAX_WORDS = 8


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
    q: str | None = None  # an event or delivery id, or words of the event's title

    @classmethod
    def from_args(cls, args: Any) -> LogFilter:
        status = args.get("status") or None
        if status is not None and status not in STATUSES:
            allowed = ", ".join(STATUSES)
            raise BadFilter("status", f"status must be one of {allowed}, got {status!r}")
        q = (args.get("q") or "").strip() or None
        if q is not None and len(q) > 200:
            raise BadFilter("q", f"search for at most 200 characters, got {len(q)}")
        return cls(
            webhook_id=args.get("webhook_id") or None,
            status=status,
            event_type=args.get("event_type") or None,
            since=parse_time("since", args["since"]) if args.get("since") else None,
            until=parse_time("until", args["until"]) if args.get("until") else None,
            q=q,
        )

    def to_args(self) -> dict[str, str]:
        """The filter as `from_args` reads it back (times in ISO 8601 UTC), empty fields left
        out."""
        args = {
            "webhook_id": self.webhook_id,
            "status": self.status,
            "event_type": self.event_type,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "q": self.q,
        }
        return {key: value for key, value in args.items() if value}

    def clauses(self, workspace_id: str, *, sqlite: bool, by_key: bool = False) -> list[Any]:
        """The filter as SQL; `by_key`: the rows come by primary key, and no other index may
        be read instead (the columns are written `+column`, which SQLite never indexes).

        On SQLite a webhook's log is read from its index (ix_deliveries_webhook_log), status,
        event type and workspace checked in each entry: at most that webhook's rows, none
        looked up in the table. SQLite keeps no statistics, and given that index it read the
        status index instead, looking up every failed delivery of the workspace to find one
        webhook's."""
        c = _Unindexed() if by_key else Delivery
        by_webhook = sqlite and bool(self.webhook_id)
        kept = _Unindexed() if by_key or by_webhook else Delivery
        clauses: list[Any] = [kept.workspace_id == workspace_id]
        if self.webhook_id:
            clauses.append(c.webhook_id == self.webhook_id)
        if self.status == RETRYING:
            failed_before = or_(c.last_status_code.is_not(None), c.last_error.is_not(None))
            clauses += [kept.status == DeliveryStatus.PENDING, failed_before]
        elif self.status:
            clauses.append(kept.status == self.status)
        if self.event_type:
            clauses.append(kept.event_type == self.event_type)
        if self.since:
            clauses.append(c.created_at >= self.since)
        if self.until:
            clauses.append(c.created_at < self.until)
        return clauses


class _Unindexed:
    """`Delivery.<column>` as `+deliveries.<column>` (`sqlite.unindexed`)."""

    def __getattr__(self, name: str) -> Any:
        return sqlite.unindexed(DELIVERIES.c[name])


def words(q: str) -> list[str]:
    """The words a title search looks for, lower case, at most MAX_WORDS."""
    return re.findall(r"\w+", q.lower())[:MAX_WORDS]


# On SQLite, a search that matches few deliveries reads them by primary key and sorts them;
# one that matches many scans the log newest first and stops at a page. SQLite keeps no
# statistics to choose between the two: a word found in three events scanned a million rows
# (150 ms) where the key look-up takes 2 ms.
FEW_EVENTS = 500
FEW_DELIVERIES = 5_000


@dataclass
class _Search:
    clause: Any
    few: bool = False  # few rows, found by key: sort them rather than scan in order


def _by_event(session: Session, event_ids: Any, scan: Any) -> _Search:
    """Deliveries of these events, by key when they are few; else the `scan` clause."""
    ids = session.scalars(
        select(Delivery.id).where(Delivery.event_id.in_(event_ids)).limit(FEW_DELIVERIES + 1)
    ).all()
    if len(ids) > FEW_DELIVERIES:
        return _Search(scan)
    return _Search(Delivery.id.in_(ids), few=True)


def _search(session: Session, q: str, workspace_id: str) -> _Search:
    """An id matches exactly; other text matches the events whose title has every word of it."""
    on_sqlite = sqlite.used_by(session)
    if re.fullmatch(r"dlv_\w+", q):
        return _Search(Delivery.id == q)
    if re.fullmatch(r"evt_\w+", q):
        scan = Delivery.event_id == q
        return _by_event(session, [q], scan) if on_sqlite else _Search(scan)
    found = words(q)
    if not found:
        return _Search(Delivery.id.is_(None))  # nothing to look for: nothing matches
    in_workspace = Event.workspace_id == workspace_id
    if not on_sqlite:
        # The GIN index on this very expression (models.TITLE_SEARCH) answers it.
        matches = text(f"{TITLE_SEARCH} @@ plainto_tsquery('simple', :words)")
        matching = select(Event.id).where(in_workspace, matches).params(words=" ".join(found))
        return _Search(Delivery.event_id.in_(matching))
    # SQLite's FTS5 table of titles, kept by triggers (models.SQLITE_TITLE_SEARCH).
    phrase = " ".join('"' + word.replace('"', '""') + '"' for word in found)
    rowids = text("SELECT rowid FROM events_title WHERE events_title MATCH :words LIMIT :n")
    by_title = literal_column("events.rowid").in_(rowids.bindparams(words=phrase, n=-1))
    # Checked per row of the newest-first scan: a common word fills a page within a few
    # hundred rows (2 ms), where building the set of its events first took 40 ms.
    scan = exists().where(Event.id == Delivery.event_id, by_title)
    few = session.execute(rowids, {"words": phrase, "n": FEW_EVENTS + 1}).scalars().all()
    if len(few) > FEW_EVENTS:
        return _Search(scan)
    if not few:
        return _Search(Delivery.id.is_(None))
    # By rowid alone: the deliveries' own workspace clause keeps other workspaces out.
    event_ids = session.scalars(
        select(Event.id).where(literal_column("events.rowid").in_(few))
    ).all()
    return _by_event(session, event_ids, scan)


def matching(session: Session, workspace_id: str, filters: LogFilter) -> list[Any]:
    """Every clause of the filter, its search included, on the deliveries' own columns: what
    an action over all the rows the log shows (not one page of them) selects."""
    clauses = filters.clauses(workspace_id, sqlite=sqlite.used_by(session))
    if filters.q:
        clauses.append(_search(session, filters.q, workspace_id).clause)
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
    after = decode_cursor(cursor) if cursor else None
    if after is not None and filters.until is not None and after[0] < filters.until:
        # The cursor keeps created_at below To already. With To as a second upper bound (and
        # From), SQLite read every delivery between From and the cursor by time, where the
        # status or webhook index reads only those that may match (a deep page of a day's
        # window at a million rows: 27 ms of CPU, then 3).
        filters = replace(filters, until=None)
    search = _search(session, filters.q, workspace_id) if filters.q else None
    by_key = search is not None and search.few
    clauses = filters.clauses(workspace_id, sqlite=sqlite.used_by(session), by_key=by_key)
    if search is not None:
        clauses.append(search.clause)
    created_at = _Unindexed().created_at if by_key else Delivery.created_at
    if after is not None:
        # A row-value comparison is one range on the (…, created_at, id) indexes; the
        # equivalent OR of two conditions is not, and filters half the table on deep pages.
        clauses.append(tuple_(created_at, Delivery.id) < tuple_(*after))
    rows = session.scalars(
        select(Delivery)
        .where(*clauses)
        .order_by(created_at.desc(), Delivery.id.desc())
        .limit(limit + 1)
    ).all()
    return list(rows[:limit]), encode_cursor(rows[limit - 1]) if len(rows) > limit else None


def titles(session: Session, event_ids: Any) -> dict[str, str]:
    """The events' titles (only those that have a text one), read without loading their data."""
    ids = set(event_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(Event.id, Event.data["title"].as_string()).where(Event.id.in_(ids))
    ).all()
    return {event_id: title for event_id, title in rows if isinstance(title, str) and title}


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


@dataclass
class LastError:
    """Why a webhook is not healthy: the error of its newest failing delivery, and when."""

    error: str
    at: datetime
    retrying: bool  # the delivery is still pending, with another attempt to come

    @property
    def short(self) -> str:
        """The error as the webhook list shows it: 'HTTP 500 from the receiver', 'connection
        refused', 'timed out after 10 s (connect and response)'; at most SHORT characters."""
        text = " ".join(self.error.split())
        if re.fullmatch(r"HTTP \d{3}", text):
            text += " from the receiver"
        return text if len(text) <= SHORT else text[: SHORT - 1].rstrip() + "…"


SHORT = 90


def _newest_delivery(*clauses: Any) -> Any:
    """The id of a webhook's newest delivery (matching `clauses`), correlated to Webhook."""
    return (
        select(Delivery.id)
        .where(Delivery.webhook_id == Webhook.id, *clauses)
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())
        .limit(1)
        .correlate(Webhook)
        .scalar_subquery()
    )


def _failed_at(delivery: Any) -> Any:
    """When a delivery last failed: its newest failed (or lost) attempt's start."""
    attempt = (
        select(func.max(Attempt.started_at))
        .where(
            Attempt.delivery_id == delivery.id,
            Attempt.outcome.in_((AttemptOutcome.FAILURE, AttemptOutcome.LOST)),
        )
        .scalar_subquery()
    )
    return func.coalesce(attempt, delivery.updated_at)


def last_errors(session: Session, workspace_id: str) -> dict[str, LastError]:
    """Per webhook id, the last error of each webhook whose recent deliveries fail: its newest
    delivery failed or is retrying, or it is in a failing streak (`failing_since`). Healthy
    webhooks are absent.

    One statement for the whole list, however many webhooks: per webhook, its newest delivery
    and (in a streak) its newest failed one are each one probe of the (webhook_id, created_at,
    id) index, and the time of the failure is that delivery's newest failed attempt's start.
    """

    newest = _newest_delivery
    heads = (
        select(
            Webhook.id.label("webhook_id"),
            newest().label("latest_id"),
            case(
                (
                    Webhook.failing_since.is_not(None),
                    newest(Delivery.status == DeliveryStatus.FAILED),
                ),
                else_=None,
            ).label("failed_id"),
        )
        .where(Webhook.workspace_id == workspace_id)
        .subquery()
    )
    latest, failed = aliased(Delivery), aliased(Delivery)
    failed_at = _failed_at
    rows = session.execute(
        select(
            heads.c.webhook_id,
            latest.status,
            latest.last_status_code,
            latest.last_error,
            failed_at(latest),
            failed.last_status_code,
            failed.last_error,
            failed_at(failed),
        )
        .select_from(heads)
        .outerjoin(latest, latest.id == heads.c.latest_id)
        .outerjoin(failed, failed.id == heads.c.failed_id)
    ).all()
    found: dict[str, LastError] = {}
    for webhook_id, status, code, error, at, f_code, f_error, f_at in rows:
        failing = status == DeliveryStatus.FAILED
        retrying = status == DeliveryStatus.PENDING and (code is not None or error is not None)
        if failing or retrying:
            found[webhook_id] = LastError(_said(code, error), at, retrying=retrying)
        elif f_at is not None:
            found[webhook_id] = LastError(_said(f_code, f_error), f_at, retrying=False)
    return found


def _said(code: int | None, error: str | None) -> str:
    if error:
        return error
    return f"HTTP {code}" if code is not None else "failed"
