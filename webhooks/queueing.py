"""Handing deliveries to RQ: Redis is only the transport, the database stays the truth."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job, JobStatus

from webhooks import logthrottle

log = logging.getLogger(__name__)
logthrottle.install(__name__, "Redis unavailable")  # once per outage, not once per publish

DELIVER_JOB = "jobs.deliver.deliver"
# Set once by the scheduler; when it is gone, Redis lost its data (logged: the database still
# holds every delivery, and the scheduler's scan wakes the workers for them).
SENTINEL_KEY = "webhooks:sentinel"
# A wake-up claims for a few seconds at most (then queues the next); this bounds a job that
# waits for free threads behind POSTs that run into their timeout.
WAKE_JOB_TIMEOUT = 600


def _wake_key(queue_name: str) -> str:
    return f"webhooks:wake:{queue_name}"


def wake(redis: Redis, queue_name: str, *, hold: float = 30.0, force: bool = False) -> bool:
    """Make sure a wake-up job waits on `queue_name`: the workers claim due deliveries from
    the database, so a job carries no ids, and a burst of publishes costs one job. A flag
    says one is queued (cleared by the worker that takes it, `woken`); it lapses after `hold`
    seconds, so a lost job is replaced. `force` queues one even when the flag is up. True
    when a job was queued. Raises RedisError."""
    key, seconds = _wake_key(queue_name), max(1, round(hold))
    if not redis.set(key, "1", nx=not force, ex=seconds) and not force:
        return False
    job = Queue.prepare_data(
        DELIVER_JOB, result_ttl=0, failure_ttl=7 * 24 * 3600, timeout=WAKE_JOB_TIMEOUT
    )
    Queue(queue_name, connection=redis).enqueue_many([job])
    return True


def wake_queued(redis: Redis, queue_name: str) -> bool:
    """A wake-up waits on `queue_name` (its flag is up: `wake` would queue none). Raises
    RedisError."""
    return bool(redis.exists(_wake_key(queue_name)))


def woken(redis: Redis, queue_name: str) -> None:
    """A worker has taken the wake-up: a publish from now on queues the next one."""
    redis.delete(_wake_key(queue_name))


# Webhooks whose target recently let an attempt run into the timeout, scored by when that
# stops counting: their deliveries go to the slow lane, so they cannot hold every worker.
SLOW_KEY = "webhooks:slow"
SLOW_SECONDS = 600


def slow_queue(queue_name: str) -> str:
    """The slow lane's queue, served by the `worker_slow` process."""
    return f"{queue_name}-slow"


def is_slow_queue(queue_name: str) -> bool:
    return queue_name.endswith("-slow")


def mark_slow(redis: Redis, webhook_id: str, *, seconds: float = SLOW_SECONDS) -> None:
    redis.zadd(SLOW_KEY, {webhook_id: time.time() + seconds})


def slow_webhooks(redis: Redis) -> set[str]:
    """The webhooks whose deliveries currently go to the slow lane."""
    now = time.time()
    with redis.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(SLOW_KEY, "-inf", now)
        pipe.zrangebyscore(SLOW_KEY, now, "+inf")
        _, members = pipe.execute()
    return {m.decode() for m in members}


_LIVE_STATUSES = {
    s.value for s in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)
}


def live_jobs(redis: Redis, ids: Iterable[str]) -> set[str]:
    """The job ids among `ids` that are still queued or running (notification and bulk jobs
    carry ids of their own and are queued again only once their job is gone)."""
    ids = list(ids)
    if not ids:
        return set()
    with redis.pipeline(transaction=False) as pipe:
        for jid in ids:
            pipe.hget(Job.key_for(jid), "status")
        statuses = pipe.execute()
    return {
        jid
        for jid, status in zip(ids, statuses, strict=True)
        if status is not None and status.decode() in _LIVE_STATUSES
    }


def sentinel_present(redis: Redis) -> bool:
    """False when Redis has lost its data since the sentinel was set; sets it again."""
    return not redis.set(SENTINEL_KEY, "1", nx=True)


def safe(action: str, fn: Callable[..., object], *args: Any, **kwargs: Any) -> bool:
    """Run a Redis call whose failure the reconciler repairs later; True when it worked."""
    try:
        fn(*args, **kwargs)
        return True
    except RedisError as exc:
        log.warning("%s: Redis unavailable (%s); the scheduler will queue it later", action, exc)
        return False
