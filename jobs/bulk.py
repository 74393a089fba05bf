"""The bulk job: create a recover or replay-missed job's deliveries, batch by batch."""

from __future__ import annotations

from webhooks import bulk, services
from webhooks.models import db


def run(job_id: str) -> str | None:
    """Run a bulk job to its end, if no other worker has it."""
    try:
        return bulk.run(db.session, services.redis(), job_id, services.settings())
    finally:
        db.session.remove()
