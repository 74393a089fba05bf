"""The worker process: an RQ SimpleWorker inside one app context.

RQ's default worker forks a child per job, which re-imports and reconnects every time
(about 450 ms a job here); SimpleWorker runs jobs in the process that already holds the
app, its database pool and its HTTP connections (about 13 ms a job).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker

from jobs import runtime
from webhooks import logthrottle, queueing, services

log = logging.getLogger(__name__)


class DeliveryWorker(SimpleWorker):
    # RQ backs off up to 60 s between reconnection tries; deliveries must resume within
    # seconds of Redis coming back, so the wait is capped at 5 s.
    max_connection_wait_time = 5.0

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """Work as RQ does; before returning (burst done, or stopped), let the POSTs still
        in flight end and be recorded."""
        try:
            return super().work(*args, **kwargs)
        finally:
            runtime.wait_idle()


# Job bookkeeping that fails because Redis lost the job while it ran (the database still
# holds the delivery's state, so nothing is lost).
_LOST_JOB = ("InvalidJobOperation", "NoSuchJobError")


def _no_redis_tracebacks(record: logging.LogRecord) -> bool:
    """RQ logs a full traceback when Redis fails mid-job; the outage line says enough."""
    if record.exc_info and isinstance(record.exc_info[1], RedisError):
        return False
    text = record.getMessage()
    if "Traceback" in text and any(name in text for name in _LOST_JOB):
        record.msg, record.args, record.exc_info = (
            "a job's record vanished from Redis while it ran (Redis lost its data); "
            "its delivery is safe in the database",
            (),
            None,
        )
    return True


LANES = ("normal", "slow", "all")


def make_worker(app: Flask, lane: str = "all") -> SimpleWorker:
    """A worker for the normal lane, the slow lane (targets that ran into the timeout), or
    both (normal first)."""
    redis = services.of(app).redis
    name = app.config["WEBHOOK_QUEUE"]
    names = {"normal": [name], "slow": [queueing.slow_queue(name)]}.get(
        lane, [name, queueing.slow_queue(name)]
    )
    return DeliveryWorker([Queue(n, connection=redis) for n in names], connection=redis)


def drain(app: Flask, lane: str = "all") -> None:
    """Work in burst mode until the lane's queues stay empty: results recorded after the last
    job can queue more work (a notification, say), which this also runs."""
    while True:
        worker = make_worker(app, lane)
        worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
        if not any(queue.count for queue in worker.queues):
            return


def run(app: Flask, *, burst: bool = False, lane: str = "all") -> None:
    """Work until stopped; when Redis goes away mid-job, wait for it and start again."""
    # An outage is logged once (then every 5 minutes while it lasts), not on every retry.
    logthrottle.install("rq.worker", "could not connect to Redis")
    logthrottle.install(__name__, "lost Redis")
    logging.getLogger("rq.worker").addFilter(_no_redis_tracebacks)
    wait = 0.5
    with app.app_context():
        while True:
            try:
                if burst:
                    drain(app, lane)
                else:
                    make_worker(app, lane).work(with_scheduler=False, logging_level="WARNING")
                return
            except RedisError as exc:
                # RQ gives up when Redis fails outside its dequeue loop (while finishing
                # a job, say); the database still holds the truth, so just start again.
                log.warning("lost Redis (%s); the worker starts again once it answers", exc)
                time.sleep(wait)
                wait = min(wait * 2, DeliveryWorker.max_connection_wait_time)
