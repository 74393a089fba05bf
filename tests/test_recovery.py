"""Nothing is lost: a worker killed mid-attempt, Redis flushed, Redis down during publish."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from app import create_app
from tests.conftest import wait_until
from tests.receivers import Reply
from webhooks import services


@pytest.fixture
def slow_config(config):  # type: ignore[no-untyped-def]
    config.update({"WEBHOOK_TIMEOUT_SECONDS": "3", "WEBHOOK_LEASE_MARGIN_SECONDS": "1"})
    return config


def test_worker_killed_mid_attempt_is_retried_and_recorded_as_lost(
    slow_config, api, webhook, receiver, processes
):
    receiver.answer(Reply(status=200, delay=2.5), 200)
    processes.start("scheduler")
    processes.start("worker")
    event = api.publish(data={"id": "inc_9"})
    delivery_id = api.delivery_of(event["id"])["id"]

    receiver.wait_for(1, timeout=30)
    processes.kill("worker")  # while the target is still answering
    killed_at = time.monotonic()
    processes.start("worker:2")

    done = wait_until(api.delivery_ended(delivery_id), 3 + 60)

    assert time.monotonic() - killed_at < 3 + 60
    assert done["status"] == "succeeded"
    lost, made = done["attempts"]
    assert lost["outcome"] == "lost" and "worker lost" in lost["error"]
    assert made["outcome"] == "success" and made["response"]["status_code"] == 200
    assert len(receiver.requests) == 2  # at most one extra POST, never zero


def test_flushed_redis_loses_no_delivery_and_sends_none_twice(
    app, api, webhook, receiver, processes
):
    receiver.answer(500, 200)
    first = api.publish(data={"id": "inc_1"})
    # The first one fails once and waits for its retry; the others are queued, not yet run.
    processes.start("worker")
    receiver.wait_for(1, timeout=30)
    first_delivery = api.delivery_of(first["id"])["id"]
    wait_until(lambda: api.delivery(first_delivery)["attempts"][0]["outcome"] == "failure", 10)
    processes.kill("worker")
    others = [api.publish("task.failed", {"id": f"task_{i}"})["id"] for i in range(5)]

    services.of(app).redis.flushdb()  # Redis loses everything
    flushed_at = time.monotonic()
    processes.start("scheduler")
    processes.start("worker")

    receiver.wait_for(1 + 1 + 5, timeout=60)
    assert time.monotonic() - flushed_at < 60
    # Once every delivery has ended in the database, a duplicate job finds nothing to claim.
    wait_until(lambda: not api.deliveries(status="pending"), 30)
    by_event = Counter(r.headers["webhook-id"] for r in receiver.requests[1:])
    assert by_event == {first["id"]: 1, **{e: 1 for e in others}}


def test_publish_while_redis_is_down_answers_202_and_catches_up(
    app, config, api, webhook, receiver, service, tmp_path
):
    down = create_app({**config, "REDIS_URL": "redis://127.0.0.1:1/0"})
    down_api = type(api)(down.test_client(), api.key)

    response = down_api.post("/events", {"type": "incident.created", "data": {"id": "inc_7"}})

    assert response.status_code == 202 and response.json["delivery_count"] == 1
    deliveries = api.get(f"/events/{response.json['id']}").json["deliveries"]
    assert deliveries[0]["status"] == "pending"
    service.run_until(
        lambda: receiver.requests, timeout=10
    )  # Redis is back: the scheduler sends it
    assert receiver.requests[0].headers["webhook-id"] == response.json["id"]


def test_worker_killed_between_the_post_and_the_record_posts_again_at_most_once(
    slow_config, api, webhook, receiver, processes
):
    processes.start("scheduler")
    worker = processes.start("worker")
    # The receiver answers 200, then kills the worker before it can record the answer.
    receiver.answer(Reply(status=200, after=lambda: worker.send_signal(signal.SIGKILL)), 200)
    event = api.publish(data={"id": "inc_5"})
    delivery_id = api.delivery_of(event["id"])["id"]

    receiver.wait_for(1, timeout=30)
    worker.wait(timeout=10)
    processes.running.pop("worker")
    processes.start("worker:2")

    done = wait_until(api.delivery_ended(delivery_id), 3 + 60)

    assert done["status"] == "succeeded"
    assert 1 <= len(receiver.requests) <= 2  # never zero, at most one extra
    assert {r.headers["webhook-id"] for r in receiver.requests} == {event["id"]}
