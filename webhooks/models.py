"""The data: workspaces, users, keys, webhooks and their secrets, events, deliveries, attempts."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    DDL,
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    mapped_column,
    registry,
    relationship,
    scoped_session,
)
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.sql import Executable

from webhooks.credentials import LoggedBody, LoggedHeaders, SealedHeaders, SealedParams
from webhooks.crypto import EncryptedText
from webhooks.ids import new_id

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """Now, as the naive UTC datetime every column stores."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    registry = registry(
        metadata=MetaData(
            naming_convention={
                "ix": "ix_%(table_name)s_%(column_0_N_name)s",
                "uq": "uq_%(table_name)s_%(column_0_N_name)s",
                "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
                "pk": "pk_%(table_name)s",
            }
        ),
        type_annotation_map={dict[str, Any]: JSONType, list[str]: JSONType, datetime: DateTime()},
    )


db = SQLAlchemy(model_class=Base)


def changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE and say how many rows it changed."""
    result = session.execute(statement)
    return cast(CursorResult[Any], result).rowcount


def table(model: type[Base]) -> Table:
    """A model's table, for Core statements on the hot paths."""
    return cast(Table, model.__table__)


# Flask-SQLAlchemy makes db.Model at run time, from Base: to a type checker it is Base.
if TYPE_CHECKING:
    Model = Base
else:
    Model = db.Model

# What the domain takes as its session: a Session, or the app's scoped proxy of one (db.session).
Session: TypeAlias = OrmSession | scoped_session[Any]


def _id(prefix: str) -> Mapped[str]:
    return mapped_column(String(40), primary_key=True, default=lambda: new_id(prefix))


memberships = Table(
    "memberships",
    Base.metadata,
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("workspace_id", ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True),
)


class Workspace(Model):
    __tablename__ = "workspaces"

    id: Mapped[str] = _id("ws")
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Model):
    __tablename__ = "users"

    id: Mapped[str] = _id("usr")
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    # Part of every session cookie; a new one (sign-out, a new password) voids the old cookies.
    session_token: Mapped[str] = mapped_column(
        String(64), default=lambda: secrets.token_urlsafe(24), server_default=""
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    workspaces: Mapped[list[Workspace]] = relationship(
        secondary=memberships, order_by=Workspace.name
    )

    # What a session-based login needs of a user (Flask-Login's protocol).
    is_authenticated = True
    is_active = True
    is_anonymous = False

    def get_id(self) -> str:
        return f"{self.id}:{self.session_token}"


class Invitation(Model):
    """A one-time link that lets an invited user choose a password; only its digest is kept."""

    __tablename__ = "invitations"

    id: Mapped[str] = _id("inv")
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class ApiKey(Model):
    __tablename__ = "api_keys"

    id: Mapped[str] = _id("key")
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Webhook(Model):
    __tablename__ = "webhooks"
    __table_args__ = (Index(None, "workspace_id", "created_at"),)

    id: Mapped[str] = _id("wh")
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]]
    # Custom headers; credential values encrypted at rest (webhooks.credentials).
    headers: Mapped[dict[str, Any]] = mapped_column(SealedHeaders)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    template: Mapped[str | None] = mapped_column(String(40))
    # Credentials (API tokens, routing keys) encrypted at rest.
    template_params: Mapped[dict[str, Any] | None] = mapped_column(SealedParams)
    # A custom transform. None with a template: the template's body, derived at send time.
    transform: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # When it went inactive (paused or disabled), for "recover failed since then".
    disabled_at: Mapped[datetime | None]
    # The first exhausted delivery since the last success: the auto-disable window's start.
    failing_since: Mapped[datetime | None]
    # The last "deliveries exhausted" notification, for at most one an hour.
    exhausted_notified_at: Mapped[datetime | None]
    # Flow control (API.md section 8; webhooks.flow). At most `rate_limit` attempts start per
    # second, with bursts of at most max(1, ceil(rate_limit)); None: no limit.
    rate_limit: Mapped[float | None] = mapped_column(Float)
    # A template rendered against each event's envelope at publish time: deliveries whose keys
    # are equal go one at a time, in publish order. None: no ordering.
    ordering_key: Mapped[str | None] = mapped_column(Text)
    # The rate limit's state, shared by every worker: when the bucket is next full again
    # (GCRA's theoretical arrival time), and the last start time promised to a waiting delivery.
    rate_tat: Mapped[datetime | None]
    rate_horizon: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    secrets: Mapped[list[WebhookSecret]] = relationship(
        back_populates="webhook",
        cascade="all, delete-orphan",
        order_by="WebhookSecret.id.desc()",
        passive_deletes=True,
    )


class WebhookSecret(Model):
    """A signing secret; the newest unexpired one is current, older ones sign until they expire."""

    __tablename__ = "webhook_secrets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), index=True
    )
    secret: Mapped[str] = mapped_column(EncryptedText)  # encrypted at rest (webhooks.crypto)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]

    webhook: Mapped[Webhook] = relationship(back_populates="secrets")


# Searching the logs by words of an event's title (GET /deliveries?q=…). PostgreSQL: a GIN index
# on this expression; SQLite: an FTS5 table of titles keyed by the event's rowid, kept by
# triggers. Both in the migrations (0007) and, for databases made with create_all, here.
TITLE_SEARCH = (
    "to_tsvector('simple', CASE jsonb_typeof(data->'title') WHEN 'string' THEN data->>'title' END)"
)
_SQLITE_TITLE = (
    "CASE json_type({row}.data, '$.title') WHEN 'text' THEN json_extract({row}.data, '$.title') END"
)
SQLITE_TITLE_SEARCH = (
    "CREATE VIRTUAL TABLE events_title USING fts5(title, content='')",
    "CREATE TRIGGER events_title_insert AFTER INSERT ON events BEGIN "
    "INSERT INTO events_title(rowid, title) "
    f"VALUES (new.rowid, {_SQLITE_TITLE.format(row='new')}); END",
    "CREATE TRIGGER events_title_delete AFTER DELETE ON events BEGIN "
    "INSERT INTO events_title(events_title, rowid, title) "
    f"VALUES ('delete', old.rowid, {_SQLITE_TITLE.format(row='old')}); END",
)


class Event(Model):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("workspace_id", "idempotency_key"),
        Index(None, "workspace_id", "created_at"),
        Index("ix_events_title_search", text(TITLE_SEARCH), postgresql_using="gin").ddl_if(
            dialect="postgresql"
        ),
    )

    id: Mapped[str] = _id("evt")
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(200))
    data: Mapped[dict[str, Any]]
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    is_test: Mapped[bool] = mapped_column(Boolean, default=False)


for _statement in SQLITE_TITLE_SEARCH:
    sa_event.listen(Event.__table__, "after_create", DDL(_statement).execute_if(dialect="sqlite"))


class DeliveryStatus:
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ALL = (PENDING, SUCCEEDED, FAILED)


class Delivery(Model):
    """One event to one webhook: the unit that is claimed, attempted and retried."""

    __tablename__ = "deliveries"
    __table_args__ = (
        # The logs: newest first, by workspace, with each filter.
        Index(None, "workspace_id", "created_at", "id"),
        Index(None, "workspace_id", "status", "created_at", "id"),
        # A webhook's log, with each row's status, event type and workspace in its entry:
        # filtered by them, SQLite reads only the index, not each row (`logs.page`). It also
        # finds a webhook's newest deliveries (`logs.last_errors`) and its rows for a cascade:
        # one index led by the webhook, as each costs a publish a page per webhook it reaches.
        Index(
            "ix_deliveries_webhook_log",
            "webhook_id",
            "created_at",
            "id",
            "status",
            "event_type",
            "workspace_id",
        ),
        Index(None, "workspace_id", "event_type", "created_at", "id"),
        # The claim and the scheduler. No index holds a lease's columns (lease_token,
        # lease_expires_at): on PostgreSQL the claim's UPDATE then writes the row's new version
        # on the row's own page (a heap-only tuple, room for which `fillfactor` keeps: migration
        # 0014) instead of an entry in each index; the reconciler finds leases through their
        # attempts in flight.
        Index(None, "status", "next_attempt_at"),
        # Flow control: the tail of a key's line, the delivery a line's next one waits for,
        # and how many wait (only the rows that take part are in these indexes).
        Index(
            None,
            "webhook_id",
            "order_key",
            postgresql_where=text("order_key IS NOT NULL"),
            sqlite_where=text("order_key IS NOT NULL"),
        ),
        Index(
            None,
            "waiting_for",
            postgresql_where=text("waiting_for IS NOT NULL"),
            sqlite_where=text("waiting_for IS NOT NULL"),
        ),
        Index(
            None,
            "waiting",
            "webhook_id",
            postgresql_where=text("waiting IS NOT NULL"),
            sqlite_where=text("waiting IS NOT NULL"),
        ),
        {"postgresql_with": {"fillfactor": 50}},
    )

    id: Mapped[str] = _id("dlv")
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), index=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(200))
    # event, test, redelivery, recover (of a failed one), replay (of a missed event)
    kind: Mapped[str] = mapped_column(String(16), default="event")
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    lost_count: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    # Tests and redeliveries go out even while the webhook is paused.
    ignores_pause: Mapped[bool] = mapped_column(Boolean, default=False)
    next_attempt_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    lease_token: Mapped[str | None] = mapped_column(String(32))
    enqueued_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # Flow control (webhooks.flow): the webhook's ordering key as rendered for this event (None:
    # outside any order), why the delivery waits ("rate_limit" or "order", None: it does not),
    # and the earlier delivery of its key that it waits for.
    order_key: Mapped[str | None] = mapped_column(String(200))
    waiting: Mapped[str | None] = mapped_column(String(16))
    waiting_for: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    event: Mapped[Event] = relationship()
    webhook: Mapped[Webhook] = relationship()
    attempts: Mapped[list[Attempt]] = relationship(
        order_by="Attempt.number", passive_deletes=True, back_populates="delivery"
    )


# A delivery that is due or waiting and that no worker holds: what a claim may lease, and what
# may be ended without waiting for an attempt's result.
UNLEASED = (Delivery.status == DeliveryStatus.PENDING, Delivery.lease_token.is_(None))
# What ending a delivery clears (`delivery._end` on an object, `**ENDED` in a Core update, the
# SET of `pgbatch`'s array statement).
ENDED = {
    "next_attempt_at": None,
    "lease_token": None,
    "lease_expires_at": None,
    "enqueued_at": None,
}


class AttemptOutcome:
    IN_FLIGHT = "in_flight"
    SUCCESS = "success"
    FAILURE = "failure"
    LOST = "lost"  # the worker died before recording a result


class Attempt(Model):
    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("delivery_id", "number"),
        # The attempts a worker is making: each leased delivery has one (the reconciler's
        # way to the leases that ran out).
        Index(
            "ix_attempts_in_flight",
            "delivery_id",
            postgresql_where=text("outcome = 'in_flight'"),
            sqlite_where=text("outcome = 'in_flight'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16), default=AttemptOutcome.IN_FLIGHT)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[int | None]
    request_url: Mapped[str] = mapped_column(String(2048))
    # Credentials are masked as they are written (webhooks.credentials).
    request_headers: Mapped[dict[str, Any]] = mapped_column(LoggedHeaders)
    request_body: Mapped[str] = mapped_column(LoggedBody)
    response_status: Mapped[int | None]
    response_headers: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    response_body: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)

    delivery: Mapped[Delivery] = relationship(back_populates="attempts")


class NotificationSettings(Model):
    """Where a workspace is told about failing webhooks."""

    __tablename__ = "notification_settings"

    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    emails: Mapped[list[str]]
    alert_url: Mapped[str | None] = mapped_column(EncryptedText)  # its path is a credential
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Notification(Model):
    """One message to one channel: written with the event that causes it, then sent by a job."""

    __tablename__ = "notifications"
    __table_args__ = (
        Index(None, "workspace_id", "created_at"),
        Index(None, "status", "created_at"),
    )

    id: Mapped[str] = _id("ntf")
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    webhook_id: Mapped[str | None] = mapped_column(ForeignKey("webhooks.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(16))  # exhausted, disabled
    channel: Mapped[str] = mapped_column(String(16))  # email, alert_url
    target: Mapped[str] = mapped_column(EncryptedText)  # an alert URL is a credential
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending, sent, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]


class BulkJob(Model):
    """A recover, replay-missed or redeliver-matching run: its progress, as GET /jobs/{id}
    shows it."""

    __tablename__ = "bulk_jobs"
    __table_args__ = (Index(None, "workspace_id", "created_at"),)

    id: Mapped[str] = _id("job")
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    # None for a redeliver job whose filter spans every webhook of the workspace.
    webhook_id: Mapped[str | None] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # recover, replay, redeliver
    # queued, running, done, failed
    status: Mapped[str] = mapped_column(String(16), default="queued")
    params: Mapped[dict[str, Any]]
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class MetricTotal(Model):
    """What deleted rows had added to a /metrics counter, so that counters never go down."""

    __tablename__ = "metric_totals"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)


class Listener(Model):
    """A `listen` command's stream: its webhook's deliveries go to the stream, not to a URL."""

    __tablename__ = "listeners"

    id: Mapped[str] = _id("lst")
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    webhook_id: Mapped[str] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When its stream was last seen connected; 60 s later without a stream it closes.
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


# The tables as Core sees them: the hot paths' statements run once per batch, where the ORM's
# per-object work would cost more than the POSTs.
API_KEYS = table(ApiKey)
WEBHOOKS = table(Webhook)
WEBHOOK_SECRETS = table(WebhookSecret)
EVENTS = table(Event)
DELIVERIES = table(Delivery)
ATTEMPTS = table(Attempt)
