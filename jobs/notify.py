"""The notification job: send one message of the outbox."""

from __future__ import annotations

from webhooks import notifications, services
from webhooks.models import db


def send(notification_id: str, tries: int) -> str | None:
    """Try once to send a notification, if that try is still ours to make."""
    try:
        return notifications.send(db.session, notification_id, tries, services.settings())
    finally:
        db.session.remove()
