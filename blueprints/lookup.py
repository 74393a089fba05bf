"""The signed-in workspace's rows, looked up for the API and the dashboard alike.

A row of another workspace is answered exactly like a missing one: `Missing`, a 404 that the
API turns into its JSON error ("no webhook 'wh_…'") and the dashboard into its 404 page."""

from __future__ import annotations

from typing import Any

from flask import g
from sqlalchemy import select
from werkzeug.exceptions import NotFound

from webhooks import management
from webhooks.models import Delivery, Webhook, db


class Missing(NotFound):
    """No such row in the caller's workspace."""

    def __init__(self, label: str, object_id: str) -> None:
        super().__init__(f"no {label} {object_id!r}")


def webhook_or_404(webhook_id: str) -> Webhook:
    """The caller's webhook, or 404 exactly as if it did not exist."""
    webhook = management.find(db.session, g.workspace_id, webhook_id)
    if webhook is None:
        raise Missing("webhook", webhook_id)
    return webhook


def delivery_or_404(delivery_id: str) -> Delivery:
    """The caller's delivery, or 404 exactly as if it did not exist."""
    delivery = management.find_delivery(db.session, g.workspace_id, delivery_id)
    if delivery is None:
        raise Missing("delivery", delivery_id)
    return delivery


def owned_or_404(model: Any, object_id: str, label: str) -> Any:
    """The caller's row of `model` (an event, a job, an API key, a listener), or 404 exactly
    as if it did not exist."""
    row = db.session.scalars(
        select(model).where(model.id == object_id, model.workspace_id == g.workspace_id)
    ).first()
    if row is None:
        raise Missing(label, object_id)
    return row
