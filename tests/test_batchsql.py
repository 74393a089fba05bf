"""The batch writes (`webhooks/batchsql.py`: arrays on PostgreSQL, tuples on SQLite) store what
the Core statements would.

A published event's deliveries, a claim's in-flight attempts and a batch of recorded results
go through them: rows of every column type (text, integers, booleans, times, JSON, NULLs) must
read back exactly as written, times must compare with the ones SQLAlchemy binds, and a logged
request body is masked as the `LoggedBody` column masks it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, text

from webhooks import batchsql, litebatch, pgbatch, publishing, services
from webhooks.models import ATTEMPTS, DELIVERIES, EVENTS, Event, Workspace, db


@pytest.fixture
def session(app: Any) -> Any:
    with app.app_context():
        yield db.session


def _published_delivery(session: Any, api: Any) -> str:
    """The id of the one delivery of an event published to the test's one webhook."""
    event = api.publish()
    [delivery_id] = session.scalars(
        select(DELIVERIES.c.id).where(DELIVERIES.c.event_id == event["id"])
    ).all()
    return str(delivery_id)


def _workspace(session: Any) -> str:
    workspace = Workspace(name="arrays")
    session.add(workspace)
    session.flush()
    return workspace.id


def test_rows_of_every_column_type_read_back_as_written(session: Any) -> None:
    workspace_id = _workspace(session)
    when = datetime(2026, 12, 6, 12, 30, 15, 123456)
    rows = [
        {
            "id": f"evt_arrays{i}",
            "workspace_id": workspace_id,
            "type": "incident.created",
            "data": data,
            "occurred_at": when + timedelta(seconds=i),  # moments shared and not, in a batch
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
    batchsql.of(session).insert_rows(session, EVENTS, rows)
    session.commit()

    stored = {
        r.id: dict(r._mapping)
        for r in session.execute(select(EVENTS).where(EVENTS.c.workspace_id == workspace_id))
    }
    assert {row["id"]: {k: stored[row["id"]][k] for k in row} for row in rows} == {
        row["id"]: row for row in rows
    }


def test_rows_read_plain_keep_their_fields_by_name_and_by_place(session: Any) -> None:
    workspace_id = _workspace(session)
    session.commit()
    query = select(Workspace.id, Workspace.name).where(Workspace.id == workspace_id)

    [row] = batchsql.plain(session.execute(query))

    assert (row.id, row.name) == (workspace_id, "arrays") == tuple(row)
    assert batchsql.plain(session.execute(query.where(Workspace.name == "none"))) == []


def test_sqlite_binds_none_bools_and_bytes_as_it_always_did(session: Any) -> None:
    """`webhooks.sqlite` registers adapters for them (sparing a failed look-up per value):
    NULL, 1 and 0, and a blob, as before."""
    if session.get_bind().dialect.name != "sqlite":
        pytest.skip("sqlite3's adapters")
    got = session.execute(
        text("SELECT :none IS NULL, :yes, typeof(:yes), :no, :blob, typeof(:blob)"),
        {"none": None, "yes": True, "no": False, "blob": b"\x00\xff"},
    ).one()
    assert tuple(got) == (1, 1, "integer", 0, b"\x00\xff", "blob")


def test_an_event_published_in_one_statement_stores_what_the_rows_say(
    session: Any, api: Any, webhook: dict[str, Any]
) -> None:
    """On PostgreSQL an event and its deliveries go in one statement that binds a delivery's
    common columns once: every column must read back as `delivery_row` would write it."""
    if not pgbatch.used_by(session):
        pytest.skip("PostgreSQL's one-statement publish")
    other = api.create_webhook("https://example.com/other", name="Other")
    published = api.publish("incident.created", {"id": "inc_1", "n": [1, "x"]})
    event = session.execute(select(EVENTS).where(EVENTS.c.id == published["id"])).one()
    rows = session.execute(select(DELIVERIES).where(DELIVERIES.c.event_id == published["id"])).all()

    assert event.data == {"id": "inc_1", "n": [1, "x"]} and event.type == "incident.created"
    assert event.occurred_at == event.created_at and event.is_test is False
    assert event.idempotency_key is None and len(event.request_hash) == 64
    assert sorted(r.webhook_id for r in rows) == sorted([webhook["id"], other["id"]])
    assert published["delivery_count"] == 2
    settings = services.settings()
    for row in rows:
        written = publishing.delivery_row(
            Event(**event._asdict()),
            row.webhook_id,
            event.created_at,
            kind="event",
            settings=settings,
        )
        assert {k: getattr(row, k) for k in written if k != "id"} == {
            k: v for k, v in written.items() if k != "id"
        }


def test_a_column_that_transforms_its_values_is_refused() -> None:
    with pytest.raises(TypeError, match="request_headers"):
        pgbatch._insert_text(ATTEMPTS, ("delivery_id", "request_headers"))
    with pytest.raises(TypeError, match="request_headers"):
        litebatch._insert_plan(ATTEMPTS, ("delivery_id", "request_headers"))


def test_times_written_in_a_batch_compare_with_times_bound_by_sqlalchemy(
    session: Any, api: Any, webhook: dict[str, Any]
) -> None:
    """The claim finds due deliveries with `next_attempt_at <= now`: on SQLite that compares
    text, so a time on a whole second must be written as SQLAlchemy writes it."""
    delivery_id = _published_delivery(session, api)
    whole = datetime(2026, 12, 6, 12, 30, 15)
    found = batchsql.of(session).insert_attempts(
        session, [(delivery_id, 7, "https://example.com/")], whole
    )
    session.commit()

    started = ATTEMPTS.c.started_at
    assert session.scalar(select(func.count()).where(started <= whole)) == 1
    assert session.scalar(select(func.count()).where(started < whole)) == 0
    assert (
        session.scalar(select(func.count()).where(started > whole - timedelta(microseconds=1))) == 1
    )
    assert session.scalar(select(started).where(ATTEMPTS.c.id == found[delivery_id])) == whole


def test_recorded_results_mask_the_request_body_and_keep_nulls(
    session: Any, api: Any, webhook: dict[str, Any]
) -> None:
    delivery_id = _published_delivery(session, api)
    batch = batchsql.of(session)
    found = batch.insert_attempts(
        session, [(delivery_id, 1, "https://example.com/")], datetime.now()
    )
    body = '{"routing_key":"R0123456789abcdef0123456789abcdef","event_action":"trigger"}'
    batch.record_attempts(
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


def test_a_success_ends_the_delivery_only_while_its_lease_holds(
    session: Any, api: Any, webhook: dict[str, Any]
) -> None:
    delivery_id = _published_delivery(session, api)
    session.execute(
        DELIVERIES.update().where(DELIVERIES.c.id == delivery_id).values(lease_token="mine")
    )
    batch = batchsql.of(session)
    now = datetime(2026, 12, 6, 12, 30, 15, 500)
    batch.succeed(session, [{"b_id": delivery_id, "b_token": "stale", "b_code": 200}], now)
    assert session.scalar(select(DELIVERIES.c.status).where(DELIVERIES.c.id == delivery_id)) == (
        "pending"
    )
    batch.succeed(session, [{"b_id": delivery_id, "b_token": "mine", "b_code": 204}], now)
    session.commit()

    row = session.execute(select(DELIVERIES).where(DELIVERIES.c.id == delivery_id)).one()
    assert (row.status, row.last_status_code, row.updated_at) == ("succeeded", 204, now)
    assert row.lease_token is None and row.next_attempt_at is None


def test_a_list_bound_whole_selects_its_rows_and_keeps_one_text(session: Any) -> None:
    """`among` is `IN (…)` for a list of any length (none, one, several), and its negation is
    `NOT IN`; the list travels as one parameter (the ids joined by commas on PostgreSQL, a
    JSON array on SQLite), so the statement sent is the same text for every length: the
    driver prepares it once and the database plans it once."""
    workspace_id = _workspace(session)
    ids = [f"evt_among{i}" for i in range(5)]
    when = datetime(2026, 12, 7, 6, 0, 0)
    batchsql.of(session).insert_rows(
        session,
        EVENTS,
        [
            {
                "id": event_id,
                "workspace_id": workspace_id,
                "type": "incident.created",
                "data": {},
                "occurred_at": when,
                "created_at": when,
                "idempotency_key": None,
                "request_hash": "0" * 64,
                "is_test": False,
            }
            for event_id in ids
        ],
    )
    session.commit()
    postgres = pgbatch.used_by(session)
    mine = EVENTS.c.workspace_id == workspace_id
    chosen = select(EVENTS.c.id).where(mine, batchsql.among(EVENTS.c.id, "ids", postgres=postgres))
    others = select(EVENTS.c.id).where(mine, ~batchsql.among(EVENTS.c.id, "ids", postgres=postgres))
    sent: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if statement.startswith("SELECT"):  # not SQLite's BEGIN
            sent.append(statement)

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", seen)
    try:
        for asked in ([], [ids[2]], [ids[0], ids[3], ids[4], "evt_elsewhere"]):
            assert sorted(session.scalars(chosen, {"ids": asked})) == sorted(set(asked) & set(ids))
            assert sorted(session.scalars(others, {"ids": asked})) == sorted(set(ids) - set(asked))
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert len(set(sent)) == 2  # one text for `chosen`, one for `others`
