"""The delivery job: claim a batch, POST it on the worker's threads, record the results."""

from __future__ import annotations

import logging

from flask import Flask, current_app
from redis import Redis
from redis.exceptions import RedisError
from rq import get_current_job

from webhooks import delivery, queueing, sending, transport
from webhooks.config import Settings
from webhooks.models import db

log = logging.getLogger(__name__)


def _redis() -> Redis:
    job = get_current_job()
    return job.connection if job else current_app.extensions["redis"]


def _in_slow_lane() -> bool:
    job = get_current_job()
    return bool(job and job.origin.endswith("-slow"))


def _mark_slow(redis: Redis, webhook_ids: set[str]) -> None:
    """Targets that kept a POST waiting: their next deliveries go to the slow lane."""
    for webhook_id in webhook_ids:
        try:
            queueing.mark_slow(redis, webhook_id)
        except RedisError as exc:
            log.warning("could not move webhook %s to the slow lane: %s", webhook_id, exc)


def _divert(redis: Redis, settings: Settings, ids: list[str], slow: set[str]) -> None:
    """Deliveries to slow targets that reached the normal lane are queued on the slow lane."""
    items = delivery.unclaimed_of(db.session, ids, slow)
    if items:
        queueing.safe(
            "divert deliveries to the slow lane",
            queueing.enqueue,
            redis,
            settings.queue,
            items,
            timeout=settings.timeout,
            slow=slow,
            batch_size=settings.batch_size,
        )


def deliver(*delivery_ids: str) -> dict[str, str]:
    """Make the next attempt of each delivery that is still ours to make; returns statuses."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = Settings.from_config(app.config)
    redis = _redis()
    ids = list(delivery_ids)
    slow: set[str] = set()
    try:
        queueing.taken(redis, ids)
        if not _in_slow_lane():
            slow = queueing.slow_webhooks(redis)
    except RedisError as exc:  # the database holds the truth; the work goes on without Redis
        log.warning("Redis unavailable while starting deliveries: %s", exc)
    sender = sending.sender(settings.worker_threads)
    started = []
    try:
        for piece in sender.chunks(ids):
            prepared = []
            try:
                prepared = delivery.claim(db.session, piece, settings, skip_webhooks=slow)
            finally:  # the slots of what is not sent
                sender.release(len(piece) - len(prepared))
            started += [(p, sender.start(p, settings)) for p in prepared]
        if slow:
            _divert(redis, settings, ids, slow)
    finally:
        db.session.remove()
    sent = sender.collect(started, settings.slow_after)
    hung = {p.webhook_id for p, _ in sent.waiting}
    hung |= {p.webhook_id for p, r in sent.done if delivery.timed_out(r)}
    _mark_slow(redis, hung)
    for prepared, future in sent.waiting:
        sender.later(future, _recorder(app, settings, redis, prepared))
    try:
        return delivery.record(db.session, sent.done, settings, redis)
    finally:
        db.session.remove()


def _recorder(app: Flask, settings: Settings, redis: Redis, prepared: delivery.Prepared):  # type: ignore[no-untyped-def]
    """Records a POST that outlasted its job, on the POST's own thread."""

    def record(result: transport.Result) -> None:
        with app.app_context():
            try:
                delivery.record(db.session, [(prepared, result)], settings, redis)
            except Exception:  # its lease runs out and the reconciler makes it due again
                log.exception("could not record the result of %s", prepared.delivery_id)
            finally:
                db.session.remove()

    return record
