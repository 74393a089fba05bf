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
from sqlalchemy import bindparam, exc, insert, select

from webhooks import claim, fastsql
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
