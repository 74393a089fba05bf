"""Several workers on one database: every attempt made once, no deadlock, nothing lost."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from rq import Queue
from sqlalchemy import select

from jobs import scheduler
from tests.conftest import wait_until
from tests.processes import Processes
from webhooks import queueing, reconciler, services, sqlite
from webhooks.config import Settings
from webhooks.models import Delivery, db


def test_three_workers_never_make_the_same_attempt_twice(app, config, api, receiver, tmp_path):
    # A loaded machine may keep an answer past the tests' 2 s timeout, and a timed-out attempt
    # is rightly made again: the timeout here is long enough that every POST is a claim's.
    config.update({"WEBHOOK_TIMEOUT_SECONDS": "20"})
    hooks = [api.create_webhook(receiver.url(f"/h{i}"), name=f"Hook {i}") for i in range(3)]
    processes = Processes(config, tmp_path / "instance")
    try:
        for n in range(3):
            processes.start(f"worker:{n}")
        processes.start("scheduler")
        events = [api.publish("task.completed", {"n": i}) for i in range(60)]
        expected = len(events) * len(hooks)

        receiver.wait_for(expected, timeout=90)
        wait_until(lambda: not api.deliveries(status="pending"), 30)
    finally:
        processes.stop_all()

    per_delivery = Counter(r.headers["X-CloudThinker-Delivery"] for r in receiver.requests)
    assert len(per_delivery) == expected and set(per_delivery.values()) == {1}
    assert not api.deliveries(status="failed")
    sample = api.delivery(next(iter(per_delivery)))
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
            lambda: services.of(app).redis.zscore("webhooks:slow", _hook_id(api, "Dead")), 10
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


def test_a_burst_of_publishes_wakes_the_workers_with_one_job(app, api, receiver, service):
    for i in range(5):
        api.create_webhook(receiver.url(f"/h{i}"), name=f"H{i}")
    redis = services.of(app).redis
    queue = Queue(app.config["WEBHOOK_QUEUE"], connection=redis)

    events = [api.publish("task.completed", {"n": n}) for n in range(20)]

    assert all(e["delivery_count"] == 5 for e in events)
    (job,) = queue.get_jobs()  # a wake-up: the workers claim the 100 deliveries themselves
    assert job.args == ()
    receiver.wait_for(0)
    service.run_until(lambda: len(receiver.requests) == 100)
    service.run_until(lambda: not api.deliveries(status="pending"))
    assert Counter(r.path for r in receiver.requests) == {f"/h{i}": 20 for i in range(5)}
    assert len({r.headers["X-CloudThinker-Delivery"] for r in receiver.requests}) == 100
    assert all(r.headers["webhook-signature"].startswith("v1,") for r in receiver.requests)


def test_the_scheduler_replaces_a_lost_wake_up_and_only_then(app, api, receiver, service):
    for i in range(3):
        api.create_webhook(receiver.url(f"/h{i}"), name=f"H{i}")
    redis = services.of(app).redis
    queue = Queue(app.config["WEBHOOK_QUEUE"], connection=redis)
    api.post("/events", {"type": "task.completed", "data": {"n": 1}})
    with app.app_context():
        settings = Settings.from_config(app.config)
        # A wake-up waits for the 3 due deliveries: the database is not even asked.
        assert reconciler.queue_due(db.session, redis, settings) == 0
        assert len(queue.get_jobs()) == 1
        redis.flushdb()  # Redis lost the wake-up (and everything else)
        assert reconciler.queue_due(db.session, redis, settings) == 3
        assert len(queue.get_jobs()) == 1
    service.run_until(lambda: len(receiver.requests) == 3)


def test_a_hanging_target_holds_at_most_a_quarter_of_a_workers_threads(
    app, config, api, receiver, tls_context, tmp_path
):
    from tests.receivers import Receiver, Reply

    config.update({"WEBHOOK_WORKER_THREADS": "8", "WEBHOOK_SLOW_AFTER_SECONDS": "0.5"})
    hanging = Receiver(tls=tls_context)
    hanging.answer(Reply(status=200, delay=5))  # longer than the 2 s timeout, every time
    api.post("/webhooks", {"name": "Dead", "url": hanging.url("/dead"), "events": ["task.*"]})
    api.post("/webhooks", {"name": "Fine", "url": receiver.url("/fine"), "events": ["incident.*"]})
    redis = services.of(app).redis
    dead = _hook_id(api, "Dead")
    processes = Processes(config, tmp_path / "instance")
    try:
        processes.start("worker", "--lane", "normal")  # no slow-lane worker: the rest stay due
        for n in range(6):
            api.post("/events", {"type": "task.failed", "data": {"n": n}})
        hanging.wait_for(2, timeout=30)

        published = time.monotonic()
        api.post("/events", {"type": "incident.created", "data": {"n": 1}})
        receiver.wait_for(1, timeout=10)
        waited = time.monotonic() - published
        wait_until(lambda: redis.zscore(queueing.SLOW_KEY, dead), 10)
        # Two POSTs hang (a quarter of the eight threads); the other four deliveries were not
        # claimed at all: no lease, no thread, due for the slow lane.
        with app.app_context():
            waiting = db.session.execute(
                select(Delivery.lease_token).where(
                    Delivery.webhook_id == dead, Delivery.attempt_count == 0
                )
            ).all()
    finally:
        processes.stop_all()
        hanging.close()

    assert waited < 1.5, f"a healthy delivery waited {waited:.1f} s behind a hanging target"
    assert len(hanging.requests) == 2
    assert len(waiting) == 4 and all(token is None for (token,) in waiting)


def test_the_apps_sqlite_connections_use_wal_foreign_keys_and_immediate_writes(app):
    with app.app_context():
        engine = db.engine
    if engine.dialect.name != "sqlite":
        return  # PostgreSQL needs none of this
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        # The transaction began with BEGIN IMMEDIATE behind the lock file: this connection
        # holds the write lock until it ends.
        raw = conn.connection.dbapi_connection
        assert raw.in_transaction and raw._held
    assert not raw._held


def test_the_scheduler_copies_sqlites_log_back_so_that_no_commit_has_to(app, api):
    """SQLite copies its write-ahead log into the database in the commit that crosses a
    threshold, fsync included, holding the write lock; the scheduler does it instead, twice
    a second, and the threshold is only the backstop for when no scheduler runs."""
    with app.app_context():
        engine = db.engine
    if engine.dialect.name != "sqlite":
        return  # PostgreSQL needs none of this
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == (
            sqlite.AUTOCHECKPOINT_PAGES
        )
    database = Path(engine.url.database or "")
    assert sqlite.checkpoint(engine) is not None  # the log copied: the file is up to date
    before = database.stat().st_mtime_ns
    api.create_webhook("https://example.com/hook")
    for _ in range(5):
        api.publish()
    assert database.stat().st_mtime_ns == before  # the commits wrote to the log alone

    scheduler.run(app, stop_after=0.3)

    assert database.stat().st_mtime_ns != before
    busy, logged, copied = sqlite.checkpoint(engine) or (1, 0, 0)
    assert busy == 0 and copied == logged


def test_a_slow_targets_surplus_is_parked_out_of_the_normal_lanes_way(app, api, receiver):
    """The normal lane walks the due deliveries in order: a dead target's backlog, left due,
    is walked past on every claim. The scan keeps as many of them due as the slow lane has
    threads and parks the rest; a leased one and other targets' deliveries stay as they are,
    and nothing ends."""
    config = app.config
    threads = config["WEBHOOK_WORKER_THREADS"]
    dead = api.create_webhook(receiver.url("/dead"), name="Dead")
    fine = api.create_webhook(receiver.url("/fine"), name="Fine")
    for n in range(threads + 5):
        api.publish("task.completed", {"n": n})
    redis = services.of(app).redis
    queueing.mark_slow(redis, dead["id"])
    with app.app_context():
        settings = Settings.from_config(app.config)
        leased = db.session.scalars(
            select(Delivery).where(Delivery.webhook_id == dead["id"]).order_by(Delivery.id)
        ).all()[-1]
        leased.lease_token = "a-worker"
        db.session.commit()

        reconciler.queue_due(db.session, redis, settings)

        rows = db.session.execute(
            select(Delivery.webhook_id, Delivery.next_attempt_at, Delivery.status, Delivery.id)
        ).all()
        now = reconciler.utcnow()
        dead_due = [r for r in rows if r.webhook_id == dead["id"] and r.next_attempt_at <= now]
        parked = [r for r in rows if r.next_attempt_at > now]
        assert len(dead_due) == threads + 1  # the slow lane's share, and the leased one
        assert len(parked) == 4 and {r.webhook_id for r in parked} == {dead["id"]}
        assert all(r.id != leased.id for r in parked)
        later = now + timedelta(seconds=reconciler.park_seconds(settings))
        assert all(later - timedelta(seconds=2) < r.next_attempt_at <= later for r in parked)
        assert all(r.next_attempt_at <= now for r in rows if r.webhook_id == fine["id"])
        assert {r.status for r in rows} == {"pending"}
