"""Deleting a webhook while a worker writes its results: PostgreSQL may answer with a deadlock.

A worker recording a result locks the attempt, then the delivery; the delete's cascade locks
the delivery, then its attempts. When both meet, PostgreSQL aborts one of them, and the
delete, tried again, still answers 204.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa


def test_deleting_a_webhook_while_its_result_is_written_survives_a_deadlock(
    app: Any, api: Any, webhook: dict[str, Any], service: Any, postgres_url: str | None
) -> None:
    if not postgres_url:
        pytest.skip("SQLite has one write lock: its transactions never deadlock")
    event = api.publish()
    [delivery] = service.run_until(api.ended(event["id"]))
    assert delivery["status"] == "succeeded"
    delivery_id = delivery["id"]

    engine = sa.create_engine(postgres_url)
    answers: list[int] = []
    with engine.connect() as worker:
        # The worker side waits long before it checks for a deadlock, so that the delete's
        # side (1 s, the default) is the one PostgreSQL aborts.
        worker.exec_driver_sql("SET deadlock_timeout = '20s'")
        worker.exec_driver_sql(
            "UPDATE attempts SET error = error WHERE delivery_id = %(d)s", {"d": delivery_id}
        )
        deleting = threading.Thread(
            target=lambda: answers.append(api.delete(f"/webhooks/{webhook['id']}").status_code)
        )
        deleting.start()
        _wait_for_a_blocked_backend(engine)
        # Now the worker wants the delivery, which the delete holds: a deadlock.
        worker.exec_driver_sql(
            "UPDATE deliveries SET updated_at = updated_at WHERE id = %(d)s", {"d": delivery_id}
        )
        worker.commit()
    deleting.join(timeout=30)
    engine.dispose()

    assert answers == [204]
    assert api.get(f"/webhooks/{webhook['id']}").status_code == 404


def _wait_for_a_blocked_backend(engine: sa.Engine) -> None:
    deadline = time.monotonic() + 10
    with engine.connect() as probe:
        while time.monotonic() < deadline:
            waiting = probe.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).scalar()
            probe.rollback()
            if waiting:
                return
            time.sleep(0.05)
    raise AssertionError("the delete never waited for the worker's lock")
