"""Handing deliveries to RQ: Redis is only the transport, the database stays the truth."""

from __future__ import annotations

import logging
import time
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
# delivery id -> the id of the job that carries it, from enqueue until a worker takes the job.
QUEUED_KEY = "webhooks:queued"
_LIVE_STATUSES = {
    s.value for s in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)
}


def job_id(delivery_id: str, attempt_count: int) -> str:
    """One job id per delivery and attempt, so that a queued job is never queued twice."""
    return f"{delivery_id}-{attempt_count}"


# Webhooks whose target recently let an attempt run into the timeout, scored by when that
# stops counting: their deliveries go to the slow lane, so they cannot hold every worker.
SLOW_KEY = "webhooks:slow"
SLOW_SECONDS = 600


def slow_queue(queue_name: str) -> str:
    """The slow lane's queue, served by the `worker_slow` process."""
    return f"{queue_name}-slow"


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


def enqueue(
    redis: Redis,
    queue_name: str,
    items: Sequence[tuple[str, int] | tuple[str, int, str]],
    *,
    timeout: float,
    slow: set[str] | frozenset[str] = frozenset(),
    batch_size: int = 1,
) -> None:
    """Queue each (delivery id, attempt count[, webhook id]), in jobs of up to `batch_size`
    deliveries; a delivery of a slow webhook goes to the slow lane. Which job carries each
    delivery is written to `QUEUED_KEY`, so the reconciler can tell a queued delivery from a
    lost one. Raises RedisError when Redis is down."""
    if not items:
        return
    lanes: dict[str, list[tuple[str, int]]] = {}
    for item in items:
        lane = slow_queue(queue_name) if len(item) > 2 and item[2] in slow else queue_name
        lanes.setdefault(lane, []).append((item[0], item[1]))
    size = max(1, batch_size)
    with redis.pipeline() as pipe:
        for lane, pairs in lanes.items():
            jobs, carriers = [], {}
            for start in range(0, len(pairs), size):
                chunk = pairs[start : start + size]
                # Never the id of the job that may be passing these on right now: RQ would
                # delete the new job when it cleans up the running one.
                jid = ("s-" if lane != queue_name else "") + (
                    job_id(*chunk[0]) if len(chunk) == 1 else "b-" + job_id(*chunk[0])
                )
                carriers.update({delivery_id: jid for delivery_id, _ in chunk})
                jobs.append(
                    Queue.prepare_data(
                        DELIVER_JOB,
                        args=tuple(delivery_id for delivery_id, _ in chunk),
                        job_id=jid,
                        result_ttl=0,
                        failure_ttl=7 * 24 * 3600,
                        timeout=int(timeout) * 2 + 60,
                    )
                )
            pipe.hset(QUEUED_KEY, mapping=carriers)
            Queue(lane, connection=redis).enqueue_many(jobs, pipeline=pipe)
        pipe.execute()


def taken(redis: Redis, delivery_ids: Sequence[str]) -> None:
    """A job has started on these deliveries: from now on their claims (leases) protect them."""
    if delivery_ids:
        redis.hdel(QUEUED_KEY, *delivery_ids)


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


def queued(redis: Redis, pairs: Sequence[tuple[str, int]]) -> set[str]:
    """The delivery ids among (delivery id, attempt count) whose job is still queued or running."""
    if not pairs:
        return set()
    carriers = redis.hmget(QUEUED_KEY, [d for d, _ in pairs])
    jobs = {
        d: (c.decode() if c is not None else job_id(d, n))
        for (d, n), c in zip(pairs, carriers, strict=True)
    }
    live = live_jobs(redis, set(jobs.values()))
    gone = [d for (d, _), c in zip(pairs, carriers, strict=True) if c and jobs[d] not in live]
    if gone:  # their job vanished (Redis lost it, or RQ failed it): forget the carrier
        redis.hdel(QUEUED_KEY, *gone)
    return {d for d, jid in jobs.items() if jid in live}


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
