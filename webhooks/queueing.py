"""Handing deliveries to RQ: Redis is only the transport, the database stays the truth."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job, JobStatus

from webhooks import logthrottle

log = logging.getLogger(__name__)
logthrottle.install(__name__, "Redis unavailable")  # once per outage, not once per publish

DELIVER_JOB = "jobs.deliver.deliver"
# Set once by the scheduler; when it is gone, Redis lost its data and every due delivery
# is queued again at once rather than after the requeue delay.
SENTINEL_KEY = "webhooks:sentinel"
_LIVE_STATUSES = {
    s.value for s in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)
}


def job_id(delivery_id: str, attempt_count: int) -> str:
    """One job id per delivery and attempt, so that a queued job is never queued twice."""
    return f"{delivery_id}-{attempt_count}"


def enqueue(
    redis: Redis, queue_name: str, items: Sequence[tuple[str, int]], *, timeout: float
) -> None:
    """Queue a job for each (delivery id, attempt count); raises RedisError when Redis is down."""
    if not items:
        return
    queue = Queue(queue_name, connection=redis)
    jobs = [
        Queue.prepare_data(
            DELIVER_JOB,
            args=(delivery_id,),
            job_id=job_id(delivery_id, count),
            result_ttl=0,
            failure_ttl=7 * 24 * 3600,
            timeout=int(timeout) + 60,
        )
        for delivery_id, count in items
    ]
    with redis.pipeline() as pipe:
        queue.enqueue_many(jobs, pipeline=pipe)
        pipe.execute()


def live_jobs(redis: Redis, ids: Iterable[str]) -> set[str]:
    """The job ids among `ids` that are still queued or running."""
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


def safe(action: str, fn, *args, **kwargs) -> bool:  # type: ignore[no-untyped-def]
    """Run a Redis call whose failure the reconciler repairs later; True when it worked."""
    try:
        fn(*args, **kwargs)
        return True
    except RedisError as exc:
        log.warning("%s: Redis unavailable (%s); the scheduler will queue it later", action, exc)
        return False
