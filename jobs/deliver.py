"""The delivery job."""

from __future__ import annotations

import logging

from flask import current_app
from redis.exceptions import RedisError
from rq import get_current_job

from webhooks import delivery, queueing
from webhooks.config import Settings
from webhooks.models import db

log = logging.getLogger(__name__)


def _slow_lane(webhook_id: str) -> None:
    """A target that ran into the timeout: its next deliveries go to the slow lane."""
    job = get_current_job()
    try:
        queueing.mark_slow(job.connection if job else current_app.extensions["redis"], webhook_id)
    except RedisError as exc:
        log.warning("could not move webhook %s to the slow lane: %s", webhook_id, exc)


def deliver(delivery_id: str) -> str | None:
    """Make one attempt of a delivery, if it is still ours to make."""
    settings = Settings.from_config(current_app.config)
    try:
        return delivery.deliver(db.session, delivery_id, settings, on_timeout=_slow_lane)
    finally:
        db.session.remove()
