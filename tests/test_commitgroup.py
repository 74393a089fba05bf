"""Publish calls that wait for SQLite's write lock at the same moment share one transaction."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from tests.conftest import wait_until
from webhooks import commitgroup, publishing
from webhooks.models import db

CALLS = 4


@pytest.fixture
def sqlite_path(app, postgres_url) -> str:  # type: ignore[no-untyped-def]
    if postgres_url:
        pytest.skip("publish calls queue for a write lock on SQLite only")
    return str(sa.engine.make_url(app.config["SQLALCHEMY_DATABASE_URI"]).database)


@contextmanager
def write_lock_held(path: str) -> Iterator[None]:
    """Hold the database's write-lock queue (`webhooks.sqlite`), as a long transaction of
    another process would."""
    fd = os.open(path + "-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def publish_together(app: Any, key: str, path: str, meanwhile: Any = None) -> list[Any]:
    """CALLS publish calls at once, each on its own connection, while the write lock is held
    until all of them wait for it; their answers."""
    answers: list[Any] = [None] * CALLS

    def call(i: int) -> None:
        answers[i] = app.test_client().post(
            "/api/v1/events",
            json={"type": "task.completed", "data": {"n": i}},
            headers={"Authorization": f"Bearer {key}"},
        )

    threads = [threading.Thread(target=call, args=(i,)) for i in range(CALLS)]
    with write_lock_held(path):
        for t in threads:
            t.start()
        wait_until(lambda: publishing._PUBLISHES.queued() == CALLS, 10, every=0.01)
        if meanwhile:
            meanwhile()
    for t in threads:
        t.join(10)
    return answers


def commits(app: Any) -> list[int]:
    counted = [0]
    with app.app_context():
        sa.event.listen(db.engine, "commit", lambda _conn: counted.__setitem__(0, counted[0] + 1))
    return counted


def test_calls_that_wait_together_are_written_in_one_commit(app, api, workspace, sqlite_path):
    hooks = [api.create_webhook(f"https://127.0.0.1:9999/{i}", name=f"H{i}") for i in range(2)]
    counted = commits(app)

    answers = publish_together(app, workspace["key"], sqlite_path)

    assert [a.status_code for a in answers] == [202] * CALLS
    assert counted[0] == 1  # one transaction for the four events and their eight deliveries
    for answer in answers:
        event = answer.get_json()
        assert event["delivery_count"] == len(hooks)
        stored = api.get(f"/events/{event['id']}").get_json()
        assert stored["data"] == event["data"]
        assert sorted(d["webhook_id"] for d in stored["deliveries"]) == sorted(
            h["id"] for h in hooks
        )


def test_a_webhook_deleted_while_they_wait_fails_no_call(app, api, workspace, sqlite_path):
    kept = api.create_webhook("https://127.0.0.1:9999/kept", name="Kept")
    gone = api.create_webhook("https://127.0.0.1:9999/gone", name="Gone")

    def delete_gone() -> None:  # the lock's queue is held; SQLite's own lock is free
        conn = sqlite3.connect(sqlite_path)
        conn.execute("PRAGMA foreign_keys=ON")
        with conn:
            conn.execute("DELETE FROM webhook_secrets WHERE webhook_id = ?", (gone["id"],))
            conn.execute("DELETE FROM webhooks WHERE id = ?", (gone["id"],))
        conn.close()

    answers = publish_together(app, workspace["key"], sqlite_path, meanwhile=delete_gone)

    # The group's insert broke the deleted webhook's foreign key; each call wrote alone.
    assert [a.status_code for a in answers] == [202] * CALLS
    for answer in answers:
        event = answer.get_json()
        assert event["delivery_count"] == 1
        stored = api.get(f"/events/{event['id']}").get_json()
        assert [d["webhook_id"] for d in stored["deliveries"]] == [kept["id"]]


class _Session:
    """What a group's leader asks of its session: the write lock (a moment's wait), a rollback."""

    def connection(self) -> None:
        time.sleep(0.0005)

    def rollback(self) -> None:
        pass


@examples(max_examples=40, deadline=None)
@given(
    fails=st.lists(st.booleans(), max_size=20),
    callers=st.integers(min_value=1, max_value=6),
    calls=st.integers(min_value=1, max_value=5),
)
def test_every_call_is_written_once_by_a_group_or_alone(fails, callers, calls):
    """Whatever the groups' transactions do (fail or commit, in any order), each call's rows
    are committed exactly once: by its group (write answers True) or by the caller alone."""
    outcomes = iter(fails)
    committed: list[tuple[int, int]] = []
    lock = threading.Lock()

    def write(_session: Any, items: Any) -> None:
        with lock:
            if next(outcomes, False):
                raise RuntimeError("the group's transaction failed")
            committed.extend(items)

    group = commitgroup.Group(write)
    alone: list[tuple[int, int]] = []
    start = threading.Barrier(callers)

    def caller(n: int) -> None:
        start.wait()
        for i in range(calls):
            if not group.write(_Session(), (n, i)):
                with lock:
                    alone.append((n, i))

    threads = [threading.Thread(target=caller, args=(n,), daemon=True) for n in range(callers)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a call never got its answer"
    every = [(n, i) for n in range(callers) for i in range(calls)]
    assert sorted(committed + alone) == every
    assert group.queued() == 0
