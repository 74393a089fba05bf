"""PostgreSQL's batch writes over arrays store what the Core statements would.

A published event's deliveries, a claim's in-flight attempts and a batch of recorded results
go through `webhooks/pgbatch.py` on PostgreSQL: rows of every column type (text, integers,
booleans, times, JSON, NULLs) must read back exactly as written, and a logged request body is
masked as the `LoggedBody` column masks it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from webhooks import pgbatch
from webhooks.models import ATTEMPTS, DELIVERIES, EVENTS, Workspace, db


@pytest.fixture
def on_postgres(app: Any, postgres_url: str | None) -> Any:
    if not postgres_url:
        pytest.skip("array statements are PostgreSQL's; SQLite keeps the Core statements")
    with app.app_context():
        yield db.session


def _workspace(session: Any) -> str:
    workspace = Workspace(name="arrays")
    session.add(workspace)
    session.flush()
    return workspace.id


def test_rows_of_every_column_type_read_back_as_written(on_postgres: Any) -> None:
    session = on_postgres
    workspace_id = _workspace(session)
    when = datetime(2026, 12, 6, 12, 30, 15, 123456)
    rows = [
        {
            "id": f"evt_arrays{i}",
            "workspace_id": workspace_id,
            "type": "incident.created",
            "data": data,
            "occurred_at": when,
            "created_at": when,
            "idempotency_key": key,
            "request_hash": "0" * 64,
            "is_test": i == 1,
        }
        for i, (data, key) in enumerate(
            [
                ({"title": 'O\'Brien "quoted" ünïcode', "n": [1, 2.5, None]}, None),
                ({}, "key-1"),
                ({"nested": {"deep": True}}, "key, with {braces}"),
            ]
        )
    ]
    pgbatch.insert_rows(session, EVENTS, rows)
    session.commit()

    stored = {
        r.id: dict(r._mapping)
        for r in session.execute(select(EVENTS).where(EVENTS.c.workspace_id == workspace_id))
    }
    assert {row["id"]: {k: stored[row["id"]][k] for k in row} for row in rows} == {
        row["id"]: row for row in rows
    }


def test_a_column_that_transforms_its_values_is_refused() -> None:
    with pytest.raises(TypeError, match="request_headers"):
        pgbatch._insert_text(ATTEMPTS, ("delivery_id", "request_headers"))


def test_recorded_results_mask_the_request_body_and_keep_nulls(
    on_postgres: Any, api: Any, webhook: dict[str, Any]
) -> None:
    session = on_postgres
    event = api.publish()
    [delivery_id] = session.scalars(
        select(DELIVERIES.c.id).where(DELIVERIES.c.event_id == event["id"])
    ).all()
    found = pgbatch.insert_attempts(
        session, [(delivery_id, 1, "https://example.com/")], datetime.now()
    )
    body = '{"routing_key":"R0123456789abcdef0123456789abcdef","event_action":"trigger"}'
    pgbatch.record_attempts(
        session,
        [
            {
                "b_id": found[delivery_id],
                "b_request_headers": {"Content-Type": "application/json"},
                "b_request_body": body,
                "b_outcome": "failure",
                "b_duration": 12,
                "b_status": None,
                "b_headers": None,
                "b_body": None,
                "b_error": "connection refused",
            }
        ],
    )
    session.commit()

    row = session.execute(select(ATTEMPTS).where(ATTEMPTS.c.id == found[delivery_id])).one()
    assert "R0123456789abcdef0123456789abcdef" not in row.request_body
    assert '"event_action":"trigger"' in row.request_body
    assert row.request_headers == {"Content-Type": "application/json"}
    assert (row.outcome, row.duration_ms, row.error) == ("failure", 12, "connection refused")
    assert row.response_status is None and row.response_headers is None
    assert row.response_body is None
