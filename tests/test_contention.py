"""Several workers on one database: every attempt made once, no deadlock, nothing lost."""

from __future__ import annotations

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
