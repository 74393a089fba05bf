"""The delivery job: claim a batch and start its POSTs on the worker's threads."""

from __future__ import annotations

import logging

from flask import Flask, current_app
from redis import Redis
from redis.exceptions import RedisError
from rq import get_current_job

from webhooks import delivery, queueing, sending
from webhooks.config import Settings
from webhooks.models import db

log = logging.getLogger(__name__)


def deliver(*delivery_ids: str) -> None:
    """Start the next attempt of each delivery that is still ours to make.

    The results are recorded by the worker's recorder thread as the POSTs end. Deliveries to
    targets that keep POSTs waiting (and those beyond a webhook's share of the threads) are
    queued on the slow lane instead, so that they cannot hold the normal lane's workers.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = Settings.from_config(app.config)
    job = get_current_job()
    redis: Redis = job.connection if job else app.extensions["redis"]
    normal_lane = not (job and job.origin.endswith("-slow"))
    sender = sending.sender(settings.worker_threads, _recorder(app, settings), app)
    ids = list(delivery_ids)
    slow: set[str] = set()
    try:
        queueing.taken(redis, ids)
        if normal_lane:
            _mark_slow(redis, sender.hanging(settings.slow_after))
            slow = queueing.slow_webhooks(redis)
    except RedisError as exc:  # the database holds the truth; the work goes on without Redis
        log.warning("Redis unavailable while starting deliveries: %s", exc)
    passed_over: list[tuple[str, int, str]] = []
    try:
        for piece in sender.chunks(ids):
            prepared: list[delivery.Prepared] = []
            try:
                prepared = delivery.claim(
                    db.session,
                    piece,
                    settings,
                    skip_webhooks=slow,
                    room=sender.room if normal_lane else None,
                    passed_over=passed_over,
                )
            finally:  # the slots of what is not sent
                sender.release(len(piece) - len(prepared))
            for p in prepared:
                sender.start(p, settings)
    finally:
        db.session.remove()
    if passed_over:
        queueing.safe(
            "queue deliveries on the slow lane",
            queueing.enqueue,
            redis,
            settings.queue,
            passed_over,
            timeout=settings.timeout,
            slow={w for _, _, w in passed_over},
            batch_size=settings.batch_size,
        )


def _mark_slow(redis: Redis, webhook_ids: set[str]) -> None:
    """Targets that kept a POST waiting: their next deliveries go to the slow lane."""
    for webhook_id in webhook_ids:
        queueing.mark_slow(redis, webhook_id)


def _recorder(app: Flask, settings: Settings) -> sending.RecordFn:
    """Records results on the sender's recorder thread, with its own app context."""

    def record(results: sending.Results) -> None:
        with app.app_context():
            redis = app.extensions["redis"]
            try:
                delivery.record(db.session, results, settings, redis)
            finally:
                db.session.remove()
            # Targets that ran into the timeout, and transforms that ran into the render bound,
            # hold threads for long: their next deliveries go to the slow lane.
            timed_out = {
                p.webhook_id for p, r in results if delivery.timed_out(r) or delivery.overran(p)
            }
            if timed_out:
                queueing.safe("mark slow targets", _mark_slow, redis, timed_out)

    return record
