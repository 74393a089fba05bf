"""Several workers on one database: every attempt made once, no deadlock, nothing lost."""

from __future__ import annotations

import time
from collections import Counter

from tests.test_recovery import Processes, wait_until


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
