"""The delivery job: a wake-up. It claims due deliveries from the database, a batch at a
time, and starts their POSTs on the worker's event loop, until none of its lane is left."""

from __future__ import annotations

import logging
import time

from flask import Flask, current_app
from redis import Redis
from redis.exceptions import RedisError
from rq import get_current_job

from jobs import runtime
from webhooks import claim, delivery, flow, outgoing, queueing, services
from webhooks.config import Settings
from webhooks.models import db

log = logging.getLogger(__name__)

# How long one wake-up claims before it queues the next and returns: RQ's bookkeeping
# (heartbeats, a stop request) runs between jobs.
WAKE_SECONDS = 10.0
# The least time between two claims of a worker: a burst of publishes is claimed in fuller
# batches instead of one claim per publish (claims of a few rows cost the database as much
# as full ones). A worker that was idle claims at once.
CLAIM_GAP = 0.005
# Which webhooks have a rate limit, as this worker process last read it (webhooks.flow).
_RATES = flow.Rates()
# Under a backlog (the last claim was full, or deliveries wait for a webhook's share), a claim
# waits up to this long for half of the threads to be free, rather than claiming a row or two
# each time one POST ends.
BACKLOG_LINGER = 0.02
# While due deliveries wait only for a webhook's share of the threads (its POSTs hang), how
# long a wake-up waits for one of them to end before it claims again. It waited until a
# target counted as slow (2 s), and healthy deliveries published meanwhile waited with it.
RECHECK = 0.05


def deliver(*_legacy_ids: str) -> None:
    """Claim and start due deliveries of this worker's lane until none is left.

    Jobs queued by earlier versions carried delivery ids; those deliveries are due in the
    database, which is all a wake-up needs, so the ids are not used.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = services.of(app).settings
    job = get_current_job()
    redis: Redis = job.connection if job else services.of(app).redis
    queue_name = job.origin if job else settings.queue
    queueing.safe("take the wake-up", queueing.woken, redis, queue_name)
    pump = _Pump(app, settings, redis, queue_name)
    try:
        pump.run()
    finally:
        db.session.remove()


class _Pump:
    """One wake-up's loop: free slots → the lane's webhooks → a claim → POSTs started."""

    def __init__(self, app: Flask, settings: Settings, redis: Redis, queue_name: str) -> None:
        self.settings = settings
        self.redis = redis
        self.queue_name = queue_name
        self.slow_lane = queueing.is_slow_queue(queue_name)
        self.sender = runtime.sender(settings.worker_threads, _recorder(app, settings), app)

    def run(self) -> None:
        until = time.monotonic() + WAKE_SECONDS
        backlog = False
        most = max(1, min(self.settings.batch_size, self.settings.worker_threads))
        while True:
            lane, waiting = self._lane()
            runtime.pace(CLAIM_GAP)
            slots = self.sender.take(
                most,
                least=max(1, most // 2) if backlog else 1,
                linger=BACKLOG_LINGER if backlog else 0.0,
            )
            recorded = self.sender.recorded
            claimed = claim.Claimed()
            try:
                claimed = claim.claim(
                    db.session,
                    self.settings,
                    limit=slots,
                    lane=lane,
                    room=self.sender.room,
                    rates=_RATES,
                )
            finally:  # the slots of what is not sent
                self.sender.release(slots - len(claimed.prepared))
            self.sender.start_all(claimed.prepared, self.settings)
            if time.monotonic() > until:
                queueing.safe("queue the next wake-up", self._again)
                return
            if len(claimed.prepared) == slots or claimed.deferred:
                # A full batch, or deliveries over a rate limit moved out of the way: more
                # may be due.
                backlog = True
                continue
            if not (claimed.left or waiting):
                if not claimed.prepared:
                    return
                # Work is flowing: claim again after the gap rather than end the wake-up and
                # have the next publish queue another (a job's round trip through RQ cost
                # more than a claim).
                backlog = False
                continue
            backlog = True
            # Due deliveries wait for a webhook's share of the threads: claim again once a
            # POST has ended, or after RECHECK (deliveries published meanwhile may go at once:
            # their wake-up waits for this job to end; and more targets may have turned slow).
            # The slow lane's targets all keep POSTs waiting: it looks again less often.
            recheck = self.settings.slow_after if self.slow_lane else RECHECK
            self.sender.wait_recorded(recorded, timeout=recheck)

    def _again(self) -> None:
        queueing.wake(self.redis, self.queue_name, hold=self.settings.requeue_after, force=True)

    def _lane(self) -> tuple[claim.Lane, bool]:
        """Which webhooks this claim may take, and whether some are left out only because
        they hold their share of the threads (their deliveries are claimed once one ends)."""
        full = self.sender.full()
        slow: set[str] = set()
        try:
            if not self.slow_lane:
                _mark_slow(self.redis, self.settings, self.sender.hanging(self.settings.slow_after))
            slow = queueing.slow_webhooks(self.redis)
        except RedisError as exc:  # the database holds the truth; the work goes on without Redis
            log.warning("Redis unavailable while claiming deliveries: %s", exc)
        if self.slow_lane:
            return claim.Lane(only=slow - full), bool(full & slow)
        return claim.Lane(skip=slow | full), bool(full - slow)


def _mark_slow(redis: Redis, settings: Settings, webhook_ids: set[str]) -> None:
    """Targets that kept a POST waiting: their next deliveries go to the slow lane."""
    if not webhook_ids:
        return
    for webhook_id in webhook_ids:
        queueing.mark_slow(redis, webhook_id)
    queueing.wake(redis, queueing.slow_queue(settings.queue), hold=settings.requeue_after)


def _recorder(app: Flask, settings: Settings) -> runtime.RecordFn:
    """Records results on the sender's recorder thread, with its own app context."""

    def record(results: runtime.Results) -> None:
        with app.app_context():
            redis = services.of(app).redis
            try:
                delivery.record(db.session, results, settings, redis)
            finally:
                db.session.remove()
            # Targets that ran into the timeout, and transforms that ran into the render bound,
            # hold threads for long: their next deliveries go to the slow lane.
            timed_out = {
                p.webhook_id for p, r in results if delivery.timed_out(r) or outgoing.overran(p)
            }
            if timed_out:
                queueing.safe("mark slow targets", _mark_slow, redis, settings, timed_out)

    return record
