"""Pooled PostgreSQL connections are pinged only when they may be stale (`webhooks.liveness`),
and a database that dropped them costs one failed statement, not one per connection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from webhooks import fastsql, liveness


@pytest.fixture
def pg(postgres_url: str | None) -> str:
    if not postgres_url:
        pytest.skip("PostgreSQL's pool: SQLite has none to keep alive")
    return postgres_url


def _engine(url: str, fresh: float) -> tuple[sa.Engine, list[int]]:
    """An engine as the app makes it, and the list its pings are counted in."""
    engine = sa.create_engine(url, pool_size=2, max_overflow=0)
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return bool(ping(dbapi_connection))

    engine.dialect.do_ping = counted  # type: ignore[method-assign]
    liveness.install(engine, fresh=fresh)
    return engine, pings


@pytest.fixture
def engines(pg: str) -> Iterator[list[sa.Engine]]:
    made: list[sa.Engine] = []
    yield made
    for engine in made:
        engine.dispose()


def _pid(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def test_a_connection_used_a_moment_ago_is_not_pinged_an_idle_one_is(pg, engines):
    busy, busy_pings = _engine(pg, fresh=60)
    idle, idle_pings = _engine(pg, fresh=0)
    engines += [busy, idle]

    for _ in range(5):
        assert _pid(busy) == _pid(busy)  # the same connection, again and again
        _pid(idle)

    assert busy_pings == []  # each checkout came within the freshness window
    assert len(idle_pings) == 5  # every checkout after the connection sat idle


def _select_one_via_sqlalchemy(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT 1").scalar_one())


def _select_one_via_the_driver(engine: sa.Engine) -> int:
    """As the hot paths send their statements (`fastsql`), which invalidate only the
    connection that failed, not the whole pool as SQLAlchemy's own execution does."""
    with Session(engine) as session:
        return int(fastsql.rows(session, sa.select(sa.literal(1).label("one")))[0].one)


@pytest.mark.parametrize("select_one", [_select_one_via_sqlalchemy, _select_one_via_the_driver])
def test_a_restarted_database_fails_one_statement_and_the_pool_recovers(pg, engines, select_one):
    engine, _pings = _engine(pg, fresh=60)
    engines.append(engine)
    # Two connections in the pool, both used a moment ago.
    with engine.connect() as first, engine.connect() as second:
        pids = [
            int(c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()) for c in (first, second)
        ]
    admin = sa.create_engine(pg, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for pid in pids:
                conn.exec_driver_sql("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        admin.dispose()

    # The first statement meets a dropped connection: the caller sees the database's error…
    with pytest.raises(sa.exc.DBAPIError) as raised:
        select_one(engine)
    assert raised.value.connection_invalidated
    # …and the other dropped connection is pinged and replaced before the next statement.
    assert select_one(engine) == 1
    assert _pid(engine) not in pids
