"""What an ended delivery does to its webhook: the auto-disable window, and the notifications.

Called by the delivery state machine inside its transaction; everything here is a conditional
update or an outbox row, so concurrent workers agree on who disables and who notifies, and
nothing is sent before the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update

from webhooks import batchsql, fastsql, notifications, pgbatch
from webhooks.config import Settings
from webhooks.models import WEBHOOKS, Delivery, Session, Webhook, changed

# Test deliveries and redeliveries neither start, extend nor end the auto-disable window, and
# their failures are not reported: they were asked for by a person who sees the result.
COUNTED_KINDS = ("event", "recover", "replay")
_UNCHANGED = {"updated_at": Webhook.updated_at}  # bookkeeping, not a change of settings


def counts(delivery: Delivery) -> bool:
    return delivery.kind in COUNTED_KINDS


def succeeded(session: Session, deliveries: Sequence[Any]) -> None:  # Delivery-like rows
    """Any success ends its webhook's failing streak."""
    webhook_ids = {d.webhook_id for d in deliveries if counts(d)}
    if not webhook_ids:
        return
    # Built once and sent to the driver (`fastsql`): this runs after every batch of successes.
    fastsql.execute(session, _STREAK_ENDED[pgbatch.used_by(session)], {"ids": list(webhook_ids)})


_STREAK_ENDED = {
    postgres: update(WEBHOOKS)
    .where(
        batchsql.among(WEBHOOKS.c.id, "ids", postgres=postgres),
        WEBHOOKS.c.failing_since.is_not(None),
    )
    .values(failing_since=None, updated_at=WEBHOOKS.c.updated_at)
    for postgres in (False, True)
}


def exhausted(session: Session, delivery: Delivery, now: datetime, settings: Settings) -> list[str]:
    """A delivery used up its retries: start or check the auto-disable window, and write the
    message it causes; returns the notification ids to send after the commit."""
    if not counts(delivery):
        return []
    session.execute(
        update(Webhook)
        .where(Webhook.id == delivery.webhook_id, Webhook.failing_since.is_(None))
        .values(failing_since=now, **_UNCHANGED)
        .execution_options(synchronize_session=False)
    )
    webhook = session.get(Webhook, delivery.webhook_id, populate_existing=True)
    if webhook is None:
        return []
    if _auto_disable(session, webhook, now, settings):
        session.refresh(webhook)
        message = notifications.disabled_message(webhook, settings)
        return notifications.write(
            session, webhook.workspace_id, webhook.id, notifications.DISABLED, message, now
        )
    return _tell_exhausted(session, webhook, delivery, now, settings)


def gone(session: Session, delivery: Delivery, now: datetime, settings: Settings) -> list[str]:
    """The webhook was just disabled by a 410 Gone: tell the workspace."""
    webhook = session.get(Webhook, delivery.webhook_id, populate_existing=True)
    if webhook is None:
        return []
    message = notifications.disabled_message(webhook, settings)
    return notifications.write(
        session, webhook.workspace_id, webhook.id, notifications.DISABLED, message, now
    )


def span(seconds: float) -> str:
    """'3 seconds', '12 minutes', '120 hours'."""
    for limit, size, unit in ((120, 1, "second"), (7200, 60, "minute"), (None, 3600, "hour")):
        if limit is None or seconds < limit:
            amount = round(seconds / size)
            return f"{amount} {unit}{'' if amount == 1 else 's'}"
    raise AssertionError("unreachable")


def _auto_disable(session: Session, webhook: Webhook, now: datetime, settings: Settings) -> bool:
    """Disable the webhook when its streak is at least the window long; True when this did."""
    hours = settings.disable_after_hours
    start = webhook.failing_since
    if hours <= 0 or start is None or not webhook.active:
        return False
    if now - start < timedelta(hours=hours):
        return False
    reason = (
        f"Disabled on {now:%Y-%m-%d %H:%M} UTC: deliveries kept failing for "
        f"{span((now - start).total_seconds())} (every one since {start:%Y-%m-%d %H:%M:%S} UTC "
        "used up its retries, with no success in between)"
    )
    disabled = changed(
        session,
        update(Webhook)
        .where(Webhook.id == webhook.id, Webhook.active.is_(True), Webhook.failing_since == start)
        .values(active=False, disabled_reason=reason, disabled_at=now, updated_at=now)
        .execution_options(synchronize_session=False),
    )
    return disabled == 1


def _tell_exhausted(
    session: Session, webhook: Webhook, delivery: Delivery, now: datetime, settings: Settings
) -> list[str]:
    """The first exhaustion in a webhook's quiet time is told at once; later ones are held."""
    if not notifications.channels(session, webhook.workspace_id):
        return []
    quiet_since = now - timedelta(seconds=settings.notify_interval)
    if not notifications.open_quiet_window(session, webhook.id, quiet_since, now):
        notifications.hold(session, delivery, now)
        return []
    earlier = notifications.take_held(session, webhook.id, now)
    message = notifications.exhausted_message(webhook, delivery, earlier, settings)
    return notifications.write(
        session, webhook.workspace_id, webhook.id, notifications.EXHAUSTED, message, now
    )
