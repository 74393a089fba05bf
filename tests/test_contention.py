"""Several workers on one database: every attempt made once, no deadlock, nothing lost."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

from rq import Queue
from sqlalchemy import update

from tests.test_recovery import Processes, wait_until
from webhooks import queueing, reconciler
from webhooks.config import Settings
from webhooks.models import Delivery, db, utcnow


def test_three_workers_never_make_the_same_attempt_twice(app, config, api, receiver, tmp_path):
    hooks = [
        api.post(
            "/webhooks", {"name": f"Hook {i}", "url": receiver.url(f"/h{i}"), "events": ["*"]}
        ).json
        for i in range(3)
    ]
    processes = Processes(config, tmp_path / "instance")
    try:
        for n in range(3):
            processes.start(f"worker:{n}")
        processes.start("scheduler")
        events = [
            api.post("/events", {"type": "task.completed", "data": {"n": i}}).json
            for i in range(60)
        ]
        expected = len(events) * len(hooks)

        receiver.wait_for(expected, timeout=90)
        wait_until(lambda: not api.get("/deliveries?status=pending").json["data"], 30)
    finally:
        processes.stop_all()

    per_delivery = Counter(r.headers["X-CloudThinker-Delivery"] for r in receiver.requests)
    assert len(per_delivery) == expected and set(per_delivery.values()) == {1}
    assert not api.get("/deliveries?status=failed").json["data"]
    sample = api.get(f"/deliveries/{next(iter(per_delivery))}").json
    assert sample["status"] == "succeeded" and [a["number"] for a in sample["attempts"]] == [1]


def test_a_hanging_target_holds_no_database_lock(app, config, api, receiver, tmp_path):
    from tests.receivers import Reply

    receiver.answer(Reply(status=200, delay=2.5), 200)
    api.post("/webhooks", {"name": "Slow", "url": receiver.url("/slow"), "events": ["task.*"]})
    processes = Processes(config, tmp_path / "instance")
    try:
        processes.start("worker")
        api.post("/events", {"type": "task.failed", "data": {"n": 1}})
        receiver.wait_for(1, timeout=30)  # the worker is now inside the POST

        started = time.monotonic()
        answer = api.post("/events", {"type": "task.completed", "data": {"n": 2}})
        took = time.monotonic() - started
    finally:
        processes.stop_all()

    assert answer.status_code == 202
    assert took < 1.0, f"publishing waited {took:.1f} s for a lock held during a POST"


def test_a_target_that_hangs_moves_to_the_slow_lane_and_starves_no_one(
    app, config, api, receiver, tls_context, tmp_path
):
    from tests.receivers import Receiver, Reply

    hanging = Receiver(tls=tls_context)
    hanging.answer(Reply(status=200, delay=5))  # longer than the 2 s timeout, every time
    api.post("/webhooks", {"name": "Dead", "url": hanging.url("/dead"), "events": ["task.*"]})
    api.post("/webhooks", {"name": "Fine", "url": receiver.url("/fine"), "events": ["task.*"]})
    processes = Processes(config, tmp_path / "instance")
    try:
        processes.start("worker", "--lane", "normal")  # one worker for healthy targets
        processes.start("worker:slow", "--lane", "slow")
        processes.start("scheduler")
        api.post("/events", {"type": "task.failed", "data": {"n": 0}})
        hanging.wait_for(1, timeout=30)
        receiver.wait_for(1, timeout=30)
        wait_until(
            lambda: app.extensions["redis"].zscore("webhooks:slow", _hook_id(api, "Dead")), 10
        )

        # The dead target is now in the slow lane: healthy deliveries keep flowing at once
        # even though each dead one would hold a worker for the whole timeout.
        for n in range(1, 6):
            published = time.monotonic()
            api.post("/events", {"type": "task.failed", "data": {"n": n}})
            receiver.wait_for(n + 1, timeout=10)
            assert time.monotonic() - published < 1.5, f"healthy delivery {n} waited"
    finally:
        processes.stop_all()
        hanging.close()


def _hook_id(api, name: str) -> str:  # type: ignore[no-untyped-def]
    return next(w["id"] for w in api.get("/webhooks").json["data"] if w["name"] == name)


def test_one_event_to_many_webhooks_travels_as_one_job(app, api, receiver, service):
    hooks = [
        api.post("/webhooks", {"name": f"H{i}", "url": receiver.url(f"/h{i}"), "events": ["*"]})
        for i in range(5)
    ]
    assert all(h.status_code == 201 for h in hooks)
    redis = app.extensions["redis"]
    queue = Queue(app.config["WEBHOOK_QUEUE"], connection=redis)

    event = api.post("/events", {"type": "task.completed", "data": {"n": 1}}).json

    assert event["delivery_count"] == 5
    (job,) = queue.get_jobs()
    assert len(job.args) == 5  # one job claims, sends and records all five
    assert {v.decode() for v in redis.hvals(queueing.QUEUED_KEY)} == {job.id}
    receiver.wait_for(0)
    service.run_until(lambda: len(receiver.requests) == 5)
    service.run_until(lambda: not api.get("/deliveries?status=pending").json["data"])
    paths = sorted(r.path for r in receiver.requests)
    assert paths == [f"/h{i}" for i in range(5)]
    assert len({r.headers["X-CloudThinker-Delivery"] for r in receiver.requests}) == 5
    assert all(r.headers["webhook-signature"].startswith("v1,") for r in receiver.requests)
    assert redis.hlen(queueing.QUEUED_KEY) == 0  # taken by the worker: leases protect them now


def test_the_reconciler_requeues_a_batch_only_once_its_job_is_gone(app, api, receiver):
    for i in range(3):
        api.post("/webhooks", {"name": f"H{i}", "url": receiver.url(f"/h{i}"), "events": ["*"]})
    redis = app.extensions["redis"]
    queue = Queue(app.config["WEBHOOK_QUEUE"], connection=redis)
    api.post("/events", {"type": "task.completed", "data": {"n": 1}})
    with app.app_context():
        # Queued long ago and still unclaimed (say the workers are all busy).
        db.session.execute(update(Delivery).values(enqueued_at=utcnow() - timedelta(hours=1)))
        db.session.commit()
        settings = Settings.from_config(app.config)

        assert reconciler.queue_due(db.session, redis, settings) == 0  # its job still waits
        (job,) = queue.get_jobs()
        job.delete()  # Redis lost it
        assert reconciler.queue_due(db.session, redis, settings) == 3

    (again,) = queue.get_jobs()
    assert len(again.args) == 3


def test_a_hanging_target_holds_at_most_a_quarter_of_a_workers_threads(
    app, config, api, receiver, tls_context, tmp_path
):
    from tests.receivers import Receiver, Reply

    config.update({"WEBHOOK_WORKER_THREADS": "8", "WEBHOOK_SLOW_AFTER_SECONDS": "0.5"})
    hanging = Receiver(tls=tls_context)
    hanging.answer(Reply(status=200, delay=5))  # longer than the 2 s timeout, every time
    api.post("/webhooks", {"name": "Dead", "url": hanging.url("/dead"), "events": ["task.*"]})
    api.post("/webhooks", {"name": "Fine", "url": receiver.url("/fine"), "events": ["incident.*"]})
    redis = app.extensions["redis"]
    slow_lane = Queue(queueing.slow_queue(app.config["WEBHOOK_QUEUE"]), connection=redis)
    processes = Processes(config, tmp_path / "instance")
    try:
        processes.start("worker", "--lane", "normal")  # no slow-lane worker: its jobs stay
        for n in range(6):
            api.post("/events", {"type": "task.failed", "data": {"n": n}})
        hanging.wait_for(2, timeout=30)
        # Two POSTs hang (a quarter of the eight threads); the other four deliveries were passed on
        # to the slow lane rather than wait for a thread.
        wait_until(lambda: sum(len(j.args) for j in slow_lane.get_jobs()) == 4, 10)

        published = time.monotonic()
        api.post("/events", {"type": "incident.created", "data": {"n": 1}})
        receiver.wait_for(1, timeout=10)
        waited = time.monotonic() - published
        dead = _hook_id(api, "Dead")
        wait_until(lambda: redis.zscore(queueing.SLOW_KEY, dead), 10)
    finally:
        processes.stop_all()
        hanging.close()

    assert waited < 1.5, f"a healthy delivery waited {waited:.1f} s behind a hanging target"
    assert len(hanging.requests) == 2
