"""Flow control (API.md section 8): ordering keys and rate limits, as a receiver sees them."""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from tests.conftest import wait_until
from tests.processes import Processes
from tests.receivers import Received, Reply
from webhooks import flow
from webhooks.models import Delivery, db

_paths = itertools.count()


@pytest.fixture
def config(config):  # type: ignore[no-untyped-def]
    """Retries within a second: lines with failing heads run their course quickly."""
    config["WEBHOOK_RETRY_SCHEDULE"] = "0,0.2,0.2,0.2"
    return config


def hook(api, receiver, *, name="Flow", **flow_fields: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A webhook on a path of its own, with flow settings as the API takes them."""
    path = f"/flow{next(_paths)}"
    return {**api.create_webhook(receiver.url(path), name=name, **flow_fields), "path": path}


def publish(api, key: str, n: int = 0, event_type: str = "incident.created") -> str:  # type: ignore[no-untyped-def]
    """Publish the `n`-th event of incident `key`; its id."""
    return api.publish(event_type, {"incident_id": key, "n": n})["id"]


def delivery_ids(app, event_ids: list[str], webhook_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    with app.app_context():
        rows = dict(
            db.session.execute(
                select(Delivery.event_id, Delivery.id).where(
                    Delivery.event_id.in_(event_ids), Delivery.webhook_id == webhook_id
                )
            ).all()
        )
        db.session.remove()
    return [rows[e] for e in event_ids]


def row(app, delivery_id: str) -> Delivery:  # type: ignore[no-untyped-def]
    with app.app_context():
        found = db.session.get(Delivery, delivery_id)
        assert found is not None
        db.session.expunge(found)
        db.session.remove()
        return found


def arrivals(receiver, path: str) -> list[Received]:  # type: ignore[no-untyped-def]
    return [r for r in list(receiver.requests) if r.path == path]


def delivery_header(received: Received) -> str:
    return received.headers["X-CloudThinker-Delivery"]


def in_publish_order(sequence: list[str], order: list[str]) -> bool:
    """The attempts of each delivery come in one run, the runs in publish order."""
    runs = [d for d, _ in itertools.groupby(sequence)]
    return runs == [d for d in order if d in runs] and len(runs) == len(set(runs))


# --------------------------------------------------------------------------- ordering


def test_a_failing_trigger_is_retried_before_its_resolve_goes(app, api, receiver, service):
    """The PagerDuty case: the resolve never overtakes the trigger whose first attempt failed,
    while another incident's events go on meanwhile."""
    target = hook(api, receiver, ordering_key="{{ data.incident_id }}")
    failed_once: set[str] = set()

    def answer(received: Received) -> Reply:
        body = received.json()
        if body["type"] == "incident.created" and body["data"]["incident_id"] == "A":
            if "A" not in failed_once:
                failed_once.add("A")
                return Reply(503)
        return Reply(200)

    receiver.router = answer
    trigger = publish(api, "A", event_type="incident.created")
    resolve = publish(api, "A", event_type="incident.resolved")
    other = publish(api, "B", event_type="incident.created")
    trigger_id, resolve_id, other_id = delivery_ids(app, [trigger, resolve, other], target["id"])

    waiting = row(app, resolve_id)
    assert waiting.waiting == flow.ORDER and waiting.waiting_for == trigger_id
    assert row(app, other_id).waiting is None

    service.run_until(lambda: len(arrivals(receiver, target["path"])) >= 4, timeout=30)
    sequence = [delivery_header(r) for r in arrivals(receiver, target["path"])]
    assert [d for d in sequence if d != other_id] == [trigger_id, trigger_id, resolve_id]
    # B went before A's retry: other keys are not held back.
    assert sequence.index(other_id) < 2
    wait_until(lambda: row(app, resolve_id).status == "succeeded", 10)
    assert row(app, resolve_id).waiting_for is None


def test_the_next_goes_once_an_exhausted_head_has_failed(app, config, api, receiver, service):
    target = hook(api, receiver, ordering_key="all")
    receiver.router = lambda r: Reply(500 if r.json()["data"]["n"] == 0 else 200)
    events = [publish(api, "x", n) for n in range(3)]
    head, second, third = delivery_ids(app, events, target["id"])
    assert row(app, third).waiting_for == second

    service.run_until(lambda: row(app, third).status == "succeeded", timeout=60)
    sequence = [delivery_header(r) for r in arrivals(receiver, target["path"])]
    attempts = len(config["WEBHOOK_RETRY_SCHEDULE"].split(","))
    assert sequence == [head] * attempts + [second, third]
    assert row(app, head).status == "failed"


def test_two_keys_interleaved_each_keep_their_order(app, api, receiver, service):
    target = hook(api, receiver, ordering_key="{{ data.incident_id }}")
    # Every other attempt fails, so retries interleave with the other key's deliveries.
    seen: list[int] = []

    def answer(received: Received) -> Reply:
        seen.append(1)
        return Reply(503 if len(seen) % 2 else 200)

    receiver.router = answer
    events = [publish(api, key, n) for n in range(3) for key in ("A", "B")]
    ids = delivery_ids(app, events, target["id"])
    service.run_until(lambda: all(row(app, d).status != "pending" for d in ids), timeout=60)
    by_key = {"A": ids[0::2], "B": ids[1::2]}
    sequence = [delivery_header(r) for r in arrivals(receiver, target["path"])]
    for key, order in by_key.items():
        mine = [d for d in sequence if d in order]
        assert in_publish_order(mine, order), (key, mine, order)
        assert set(mine) == set(order)


def test_a_test_event_is_outside_the_order(app, api, receiver, service):
    target = hook(api, receiver, ordering_key="all")
    # The line is held by a head that keeps failing; a test event goes at once all the same.
    receiver.router = lambda r: Reply(503 if "n" in r.json()["data"] else 200)
    head, second = (publish(api, "x", n) for n in range(2))
    head_id, second_id = delivery_ids(app, [head, second], target["id"])
    sent = api.post(f"/webhooks/{target['id']}/test", {"type": "incident.created"})
    assert sent.status_code == 202, sent.json
    test_id = sent.json["delivery_id"]
    service.run_until(lambda: row(app, test_id).status == "succeeded", timeout=20)
    assert row(app, test_id).order_key is None
    assert row(app, head_id).status == "pending"
    assert row(app, second_id).waiting_for == head_id


def test_the_scheduler_frees_a_delivery_whose_earlier_one_ended_unnoticed(
    app, api, receiver, service
):
    target = hook(api, receiver, ordering_key="all")
    receiver.router = lambda r: Reply(503)
    first, second = (publish(api, "x", n) for n in range(2))
    first_id, second_id = delivery_ids(app, [first, second], target["id"])
    # The earlier one ends by a path that does not release its line (a crash between the two).
    with app.app_context():
        db.session.execute(
            update(Delivery)
            .where(Delivery.id == first_id)
            .values(status="failed", next_attempt_at=None, lease_token=None)
        )
        db.session.commit()
        db.session.remove()
    receiver.router = lambda r: Reply(200)
    service.run_until(lambda: row(app, second_id).status == "succeeded", timeout=20)


@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    keys=st.lists(st.sampled_from("abc"), min_size=1, max_size=8),
    failures=st.lists(st.booleans(), min_size=1, max_size=12),
)
def test_every_line_goes_in_publish_order_whatever_fails(
    app, api, receiver, service, keys, failures
):
    """Property: for any publish sequence over a few keys and any pattern of failing attempts,
    each key's deliveries reach the receiver one at a time, in publish order: every attempt of
    one delivery before the first of the next."""
    target = hook(api, receiver, ordering_key="{{ data.incident_id }}")
    script = iter(failures)
    receiver.router = lambda r: Reply(503 if next(script, False) else 200)
    events = [publish(api, key, n) for n, key in enumerate(keys)]
    ids = delivery_ids(app, events, target["id"])
    service.run_until(lambda: all(row(app, d).status != "pending" for d in ids), timeout=90)
    sequence = [delivery_header(r) for r in arrivals(receiver, target["path"])]
    for key in set(keys):
        order = [d for d, k in zip(ids, keys, strict=True) if k == key]
        mine = [d for d in sequence if d in order]
        assert set(mine) == set(order)
        assert in_publish_order(mine, order), (key, mine, order)


# --------------------------------------------------------------------------- rate limits


def window_violations(times: list[float], rate: float) -> list[tuple[int, float]]:
    """(starts, window) pairs over API.md's bound: in any window of T seconds at most
    ceil(rate × T) + max(1, ceil(rate)) attempts start."""
    times = sorted(times)
    size = max(1, math.ceil(rate))
    over = []
    for i, first in enumerate(times):
        for j in range(i, len(times)):
            window = times[j] - first
            if j - i + 1 > math.ceil(rate * window - 1e-9) + size:
                over.append((j - i + 1, window))
    return over


def test_the_window_bound_check_can_fail():
    assert window_violations([0.0, 0.5, 1.0], 1) == [(3, 1.0)]
    assert window_violations([0.0, 1.0, 2.0, 2.0], 1) == [(4, 2.0), (3, 1.0), (2, 0.0)]
    assert not window_violations([0.0, 0.0, 0.5, 1.0, 1.5], 2)


def test_a_limited_webhook_holds_no_one_back(app, api, receiver, service):
    limited = hook(api, receiver, rate_limit=1, name="Limited")
    free = hook(api, receiver, name="Free")
    started = time.time()
    for n in range(10):
        publish(api, "x", n)
    service.run_until(lambda: len(arrivals(receiver, free["path"])) == 10, timeout=20)
    assert max(r.at for r in arrivals(receiver, free["path"])) - started < 5
    # Meanwhile the limited webhook's deliveries wait unclaimed: no lease, no thread.
    with app.app_context():
        pending = db.session.execute(
            select(Delivery.waiting, Delivery.lease_token, Delivery.attempt_count).where(
                Delivery.webhook_id == limited["id"], Delivery.status == "pending"
            )
        ).all()
        db.session.remove()
    waiting = [p for p in pending if p.waiting == flow.RATE_LIMIT]
    assert len(waiting) >= 5
    assert all(p.lease_token is None and p.attempt_count == 0 for p in waiting)
    sent = arrivals(receiver, limited["path"])
    assert len(sent) <= math.ceil(time.time() - started) + 1
    service.run_until(lambda: len(arrivals(receiver, limited["path"])) == 10, timeout=30)
    assert not window_violations([r.at for r in arrivals(receiver, limited["path"])], 1)


def test_a_changed_limit_applies_within_five_seconds(app, api, receiver, service):
    limited = hook(api, receiver, rate_limit=0.1)
    for n in range(8):
        publish(api, "x", n)
    service.run_until(lambda: arrivals(receiver, limited["path"]), timeout=10)
    service.run_until(lambda: waiting_of(app, limited["id"])[flow.RATE_LIMIT] == 7, timeout=10)
    changed = time.time()
    patched = api.patch(f"/webhooks/{limited['id']}", {"rate_limit": 100})
    assert patched.status_code == 200 and patched.json["rate_limit"] == 100
    service.run_until(lambda: len(arrivals(receiver, limited["path"])) == 8, timeout=10)
    assert max(r.at for r in arrivals(receiver, limited["path"])) - changed < 5


def waiting_of(app, webhook_id: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with app.app_context():
        try:
            return flow.waiting_counts(db.session, webhook_id)
        finally:
            db.session.remove()


@pytest.mark.parametrize("workers", [1, 3])
def test_the_window_bound_holds_at_the_receiver_for_any_burst(
    app, config, api, receiver, tmp_path, workers
):
    """Property: for random limits, bursts (in waves) and failing attempts (whose retries start
    too), with one or three worker processes, the attempt start times a real receiver observes
    never exceed the bound of API.md section 8."""
    config.update({"WEBHOOK_TIMEOUT_SECONDS": "20"})
    processes = Processes(config, tmp_path / "instance")
    for n in range(workers):
        processes.start(f"worker:{n}")
    processes.start("scheduler")

    @settings(
        max_examples=4,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        rate=st.sampled_from([1.0, 2.0, 2.5, 4.0]),
        waves=st.lists(st.integers(1, 5), min_size=1, max_size=3),
        gap=st.sampled_from([0.0, 0.3, 1.2]),
        failing=st.sets(st.integers(0, 9), max_size=3),
    )
    def example(rate, waves, gap, failing):  # type: ignore[no-untyped-def]
        target = hook(api, receiver, rate_limit=rate)
        receiver.router = _fail_first_attempt(failing)
        n = 0
        for size in waves:
            for _ in range(size):
                publish(api, "x", n)
                n += 1
            time.sleep(gap)  # the burst's shape: waves of publishes this far apart
        retried = len(failing & set(range(n)))
        expected = n + retried  # a failing event fails once: its retry succeeds
        wait_until(lambda: len(arrivals(receiver, target["path"])) >= expected, n / rate + 30)
        times = [r.at for r in arrivals(receiver, target["path"])]
        assert not window_violations(times, rate), (rate, waves, gap, sorted(times))
        api.delete(f"/webhooks/{target['id']}")

    try:
        example()
    finally:
        receiver.router = None
        processes.stop_all()


def _fail_first_attempt(failing: set[int]):  # type: ignore[no-untyped-def]
    seen: set[int] = set()

    def answer(received: Received) -> Reply:
        n = received.json()["data"]["n"]
        if n in failing and n not in seen:
            seen.add(n)
            return Reply(503)
        return Reply(200)

    return answer


def test_a_killed_worker_mid_attempt_keeps_the_line(app, config, api, receiver, tmp_path):
    """The worker making the head's attempt dies: the next of the line still waits until the
    head's lease has ended and its attempt is made again, and goes only once it has ended."""
    target = hook(api, receiver, ordering_key="all")
    hung: list[int] = []

    def answer(received: Received) -> Reply:
        if received.json()["data"]["n"] == 0 and not hung:
            hung.append(1)
            return Reply(delay=30)  # the worker is killed during this one
        return Reply(200)

    receiver.router = answer
    head, second = (publish(api, "x", n) for n in range(2))
    head_id, second_id = delivery_ids(app, [head, second], target["id"])
    processes = Processes(config, tmp_path / "instance")
    try:
        processes.start("worker:0")
        processes.start("scheduler")
        wait_until(lambda: arrivals(receiver, target["path"]), 30)
        processes.kill("worker:0")
        assert row(app, second_id).waiting_for == head_id
        processes.start("worker:1")
        wait_until(lambda: row(app, second_id).status == "succeeded", 60)
    finally:
        receiver.router = None
        processes.stop_all()
    sequence = [delivery_header(r) for r in arrivals(receiver, target["path"])]
    assert sequence == [head_id, head_id, second_id]
    attempts = api.get(f"/deliveries/{head_id}").json["attempts"]
    assert [a["number"] for a in attempts] == [1, 2] and "lost" in (attempts[0]["error"] or "")


def test_test_events_obey_the_limit_too(app, api, receiver, service):
    limited = hook(api, receiver, rate_limit=0.5)
    publish(api, "x", 0)
    service.run_until(lambda: arrivals(receiver, limited["path"]), timeout=10)
    sent = api.post(f"/webhooks/{limited['id']}/test", {"type": "incident.created"})
    test_id = sent.json["delivery_id"]
    service.run_until(lambda: row(app, test_id).waiting == flow.RATE_LIMIT, timeout=10)
    assert row(app, test_id).attempt_count == 0
    service.run_until(lambda: len(arrivals(receiver, limited["path"])) == 2, timeout=10)
    first, second = (r.at for r in arrivals(receiver, limited["path"]))
    assert second - first >= 1.5  # one start per 2 s
    assert row(app, test_id).waiting is None


# --------------------------------------------------------------------------- the API


@pytest.mark.parametrize("value", [0.01, 1, 2.5, 10_000, None])
def test_the_api_takes_rate_limits_in_bounds(api, receiver, value):
    created = hook(api, receiver, rate_limit=value)
    assert created["rate_limit"] == value
    assert api.get(f"/webhooks/{created['id']}").json["rate_limit"] == value


@pytest.mark.parametrize(
    "value", [0, 0.001, 10_001, -1, "abc", "5", True, "1e999", 10**400, [1], {"n": 1}]
)
def test_the_api_refuses_rate_limits_out_of_bounds(api, receiver, value):
    answer = api.post(
        "/webhooks", {"name": "x", "url": receiver.url(), "events": ["*"], "rate_limit": value}
    )
    assert answer.status_code == 400
    error = answer.json["error"]
    assert error["code"] == "invalid_rate_limit" and "rate_limit" in error["fields"]
    assert "per second" in error["message"]


def test_the_api_refuses_an_ordering_key_that_does_not_compile(api, receiver):
    answer = api.post(
        "/webhooks",
        {"name": "x", "url": receiver.url(), "events": ["*"], "ordering_key": "{{ data.id "},
    )
    assert answer.status_code == 400
    assert answer.json["error"]["code"] == "invalid_ordering_key"
    assert "does not compile" in answer.json["error"]["fields"]["ordering_key"]
    long = api.post(
        "/webhooks",
        {"name": "x", "url": receiver.url(), "events": ["*"], "ordering_key": "k" * 1001},
    )
    assert long.json["error"]["code"] == "invalid_ordering_key"


def test_patch_sets_and_clears_both_fields(api, receiver):
    created = hook(api, receiver)
    assert created["rate_limit"] is None and created["ordering_key"] is None
    patched = api.patch(
        f"/webhooks/{created['id']}", {"rate_limit": 5, "ordering_key": "{{ data.id }}"}
    ).json
    assert patched["rate_limit"] == 5 and patched["ordering_key"] == "{{ data.id }}"
    kept = api.patch(f"/webhooks/{created['id']}", {"name": "Renamed"}).json
    assert kept["rate_limit"] == 5 and kept["ordering_key"] == "{{ data.id }}"
    cleared = api.patch(f"/webhooks/{created['id']}", {"rate_limit": None, "ordering_key": ""}).json
    assert cleared["rate_limit"] is None and cleared["ordering_key"] is None


def test_the_slack_and_pagerduty_templates_fill_them(api, receiver):
    slack = api.create_webhook(receiver.url("/s"), name="s", template="slack")
    assert slack["rate_limit"] == 1 and slack["ordering_key"] is None
    pagerduty = api.create_webhook(
        receiver.url("/p"),
        name="p",
        template="pagerduty",
        template_params={"routing_key": "R0UT1NGKEY0123456789012345678901"},
    )
    assert pagerduty["rate_limit"] is None
    assert pagerduty["ordering_key"] == pagerduty["transform"]["dedup_key"]
    own = api.create_webhook(receiver.url("/o"), name="o", template="slack", rate_limit=0.5)
    assert own["rate_limit"] == 0.5


def test_a_waiting_delivery_shows_what_it_waits_for(app, api, receiver):
    target = hook(api, receiver, ordering_key="all")
    first, second = (publish(api, "x", n) for n in range(2))
    first_id, second_id = delivery_ids(app, [first, second], target["id"])
    shown = api.get(f"/deliveries/{second_id}").json
    assert shown["waiting"] == "order" and shown["waiting_for"] == first_id
    assert shown["next_attempt_at"] is None and shown["status"] == "pending"
    head = api.get(f"/deliveries/{first_id}").json
    assert head["waiting"] is None and head["waiting_for"] is None
    listed = {d["id"]: d for d in api.get(f"/deliveries?webhook_id={target['id']}").json["data"]}
    assert listed[second_id]["waiting_for"] == first_id
