"""The bulk job: create a recover or replay-missed job's deliveries, batch by batch."""

from __future__ import annotations

from flask import current_app

from webhooks import bulk
from webhooks.config import Settings
from webhooks.models import db


def run(job_id: str) -> str | None:
    """Run a bulk job to its end, if no other worker has it."""
    try:
        return bulk.run(
            db.session,
            current_app.extensions["redis"],
            job_id,
            Settings.from_config(current_app.config),
        )
    finally:
        db.session.remove()
