"""A backlog of pending deliveries does not slow the statements that run per batch.

SQLite keeps no statistics (the service never runs ANALYZE): given `id IN (…)` and
`status = 'pending'`, its planner may walk every pending row through the status index. With
30,000 retries pending behind a dead endpoint, each claim took 6 ms instead of a few hundred
microseconds, and a worker delivered half as fast. These tests read SQLite's own plan for the
statements the claim and the reconciler send.

PostgreSQL plans from its statistics, which a queue outruns: taken when nothing was pending,
they made a claim sort every due row and scan the table for the ids it leased. The last test
reads PostgreSQL's plan for the claim after such a burst.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import event, insert

from tests.processes import flask
from webhooks import claim, delivery, fastsql, reconciler, services, transport
from webhooks.models import DELIVERIES, Event, db, utcnow
from webhooks.publishing import delivery_row

BACKLOG = 2_000
DUE = 20  # more than one claim's worth of rows for the status index to look cheaper


@pytest.fixture
def config(config, tmp_path, postgres_url):  # type: ignore[no-untyped-def]
    """The schema as a deployment has it, built by the migrations: SQLite's planner breaks
    ties between indexes by their order, which `create_all` does not keep."""
    if not postgres_url:
        url = f"sqlite:///{tmp_path / 'migrated.db'}"
        env = {**os.environ, "DATABASE_URL": url, "INSTANCE_PATH": str(tmp_path / "i")}
        result = flask("db", "upgrade", env=env)
        assert result.returncode == 0, result.stderr
        config["DATABASE_URL"] = url
    return config


@pytest.fixture
def backlog(app, api, webhook, postgres_url):  # type: ignore[no-untyped-def]
    """A webhook with DUE due deliveries and BACKLOG retries pending for later."""
    if postgres_url:
        pytest.skip("SQLite's planner: PostgreSQL's is read below")
    published = api.publish()
    with app.app_context():
        settings = services.settings()
        event_row = db.session.get(Event, published["id"])
        now = utcnow()
        later = now + timedelta(hours=1)
        rows = [
            delivery_row(event_row, webhook["id"], later, kind="event", settings=settings)
            for _ in range(BACKLOG)
        ] + [
            delivery_row(event_row, webhook["id"], now, kind="event", settings=settings)
            for _ in range(DUE - 1)  # the published event's own delivery is the first
        ]  # fmt: skip
        db.session.execute(insert(DELIVERIES), rows)
        db.session.commit()
    return app


def _sent(run: Any, wanted: Any) -> list[tuple[str, Any]]:
    """The statements `run()` sends that `wanted(statement)` picks, with their parameters (in
    an app context)."""
    sent: list[tuple[str, Any]] = []

    def keep(_conn, _cursor, statement, parameters, _context, _many):  # type: ignore[no-untyped-def]
        if wanted(statement):
            sent.append((statement, parameters))

    def keep_sent(statement, parameters):  # type: ignore[no-untyped-def]
        if wanted(statement):  # sent straight to the driver (webhooks.fastsql)
            sent.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", keep)
    fastsql.watch(keep_sent)
    try:
        run()
    finally:
        event.remove(db.engine, "before_cursor_execute", keep)
        fastsql.unwatch(keep_sent)
    return sent


def _plans(app: Any, run: Any, *words: str) -> list[str]:
    """SQLite's plan for each statement with all these `words` that `run()` sends."""
    with app.app_context():
        sent = _sent(run, lambda statement: all(word in statement for word in words))
        raw = db.engine.raw_connection()
        try:
            return [
                " ".join(row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}", params))
                for sql, params in sent
            ]
        finally:
            raw.close()


def test_a_claim_leases_its_rows_by_key_whatever_the_backlog(backlog):
    def run() -> None:
        taken = claim.claim(db.session, services.settings(), limit=50)
        assert len(taken.prepared) == DUE  # the backlog is not due yet

    plans = _plans(backlog, run, "UPDATE deliveries", "lease_token=", "RETURNING")

    assert plans, "the claim sent no lease"
    for plan in plans:
        assert "sqlite_autoindex_deliveries_1 (id=?)" in plan, plan
        assert "status" not in plan, plan


def test_the_reconciler_finds_expired_leases_through_the_attempts_in_flight(backlog):
    def run() -> None:
        reconciler.expire_leases(db.session, services.settings())

    plans = _plans(backlog, run, "SELECT", "lease_expires_at <")

    assert plans, "the reconciler sent no scan"
    for plan in plans:
        assert "ix_attempts_in_flight" in plan, plan
        assert "status" not in plan, plan


@pytest.fixture
def burst(app, api, webhook, postgres_url):  # type: ignore[no-untyped-def]
    """PostgreSQL whose statistics were taken when nothing was pending, then BACKLOG due
    deliveries: a burst since the last ANALYZE (or a new database, which has none)."""
    if not postgres_url:
        pytest.skip("PostgreSQL's planner: SQLite's is read above")
    published = api.publish()
    with app.app_context():
        settings = services.settings()
        db.session.execute(sa.update(DELIVERIES).values(status="succeeded", next_attempt_at=None))
        db.session.commit()
        raw = db.engine.raw_connection()
        try:
            raw.autocommit = True
            raw.cursor().execute("ANALYZE deliveries")
        finally:
            raw.close()
        event_row = db.session.get(Event, published["id"])
        now = utcnow()
        rows = [
            delivery_row(event_row, webhook["id"], now, kind="event", settings=settings)
            for _ in range(BACKLOG)
        ]
        db.session.execute(insert(DELIVERIES), rows)
        db.session.commit()
    return app


def _postgres_plans(app: Any, run: Any, *words: str) -> list[str]:
    """PostgreSQL's plan for each statement with all these `words` that `run()` sends, under
    the settings the same transaction gave itself before it (`set_config`)."""
    with app.app_context():
        sent = _sent(
            run,
            lambda statement: "set_config" in statement or all(w in statement for w in words),
        )
        raw = db.engine.raw_connection()
        plans = []
        try:
            for sql, params in sent:
                # The hot paths' statements go with PostgreSQL's own `$1` (webhooks.pgwire).
                raw_sql = isinstance(params, list | tuple)
                cursor = psycopg.RawCursor(raw.driver_connection) if raw_sql else raw.cursor()
                if "set_config" in sql:
                    cursor.execute(sql, params)
                else:
                    cursor.execute(f"EXPLAIN {sql}", params)
                    plans.append(" / ".join(row[0].strip() for row in cursor.fetchall()))
            return plans
        finally:
            raw.rollback()
            raw.close()


def test_a_claim_walks_the_due_index_in_order_whatever_postgresql_believes(burst):
    """The candidates are read by walking the (status, next_attempt_at) index until the batch
    is full, and leased by key: with statistics that say nothing is pending, the planner
    otherwise collected every due row in a bitmap and sorted it, and looked the leased ids up
    among every pending row."""

    def run() -> None:
        taken = claim.claim(db.session, services.settings(), limit=50)
        assert len(taken.prepared) == 50

    candidates = _postgres_plans(burst, run, "SELECT deliveries.id", "FOR UPDATE")
    leases = _postgres_plans(burst, run, "UPDATE deliveries", "RETURNING")

    assert candidates and leases, "the claim sent no candidates or no lease"
    for plan in candidates:
        assert "Index Scan using ix_deliveries_status_next_attempt_at" in plan, plan
        assert "Sort" not in plan and "Bitmap" not in plan, plan
    for plan in leases:
        assert "Index Scan using pk_deliveries" in plan, plan
        assert "status_next_attempt_at" not in plan, plan


def test_results_are_written_by_key_whatever_postgresql_believes(burst):
    """A batch of results finds its attempts and deliveries by key. The attempts' UPDATE
    otherwise read every entry of the partial index of attempts in flight, dead ones
    included (a bitmap cannot skip them), and the deliveries' UPDATE scanned the table when its
    statistics said it was small: either grew with every delivery ever made until a vacuum."""

    def run() -> None:
        settings = services.settings()
        taken = claim.claim(db.session, settings, limit=50)
        results = [(p, transport.Result(status_code=200)) for p in taken.prepared]
        statuses = delivery.record(db.session, results, settings)
        assert list(statuses.values()) == ["succeeded"] * 50

    attempts = _postgres_plans(burst, run, "UPDATE attempts")
    deliveries = _postgres_plans(burst, run, "UPDATE deliveries AS d")

    assert attempts and deliveries, "the results were not written"
    for plan in attempts:
        assert "Index Scan using pk_attempts" in plan, plan
        assert "ix_attempts_in_flight" not in plan, plan
        assert "Bitmap" not in plan and "Seq Scan" not in plan, plan
    for plan in deliveries:
        assert "Index Scan using pk_deliveries" in plan, plan
        assert "Seq Scan" not in plan, plan


def test_a_lease_is_written_in_place_on_postgresql(burst):
    """The lease changes no indexed column and the table keeps room on each page for a row's
    next version: PostgreSQL writes leased rows as heap-only tuples, adding no entry to any of
    the deliveries' indexes (which cost a claim as much as the publish's INSERT)."""
    with burst.app_context():
        ids = [
            row.id
            for row in db.session.execute(
                sa.select(DELIVERIES.c.id).order_by(DELIVERIES.c.next_attempt_at).limit(50)
            )
        ]
        try:
            leased = claim._lease(db.session, ids, "t" * 16, utcnow(), services.settings())
            heap_only = db.session.scalar(
                sa.text("SELECT pg_stat_get_xact_tuples_hot_updated('deliveries'::regclass)")
            )
        finally:
            db.session.rollback()

    assert len(leased) == 50
    # A leased row is a little longer (its token and expiry): the last of a full page's rows
    # may not fit, and go out of place as every lease did before.
    assert heap_only >= 45
