"""The worker's per-batch writes on PostgreSQL: one statement of fixed text over arrays.

SQLAlchemy writes a batch as one INSERT with a VALUES row per item (its text grows with the
batch) or as an executemany (one EXECUTE per row in psycopg's pipeline). psycopg parses every
statement's text in Python to find its parameters and remembers only texts under 4 KB: a claim's
INSERT of 32 attempts was parsed anew each time, half of the claiming thread's CPU. Here each
write is one statement whose text never changes, its rows passed as one array per column and
spread by `unnest`, so psycopg parses it once and sends it once.

Publishing's INSERT of an event's deliveries (19 columns a row) is such a statement too: psycopg
remembers no text with more than 50 parameters. `insert_rows` writes any rows of plain columns
that way.

SQLite has no arrays: `webhooks.litebatch` has the same functions for it (`webhooks.batchsql`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.types import JSON, TypeDecorator

from webhooks.credentials import mask_body
from webhooks.models import ENDED, AttemptOutcome, DeliveryStatus, Session

_INSERT_ATTEMPTS = text(
    "INSERT INTO attempts (delivery_id, number, outcome, started_at, request_url, "
    "request_headers, request_body) "
    "SELECT t.delivery_id, t.number, :outcome, :now, t.url, '{}'::jsonb, '' "
    "FROM unnest(CAST(:delivery_ids AS text[]), CAST(:numbers AS integer[]), "
    "CAST(:urls AS text[])) AS t(delivery_id, number, url) "
    "RETURNING attempts.delivery_id, attempts.id"
)

_RECORD_ATTEMPTS = text(
    "UPDATE attempts AS a SET request_headers = t.request_headers::jsonb, "
    "request_body = t.request_body, outcome = t.outcome, duration_ms = t.duration_ms, "
    "response_status = t.status, response_headers = t.headers::jsonb, "
    "response_body = t.body, error = t.error "
    "FROM unnest(CAST(:ids AS integer[]), CAST(:request_headers AS text[]), "
    "CAST(:request_bodies AS text[]), CAST(:outcomes AS text[]), "
    "CAST(:durations AS integer[]), CAST(:statuses AS integer[]), CAST(:headers AS text[]), "
    "CAST(:bodies AS text[]), CAST(:errors AS text[])) "
    "AS t(id, request_headers, request_body, outcome, duration_ms, status, headers, body, error) "
    f"WHERE a.id = t.id AND a.outcome = '{AttemptOutcome.IN_FLIGHT}'"
)

_SUCCEED = text(
    f"UPDATE deliveries AS d SET status = '{DeliveryStatus.SUCCEEDED}', "
    + "".join(f"{column} = NULL, " for column in ENDED)
    + "updated_at = :now, last_status_code = t.code, last_error = NULL "
    "FROM unnest(CAST(:ids AS text[]), CAST(:tokens AS text[]), CAST(:codes AS integer[])) "
    "AS t(id, token, code) WHERE d.id = t.id AND d.lease_token = t.token"
)


def used_by(session: Session) -> bool:
    """The session's database is PostgreSQL."""
    return bool(session.get_bind().dialect.name == "postgresql")


def insert_attempts(
    session: Session, rows: Sequence[tuple[str, int, str]], now: datetime
) -> dict[str, int]:
    """In-flight attempts for (delivery id, number, URL) rows: each delivery's attempt id."""
    delivery_ids, numbers, urls = (list(column) for column in zip(*rows, strict=True))
    found = session.execute(
        _INSERT_ATTEMPTS,
        {
            "outcome": AttemptOutcome.IN_FLIGHT,
            "now": now,
            "delivery_ids": delivery_ids,
            "numbers": numbers,
            "urls": urls,
        },
    )
    return {delivery_id: attempt_id for delivery_id, attempt_id in found}


def record_attempts(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Results of in-flight attempts, rows as `webhooks.delivery` builds them (`b_…` keys): the
    request's headers come masked, its body is masked here (as `LoggedBody` does)."""
    session.execute(
        _RECORD_ATTEMPTS,
        {
            "ids": [r["b_id"] for r in rows],
            "request_headers": [_json(r["b_request_headers"]) for r in rows],
            "request_bodies": [mask_body(r["b_request_body"]) for r in rows],
            "outcomes": [r["b_outcome"] for r in rows],
            "durations": [r["b_duration"] for r in rows],
            "statuses": [r["b_status"] for r in rows],
            "headers": [_json(r["b_headers"]) for r in rows],
            "bodies": [r["b_body"] for r in rows],
            "errors": [r["b_error"] for r in rows],
        },
    )


def succeed(session: Session, rows: Sequence[dict[str, Any]], now: datetime) -> None:
    """Deliveries whose lease still holds end `succeeded` (`b_id`, `b_token`, `b_code`)."""
    session.execute(
        _SUCCEED,
        {
            "now": now,
            "ids": [r["b_id"] for r in rows],
            "tokens": [r["b_token"] for r in rows],
            "codes": [r["b_code"] for r in rows],
        },
    )


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT `rows` (dicts with the same keys, the table's own values: no column of it may
    transform them on the way in) into `table` in one statement of fixed text."""
    columns = tuple(rows[0])
    params = {f"c{i}": [row[name] for row in rows] for i, name in enumerate(columns)}
    for i, name in enumerate(columns):
        if isinstance(table.c[name].type, JSON):
            params[f"c{i}"] = [_json(value) for value in params[f"c{i}"]]
    session.execute(_insert_text(table, columns), params)


@functools.lru_cache(maxsize=32)
def _insert_text(table: Table, columns: tuple[str, ...]) -> TextClause:
    dialect = postgresql.dialect()
    arrays = []
    for i, name in enumerate(columns):
        column_type = table.c[name].type
        if isinstance(column_type, TypeDecorator):
            raise TypeError(f"{table.name}.{name} transforms its values: not for insert_rows")
        sql_type = "jsonb" if isinstance(column_type, JSON) else column_type.compile(dialect)
        arrays.append(f"CAST(:c{i} AS {sql_type}[])")
    return text(
        f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({', '.join(arrays)})"
    )


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)
