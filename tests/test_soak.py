"""A soak under chaos: workers killed and Redis flushed at random while events pour in.

Every (event, webhook) pair must end succeeded or failed with the right attempts, none lost,
and a healthy target sees a POST again only for an attempt a killed worker had claimed and not
yet recorded (one per POST slot of that worker at most), each one shown in the log as a lost
attempt.
"""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest

from tests.conftest import wait_until
from webhooks import services

EVENTS = 600
SCHEDULE = "0,0.5,0.5"
THREADS = 8


@pytest.fixture
def soak_config(config):  # type: ignore[no-untyped-def]
    config.update(
        {
            "WEBHOOK_RETRY_SCHEDULE": SCHEDULE,
            "WEBHOOK_TIMEOUT_SECONDS": "2",
            # Long enough that a result waiting to be written on a busy machine is not taken
            # for a lost one (which would also be POSTed again), short enough to recover fast.
            "WEBHOOK_LEASE_MARGIN_SECONDS": "3",
            "WEBHOOK_WORKER_THREADS": str(THREADS),
            "WEBHOOK_API_RATE_LIMIT": "100000 per minute",
        }
    )
    return config


def test_soak_with_killed_workers_and_flushed_redis(
    soak_config, app, api, receiver, receivers, processes
):
    broken = receivers(500)
    healthy = [api.create_webhook(receiver.url(f"/ok{i}"), name=f"ok{i}") for i in range(2)]
    failing = api.create_webhook(broken.url(), name="down", events=["task.*"])

    kills = publish_through_chaos(app, api, processes)

    task_events = len(range(0, EVENTS, 3))
    deliveries = all_deliveries(api)
    assert len(deliveries) == EVENTS * len(healthy) + task_events  # none lost
    by_hook = Counter((d["webhook_id"], d["status"]) for d in deliveries)
    for hook in healthy:
        assert by_hook[(hook["id"], "succeeded")] == EVENTS, not_succeeded(api, deliveries, hook)
    assert by_hook[(failing["id"], "failed")] == task_events
    sample = [d for d in deliveries if d["webhook_id"] == failing["id"]][:20]
    for d in sample:
        attempts = api.delivery(d["id"])["attempts"]
        assert sum(a["outcome"] == "failure" for a in attempts) == len(SCHEDULE.split(","))
    posts = Counter(r.headers["X-CloudThinker-Delivery"] for r in receiver.requests)
    assert len(posts) == EVENTS * len(healthy)
    each_post_again_was_a_lost_attempt(api, posts, kills)
    assert kills >= 1


def publish_through_chaos(app, api, processes) -> int:  # type: ignore[no-untyped-def]
    """Publish EVENTS events while, every second or two, a worker is killed (and a new one
    started) or Redis is flushed, until no delivery is pending; how many workers were killed."""
    kills = 0
    stop = threading.Event()
    rng = random.Random(7)

    def chaos() -> None:
        nonlocal kills
        generation = 2
        while not stop.wait(rng.uniform(1.0, 2.5)):
            if rng.random() < 0.6:
                victim = rng.choice([n for n in processes.running if n.startswith("worker")])
                processes.kill(victim)
                kills += 1
                processes.start(f"worker:{generation}")
                generation += 1
            else:
                services.of(app).redis.flushdb()

    try:
        processes.start("worker:0")
        processes.start("worker:1")
        processes.start("scheduler")
        monkey = threading.Thread(target=chaos, daemon=True)
        monkey.start()
        for i in range(EVENTS):
            api.publish("task.failed" if i % 3 == 0 else "incident.updated", {"n": i})
        wait_until(lambda: not api.get("/deliveries?status=pending&limit=1").json["data"], 240)
        stop.set()
        monkey.join()
    finally:
        stop.set()
        processes.stop_all()
    return kills


def each_post_again_was_a_lost_attempt(api, posts: Counter, kills: int) -> None:  # type: ignore[no-untyped-def]
    """A delivery POSTed more than once lost that many attempts to killed workers: at most one
    per POST slot of each."""
    duplicates = sum(n - 1 for n in posts.values())
    assert duplicates <= kills * THREADS, (duplicates, kills)
    for delivery_id, n in posts.items():
        if n > 1:
            attempts = api.delivery(delivery_id)["attempts"]
            assert sum(a["outcome"] == "lost" for a in attempts) >= n - 1, attempts


def not_succeeded(api, deliveries: list[dict], hook: dict) -> list[dict]:  # type: ignore[no-untyped-def]
    """What a healthy webhook's deliveries that did not succeed show: their attempts."""
    return [
        api.delivery(d["id"])
        for d in deliveries
        if d["webhook_id"] == hook["id"] and d["status"] != "succeeded"
    ]


def all_deliveries(api) -> list[dict]:  # type: ignore[no-untyped-def]
    rows, cursor = [], None
    while True:
        page = api.get(f"/deliveries?limit=100{f'&cursor={cursor}' if cursor else ''}").json
        rows += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            return rows
