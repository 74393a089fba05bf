"""Notifications: an outbox of messages about failing webhooks, and the sending of them.

A message is written as `Notification` rows (one per channel: e-mail, alert URL) in the
transaction of what causes it, so it exists exactly when that did. After the commit an RQ job
(`jobs.notify.send`) sends each row; the scheduler's periodic pass queues again any row still
unsent a while later, 3 tries in all. Sending never touches a delivery.

At most one "deliveries exhausted" message goes out per webhook per
`WEBHOOK_NOTIFY_INTERVAL_SECONDS`: an exhaustion inside that quiet time is kept as a `held` row
(no channel, never sent), and the scheduler turns a webhook's held rows into one summary once
its quiet time has passed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import smtplib
import ssl
from collections.abc import Sequence
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import unquote, urlencode, urlsplit

from redis import Redis
from rq import Queue, get_current_job
from sqlalchemy import delete, func, or_, select, update

from webhooks import outgoing, queueing, transport
from webhooks.config import Settings
from webhooks.ids import new_id
from webhooks.models import (
    Delivery,
    Notification,
    NotificationSettings,
    Session,
    Webhook,
    Workspace,
    changed,
    utcnow,
)

PENDING, SENT, FAILED = "pending", "sent", "failed"
HELD = "held"  # an exhaustion inside a webhook's quiet time, counted for its summary
EXHAUSTED, SUMMARY, DISABLED, TEST = "exhausted", "summary", "disabled", "test"
EMAIL, ALERT_URL = "email", "alert_url"
MAX_TRIES = 3
# A message still unsent after a day is left as it is: news that old helps nobody.
RESEND_HORIZON = timedelta(days=1)
SMTP_TIMEOUT = 10.0
SEND_JOB = "jobs.notify.send"
BATCH = 500

log = logging.getLogger(__name__)


# -- where messages go ------------------------------------------------------------------------


def channels(session: Session, workspace_id: str) -> list[tuple[str, str]]:
    """(channel, target) for each way the workspace wants to be told; empty when none."""
    found = session.get(NotificationSettings, workspace_id)
    if found is None:
        return []
    out = []
    if found.emails:
        out.append((EMAIL, ", ".join(found.emails)))
    if found.alert_url:
        out.append((ALERT_URL, found.alert_url))
    return out


def shown_target(channel: str, target: str) -> str:
    """The target as logs and pages show it: an alert URL's path is its secret, so it is cut."""
    if channel != ALERT_URL:
        return target
    parts = urlsplit(target)
    return f"{parts.scheme}://{parts.netloc}/…" if parts.path not in ("", "/") else target


def logs_link(settings: Settings, webhook_id: str) -> str:
    query = urlencode({"webhook_id": webhook_id, "status": "failed"})
    return f"{settings.public_url}/settings/webhooks/logs?{query}"


def webhook_link(settings: Settings, webhook_id: str) -> str:
    return f"{settings.public_url}/settings/webhooks/{webhook_id}"


# -- writing messages (in the caller's transaction) ---------------------------------------------


def write(
    session: Session,
    workspace_id: str,
    webhook_id: str | None,
    kind: str,
    message: tuple[str, str],
    now: datetime,
) -> list[str]:
    """Add one pending row per configured channel, uncommitted; returns their ids."""
    subject, body = message
    ids = []
    for channel, target in channels(session, workspace_id):
        row = Notification(
            id=new_id("ntf"),
            workspace_id=workspace_id,
            webhook_id=webhook_id,
            kind=kind,
            channel=channel,
            target=target,
            subject=subject,
            body=body,
            status=PENDING,
            attempts=0,
            created_at=now,
        )
        session.add(row)
        ids.append(row.id)
    return ids


def hold(session: Session, delivery: Delivery, now: datetime) -> None:
    """Count an exhaustion toward the webhook's next summary instead of telling it now."""
    session.add(
        Notification(
            id=new_id("ntf"),
            workspace_id=delivery.workspace_id,
            webhook_id=delivery.webhook_id,
            kind=EXHAUSTED,
            channel="none",
            target="",
            subject="",
            body=delivery.id,
            status=HELD,
            attempts=0,
            created_at=now,
        )
    )


def take_held(session: Session, webhook_id: str | None, now: datetime) -> int:
    """Delete the webhook's held exhaustions up to now; returns how many there were."""
    ids = session.scalars(
        select(Notification.id).where(
            Notification.status == HELD,
            Notification.created_at <= now,
            Notification.webhook_id == webhook_id
            if webhook_id is not None
            else Notification.webhook_id.is_(None),
        )
    ).all()
    for start in range(0, len(ids), BATCH):
        session.execute(
            delete(Notification)
            .where(Notification.id.in_(ids[start : start + BATCH]))
            .execution_options(synchronize_session=False)
        )
    return len(ids)


def _more(count: int) -> str:
    return "1 more delivery" if count == 1 else f"{count} more deliveries"


def exhausted_message(
    webhook: Webhook, delivery: Delivery, earlier: int, settings: Settings
) -> tuple[str, str]:
    subject = f"Webhook “{webhook.name}”: a delivery failed after every retry"
    lines = [
        f"A delivery to the webhook “{webhook.name}” ({webhook.id}) failed after "
        f"{delivery.attempt_count} attempts: {delivery.last_error or 'no success'}.",
        f"Event {delivery.event_type} ({delivery.event_id}), delivery {delivery.id}.",
    ]
    if earlier:
        lines.append(f"{_more(earlier)} failed since the last message.")
    lines += ["", f"Failed deliveries of this webhook: {logs_link(settings, webhook.id)}"]
    return subject, "\n".join(lines) + "\n"


def summary_message(
    webhook: Webhook, count: int, since: datetime | None, settings: Settings
) -> tuple[str, str]:
    subject = f"Webhook “{webhook.name}”: {_more(count)} failed"
    after = f" since the message of {since:%Y-%m-%d %H:%M} UTC" if since else ""
    body = (
        f"{_more(count)} to the webhook “{webhook.name}” ({webhook.id}) failed after every "
        f"retry{after}.\n\nFailed deliveries of this webhook: {logs_link(settings, webhook.id)}\n"
    )
    return subject, body


def disabled_message(webhook: Webhook, settings: Settings) -> tuple[str, str]:
    subject = f"Webhook “{webhook.name}” was disabled"
    body = (
        f"The webhook “{webhook.name}” ({webhook.id}) was disabled. "
        f"{webhook.disabled_reason or ''}\n"
        "It gets no deliveries until it is turned on again; events published meanwhile are "
        "kept. Turn it on and recover its failed deliveries in one step: "
        f"{webhook_link(settings, webhook.id)}\n\n"
        f"Failed deliveries of this webhook: {logs_link(settings, webhook.id)}\n"
    )
    return subject, body


def test_message(workspace: Workspace, settings: Settings) -> tuple[str, str]:
    subject = "Test notification from CloudThinker Webhooks"
    body = (
        f"This is a test notification for the workspace “{workspace.name}” ({workspace.id}). "
        "Webhooks whose deliveries fail after every retry, or that get disabled, are reported "
        f"here.\n\nNotification settings: {settings.public_url}/settings/notifications\n"
    )
    return subject, body


def send_test(session: Session, workspace_id: str, settings: Settings) -> list[str]:
    """Write a test message to every channel, committed; returns the ids to hand off."""
    workspace = session.get(Workspace, workspace_id)
    assert workspace is not None
    ids = write(session, workspace_id, None, TEST, test_message(workspace, settings), utcnow())
    session.commit()
    return ids


# -- handing off to RQ --------------------------------------------------------------------------


def job_id(notification_id: str, tries: int) -> str:
    return f"{notification_id}-{tries}"


def enqueue(redis: Redis, settings: Settings, items: Sequence[tuple[str, int]]) -> None:
    """Queue a send job for each (notification id, tries so far); raises RedisError."""
    if not items:
        return
    queue = Queue(settings.queue, connection=redis)
    jobs = [
        Queue.prepare_data(
            SEND_JOB,
            args=(notification_id, tries),
            job_id=job_id(notification_id, tries),
            result_ttl=0,
            failure_ttl=7 * 24 * 3600,
            timeout=int(max(settings.timeout, SMTP_TIMEOUT)) + 60,
        )
        for notification_id, tries in items
    ]
    with redis.pipeline() as pipe:
        queue.enqueue_many(jobs, pipeline=pipe)
        pipe.execute()


def hand_off(redis: Redis | None, settings: Settings, ids: Sequence[str]) -> None:
    """Queue freshly committed messages; when that fails the scheduler's pass queues them."""
    if ids and redis is not None:
        queueing.safe("queue notifications", enqueue, redis, settings, [(i, 0) for i in ids])


def job_redis() -> Redis | None:
    """The Redis of the RQ job running now (a delivery job writes messages), if any."""
    job = get_current_job()
    return job.connection if job is not None else None


# -- sending ------------------------------------------------------------------------------------


def send(session: Session, notification_id: str, tries: int, settings: Settings) -> str | None:
    """Try once to send a message, if this try is still ours to make; returns its status."""
    claimed = changed(
        session,
        update(Notification)
        .where(
            Notification.id == notification_id,
            Notification.attempts == tries,
            Notification.attempts < MAX_TRIES,
            Notification.status.in_((PENDING, FAILED)),
        )
        .values(attempts=tries + 1)
        .execution_options(synchronize_session=False),
    )
    if claimed != 1:
        session.rollback()
        return None
    row = session.get(Notification, notification_id, populate_existing=True)
    assert row is not None
    channel, target, subject, body = row.channel, row.target, row.subject, row.body
    session.commit()  # no transaction stays open while the network is used
    error = _deliver(channel, target, subject, body, settings)
    values: dict = {"status": SENT, "sent_at": utcnow(), "error": None}
    if error is not None:
        error = error.replace(target, shown_target(channel, target))
        values = {"status": FAILED, "error": error}
        log.warning(
            "notification %s (%s to %s) failed, try %d of %d: %s",
            notification_id,
            channel,
            shown_target(channel, target),
            tries + 1,
            MAX_TRIES,
            error,
        )
    session.execute(
        update(Notification)
        .where(Notification.id == notification_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return values["status"]


def _deliver(channel: str, target: str, subject: str, body: str, settings: Settings) -> str | None:
    """Send through one channel; the error in words, or None when it went out."""
    try:
        if channel == EMAIL:
            return send_email(settings, [a.strip() for a in target.split(",")], subject, body)
        if channel == ALERT_URL:
            return post_alert(settings, target, subject, body)
        return f"unknown channel {channel!r}"
    except (OSError, ValueError) as exc:  # smtplib's and ssl's errors are OSErrors
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def send_email(settings: Settings, to: list[str], subject: str, body: str) -> str | None:
    """One e-mail through SMTP_URL: STARTTLS when offered on smtp://, TLS at once on smtps://.

    The URL's credentials are sent only over TLS (or to a server on a loopback address): an
    attacker on the path can strip STARTTLS from the server's answer, and would then read them.
    """
    if not settings.smtp_url:
        return "SMTP_URL is not set, so e-mail cannot be sent"
    parts = urlsplit(settings.smtp_url)
    message = EmailMessage()
    message["From"] = settings.notify_from
    message["To"] = ", ".join(to)
    message["Subject"] = " ".join(subject.split())  # a name with a line break stays one header
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=settings.notify_from.rpartition("@")[2] or None)
    message.set_content(body)
    context = ssl.create_default_context()
    host = parts.hostname or "localhost"
    client: smtplib.SMTP
    if parts.scheme == "smtps":
        port = parts.port or 465
        client = smtplib.SMTP_SSL(host, port, timeout=SMTP_TIMEOUT, context=context)
    else:
        port = parts.port or 25
        client = smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT)
    with client:
        client.ehlo()
        encrypted = parts.scheme == "smtps"
        if parts.scheme == "smtp" and client.has_extn("starttls"):
            client.starttls(context=context)
            client.ehlo()
            encrypted = True
        if parts.username:
            if not encrypted and not _on_loopback(client):
                return (
                    f"the SMTP server {host}:{port} offers no STARTTLS, so the credentials in "
                    "SMTP_URL were not sent; use a server that offers STARTTLS, or smtps://"
                )
            client.login(unquote(parts.username), unquote(parts.password or ""))
        client.send_message(message)
    return None


def _on_loopback(client: smtplib.SMTP) -> bool:
    """Whether the SMTP connection goes to this machine (nobody on a path can read it)."""
    try:
        sock = client.sock
        if sock is None:
            return False
        peer = ipaddress.ip_address(str(sock.getpeername()[0]).partition("%")[0])
    except (AttributeError, OSError, ValueError):
        return False
    if peer.version == 6 and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return peer.is_loopback


def alert_text(subject: str, body: str) -> str:
    """Slack's message text: `&`, `<` and `>` are its markup, so they are escaped."""
    text = f"{subject}\n{body}".strip()
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def post_alert(settings: Settings, url: str, subject: str, body: str) -> str | None:
    """POST `{"text": …}` (a Slack incoming webhook's format) through the egress guard."""
    payload = json.dumps({"text": alert_text(subject, body)}, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", "User-Agent": transport.USER_AGENT}
    result = outgoing.post(url, payload, headers, settings)
    if result.ok:
        return None
    if result.error:
        return result.error
    answer = result.body.strip()[:200]
    return f"HTTP {result.status_code}" + (f": {answer}" if answer else "")


# -- the scheduler's pass -------------------------------------------------------------------------


def resend_due(session: Session, redis: Redis, settings: Settings, now: datetime) -> int:
    """Queue again every message still unsent a while after it was written or last tried."""
    wait = timedelta(seconds=settings.notify_resend)
    rows = session.execute(
        select(Notification.id, Notification.attempts, Notification.created_at)
        .where(
            Notification.status.in_((PENDING, FAILED)),
            Notification.created_at >= now - RESEND_HORIZON,
            Notification.created_at <= now - wait,
            Notification.attempts < MAX_TRIES,
        )
        .order_by(Notification.created_at)
        .limit(BATCH)
    ).all()
    session.rollback()
    # The n-th retry waits n intervals from the message's creation.
    due = [(i, n) for i, n, created in rows if created <= now - wait * max(1, n)]
    live = queueing.live_jobs(redis, [job_id(i, n) for i, n in due])
    items = [(i, n) for i, n in due if job_id(i, n) not in live]
    enqueue(redis, settings, items)
    return len(items)


def summarize(session: Session, settings: Settings, now: datetime) -> list[str]:
    """Turn held exhaustions into one summary per webhook whose quiet time has passed."""
    held = session.execute(
        select(Notification.webhook_id, func.count())
        .where(Notification.status == HELD)
        .group_by(Notification.webhook_id)
    ).all()
    session.rollback()
    ids: list[str] = []
    quiet_since = now - timedelta(seconds=settings.notify_interval)
    for webhook_id, _count in held:
        ids += _summarize_one(session, webhook_id, quiet_since, now, settings)
    return ids


def open_quiet_window(
    session: Session, webhook_id: str, quiet_since: datetime, now: datetime
) -> bool:
    """Whether this caller may tell about the webhook's exhausted deliveries now: true for
    exactly one caller once its last message is older than `quiet_since`, which then starts a
    new quiet window at `now` (the webhook's `updated_at` is left as it is)."""
    won = changed(
        session,
        update(Webhook)
        .where(
            Webhook.id == webhook_id,
            or_(
                Webhook.exhausted_notified_at.is_(None),
                Webhook.exhausted_notified_at <= quiet_since,
            ),
        )
        .values(exhausted_notified_at=now, updated_at=Webhook.updated_at)
        .execution_options(synchronize_session=False),
    )
    return bool(won == 1)


def _summarize_one(
    session: Session, webhook_id: str | None, quiet_since: datetime, now: datetime, s: Settings
) -> list[str]:
    webhook = session.get(Webhook, webhook_id) if webhook_id else None
    if webhook is None:  # the webhook was deleted: nothing left to tell
        take_held(session, webhook_id, now)
        session.commit()
        return []
    last = webhook.exhausted_notified_at
    if not open_quiet_window(session, webhook.id, quiet_since, now):
        session.rollback()
        return []
    count = take_held(session, webhook.id, now)
    ids = []
    if count:
        message = summary_message(webhook, count, last, s)
        ids = write(session, webhook.workspace_id, webhook.id, SUMMARY, message, now)
    session.commit()
    return ids


def recent(session: Session, workspace_id: str, limit: int = 20) -> list[Notification]:
    """The workspace's latest messages, newest first (held counts are not messages)."""
    return list(
        session.scalars(
            select(Notification)
            .where(Notification.workspace_id == workspace_id, Notification.status != HELD)
            .order_by(Notification.created_at.desc(), Notification.id.desc())
            .limit(limit)
        )
    )
