"""The worker's and publishing's per-batch writes on SQLite: plain SQL, the rows as tuples.

SQLite lets one transaction write at a time, and the claim, the recorder and every publish
queue for that lock (`webhooks.sqlite`). SQLAlchemy turns each row of a batch into its
parameters in Python (a dict of every bound value, a processor per value: about 10 µs a row,
three statements a delivery), all of it while the lock is held. Here each value is converted
once, as SQLAlchemy would store it (a datetime as its text, JSON dumped, a logged body
masked), and the rows go to sqlite3 as tuples: one `executemany`, or one INSERT … RETURNING
where the ids are wanted back.

The same functions, with the same arguments, are `webhooks.pgbatch`'s on PostgreSQL;
`webhooks.batchsql.of` picks one.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Table
from sqlalchemy.types import JSON, TypeDecorator

from webhooks import fastsql
from webhooks.credentials import mask_body
from webhooks.models import ENDED, AttemptOutcome, DeliveryStatus, Session

# Rows per INSERT … RETURNING: well under SQLite's 32,766 bound parameters.
CHUNK = 500

_RECORD_ATTEMPT = (
    "UPDATE attempts SET request_headers = ?, request_body = ?, outcome = ?, duration_ms = ?, "
    "response_status = ?, response_headers = ?, response_body = ?, error = ? "
    f"WHERE id = ? AND outcome = '{AttemptOutcome.IN_FLIGHT}'"
)

_SUCCEED = (
    f"UPDATE deliveries SET status = '{DeliveryStatus.SUCCEEDED}', "
    + "".join(f"{column} = NULL, " for column in ENDED)
    + "updated_at = ?, last_status_code = ?, last_error = NULL "
    "WHERE id = ? AND lease_token = ?"
)


def when(value: datetime | None) -> str | None:
    """A naive UTC datetime as SQLAlchemy stores it in SQLite (microseconds always written:
    the columns are compared as text)."""
    return None if value is None else value.isoformat(" ", "microseconds")


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def insert_attempts(
    session: Session, rows: Sequence[tuple[str, int, str]], now: datetime
) -> dict[str, int]:
    """In-flight attempts for (delivery id, number, URL) rows: each delivery's attempt id."""
    cursor = fastsql.driver(session)
    started = when(now)
    found: dict[str, int] = {}
    for at in range(0, len(rows), CHUNK):
        chunk = rows[at : at + CHUNK]
        params: list[Any] = []
        for delivery_id, number, url in chunk:
            params += (delivery_id, number, started, url)
        found.update(
            (d, i) for d, i in cursor.execute(_insert_attempts_text(len(chunk)), tuple(params))
        )
    return found


@functools.lru_cache(maxsize=64)
def _insert_attempts_text(count: int) -> str:
    return (
        "INSERT INTO attempts (delivery_id, number, outcome, started_at, request_url, "
        "request_headers, request_body) VALUES "
        + ", ".join([f"(?, ?, '{AttemptOutcome.IN_FLIGHT}', ?, ?, '{{}}', '')"] * count)
        + " RETURNING delivery_id, id"
    )


def record_attempts(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Results of in-flight attempts, rows as `webhooks.delivery` builds them (`b_…` keys): the
    request's headers come masked, its body is masked here (as `LoggedBody` does)."""
    fastsql.driver(session).executemany(
        _RECORD_ATTEMPT,
        [
            (
                _json(r["b_request_headers"]),
                mask_body(r["b_request_body"]),
                r["b_outcome"],
                r["b_duration"],
                r["b_status"],
                _json(r["b_headers"]),
                r["b_body"],
                r["b_error"],
                r["b_id"],
            )
            for r in rows
        ],
    )


def succeed(session: Session, rows: Sequence[dict[str, Any]], now: datetime) -> None:
    """Deliveries whose lease still holds end `succeeded` (`b_id`, `b_token`, `b_code`)."""
    ended = when(now)
    fastsql.driver(session).executemany(
        _SUCCEED, [(ended, r["b_code"], r["b_id"], r["b_token"]) for r in rows]
    )


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT `rows` (dicts with the same keys, the table's own values: no column of it may
    transform them on the way in) into `table`, one `executemany`."""
    columns = tuple(rows[0])
    sql, convert = _insert_plan(table, columns)
    # The rows of a batch share their few moments: each is formatted once (isoformat made
    # four strings a delivery: 4.5 % of the instructions of a publish call).
    moment = functools.lru_cache(maxsize=None)(when)
    converted = [(i, moment if f is when else f) for i, f in enumerate(convert) if f]
    # Each row's values taken out in C, in the columns' order; only those stored otherwise
    # than as they are (times, JSON) go through Python.
    if len(columns) > 1:
        taken = list(map(operator.itemgetter(*columns), rows))
    else:  # an itemgetter of one key gives the value, not a tuple
        taken = [(row[columns[0]],) for row in rows]
    fastsql.driver(session).executemany(sql, fastsql.converted(taken, converted, tuple))


@functools.lru_cache(maxsize=32)
def _insert_plan(table: Table, columns: tuple[str, ...]) -> tuple[str, tuple[Any, ...]]:
    """The INSERT's text, and how each column's value is stored (None: as it is)."""
    convert: list[Any] = []
    for name in columns:
        column_type = table.c[name].type
        if isinstance(column_type, TypeDecorator):
            raise TypeError(f"{table.name}.{name} transforms its values: not for insert_rows")
        if isinstance(column_type, DateTime):
            convert.append(when)
        elif isinstance(column_type, JSON):
            convert.append(_json)
        else:  # text and numbers as they are; sqlite3 stores True and False as 1 and 0
            convert.append(None)
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    )
    return sql, tuple(convert)
