"""Statements sent straight to the driver (`webhooks/fastsql.py`) behave as SQLAlchemy's do.

The claim, the recorder and the publish call send their statements to the driver's cursor in
the session's transaction: each row must read back as SQLAlchemy would read it (times,
booleans, JSON, an encrypted secret decrypted), values must be bound as it would bind them,
a constraint's failure must raise SQLAlchemy's own exception (publishing catches it), and the
transaction must stay the session's, committed or rolled back with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import bindparam, exc, insert, select, text

from webhooks import claim, fastsql, pgwire
from webhooks.models import EVENTS, WEBHOOK_SECRETS, WEBHOOKS, Webhook, db


@pytest.fixture
def session(app: Any) -> Any:
    with app.app_context():
        yield db.session


def test_rows_read_back_as_sqlalchemy_reads_them(session: Any, webhook: Any) -> None:
    both = select(WEBHOOKS.c.id, WEBHOOKS.c.active, WEBHOOKS.c.events, WEBHOOKS.c.created_at).where(
        WEBHOOKS.c.id == bindparam("id")
    )
    secret = select(WEBHOOK_SECRETS.c.secret).where(WEBHOOK_SECRETS.c.webhook_id == bindparam("id"))

    [fast] = fastsql.rows(session, both, {"id": webhook["id"]})
    [slow] = session.execute(both, {"id": webhook["id"]}).all()
    secrets = [row.secret for row in fastsql.rows(session, secret, {"id": webhook["id"]})]

    assert tuple(fast) == tuple(slow)
    assert fast.active is True and isinstance(fast.created_at, datetime)
    assert isinstance(fast.events, list)
    assert secrets == session.scalars(secret, {"id": webhook["id"]}).all()
    assert all(s.startswith("whsec_") for s in secrets)  # decrypted, as the column reads it


def test_values_are_bound_as_sqlalchemy_binds_them(session: Any, webhook: Any) -> None:
    """A time compares with the stored ones (SQLite stores text), an id list goes whole."""
    row = session.get(Webhook, webhook["id"])
    later = select(WEBHOOKS.c.id).where(WEBHOOKS.c.created_at < bindparam("at"))

    assert [r.id for r in fastsql.rows(session, later, {"at": datetime(2999, 1, 1)})] == [row.id]
    assert fastsql.rows(session, later, {"at": datetime(2000, 1, 1)}) == []
    assert claim.targets(session, {row.id, "wh_missing"}).keys() == {row.id}


def test_a_constraint_fails_as_sqlalchemy_says_it_does(
    session: Any, webhook: Any, api: Any
) -> None:
    event = api.publish()
    again = insert(EVENTS).values(
        id=bindparam("id"),
        workspace_id=session.get(Webhook, webhook["id"]).workspace_id,
        type="incident.created",
        data={},
        occurred_at=datetime(2026, 1, 1),
        created_at=datetime(2026, 1, 1),
        request_hash="0" * 64,
        is_test=False,
    )

    with pytest.raises(exc.IntegrityError):
        fastsql.execute(session, again, {"id": event["id"]})
    session.rollback()
    assert session.get(Webhook, webhook["id"]) is not None  # the session goes on


def test_writes_belong_to_the_session_transaction(session: Any, api: Any) -> None:
    """Rolled back with the session: nothing of it stays."""
    event = {"id": api.publish()["id"]}
    one = select(EVENTS.c.id).where(EVENTS.c.id == bindparam("id"))

    fastsql.execute(session, EVENTS.delete().where(EVENTS.c.id == bindparam("id")), event)
    assert fastsql.rows(session, one, event) == []
    session.rollback()

    assert [row.id for row in fastsql.rows(session, one, event)] == [event["id"]]


def test_statements_are_watched(session: Any, webhook: Any) -> None:
    seen: list[str] = []

    def watcher(sql: str, _params: Any) -> None:
        seen.append(sql)

    fastsql.watch(watcher)
    try:
        claim.targets(session, {webhook["id"]})
    finally:
        fastsql.unwatch(watcher)
    assert len(seen) == 1 and "FROM webhooks" in seen[0]


def _postgres(session: Any) -> None:
    if fastsql.dialect(session) != "postgresql":
        pytest.skip("PostgreSQL's statements through libpq (webhooks.pgwire)")


def test_a_parameter_only_its_value_types_binds_as_that_value(session: Any) -> None:
    """`$1` in a SELECT list says nothing of its type: a number goes as a number, a time as a
    time, whatever the first value prepared it with."""
    _postgres(session)
    sum_ = text("SELECT :n + 1 AS m, :at AS at").columns()
    first = fastsql.rows(session, sum_, {"n": 1, "at": datetime(2026, 1, 2)})
    later = fastsql.rows(session, sum_, {"n": 2**40, "at": datetime(2026, 1, 3, 4, 5)})

    assert [tuple(r) for r in first + later] == [
        (2, datetime(2026, 1, 2)),
        (2**40 + 1, datetime(2026, 1, 3, 4, 5)),
    ]


_TARGETS_PREPARED = text(
    "SELECT prepare_time FROM pg_prepared_statements WHERE statement LIKE "
    "'%FROM webhooks LEFT OUTER JOIN webhook_secrets%' "
    "AND statement NOT LIKE '%pg_prepared_statements%'"
).columns()


def test_a_statement_is_prepared_once_per_connection_and_outlives_rollbacks(
    session: Any, webhook: Any
) -> None:
    _postgres(session)
    for _ in range(3):
        assert claim.targets(session, {webhook["id"]}).keys() == {webhook["id"]}
        session.rollback()  # psycopg deallocates its own statements at a ROLLBACK: none here
    assert len(fastsql.rows(session, _TARGETS_PREPARED)) == 1


def test_a_statement_is_planned_anew_after_a_while(
    session: Any, webhook: Any, monkeypatch: Any
) -> None:
    """A generic plan made when the tables were small is not kept for the connection's life."""
    _postgres(session)
    claim.targets(session, {webhook["id"]})
    [first] = fastsql.rows(session, _TARGETS_PREPARED)
    session.commit()
    monkeypatch.setattr(pgwire, "REPLAN_SECONDS", 0.0)

    assert claim.targets(session, {webhook["id"]}).keys() == {webhook["id"]}
    [again] = fastsql.rows(session, _TARGETS_PREPARED)
    assert again.prepare_time > first.prepare_time


def test_a_statement_deallocated_behind_its_back_is_prepared_again(
    session: Any, webhook: Any
) -> None:
    """In a transaction of its own it is prepared anew at once; in one that had done more,
    only that transaction fails, and the next one prepares it."""
    _postgres(session)
    claim.targets(session, {webhook["id"]})
    session.execute(text("DEALLOCATE ALL"))
    session.commit()
    assert claim.targets(session, {webhook["id"]}).keys() == {webhook["id"]}
    session.rollback()

    session.execute(text("DEALLOCATE ALL"))
    with pytest.raises(exc.ProgrammingError):
        claim.targets(session, {webhook["id"]})
    session.rollback()
    assert claim.targets(session, {webhook["id"]}).keys() == {webhook["id"]}
