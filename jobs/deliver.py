"""The delivery job."""

from __future__ import annotations

from flask import current_app

from webhooks import delivery
from webhooks.config import Settings
from webhooks.models import db


def deliver(delivery_id: str) -> str | None:
    """Make one attempt of a delivery, if it is still ours to make."""
    try:
        return delivery.deliver(db.session, delivery_id, Settings.from_config(current_app.config))
    finally:
        db.session.remove()
