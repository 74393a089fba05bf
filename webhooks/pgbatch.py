"""The worker's and publishing's per-batch writes on PostgreSQL: one statement of fixed text.

SQLAlchemy writes a batch as one INSERT with a VALUES row per item (its text grows with the
batch) or as an executemany (one EXECUTE per row in psycopg's pipeline). psycopg parses every
statement's text in Python to find its parameters and remembers only texts under 4 KB: a claim's
INSERT of 32 attempts was parsed anew each time, half of the claiming thread's CPU. Here each
write is one statement whose text never changes, so psycopg parses it once and sends it once.

Rows travel as one JSON document, spread by `json_to_recordset`: psycopg writes an array
element by element in Python, escaping each quote with a regular expression (for the
recorder's bodies, a fifth of a worker's CPU; for a batch's ids, numbers and URLs, 0.1 ms a
statement); `json.dumps` writes the document in C, and PostgreSQL reads it in C.

A batch's INSERT of its events' deliveries (19 columns a row) is such a statement too: psycopg
remembers no text with more than 50 parameters. `insert_rows` writes any rows of plain columns
that way. A single published event goes with its deliveries in one statement that binds what
its rows share once (`publish_event`): built as 19-column rows, a publish call spent a fifth
of its instructions on them and PostgreSQL a twelfth of its time reading their JSON.

SQLite has neither: `webhooks.litebatch` has the same functions for it (`webhooks.batchsql`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, literal_column, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.types import JSON, TypeDecorator

from webhooks import fastsql
from webhooks.credentials import mask_body
from webhooks.models import ENDED, AttemptOutcome, DeliveryStatus, Session

_INSERT_ATTEMPTS = text(
    "INSERT INTO attempts (delivery_id, number, outcome, started_at, request_url, "
    "request_headers, request_body) "
    "SELECT t.delivery_id, t.number, :outcome, :now, t.url, '{}'::jsonb, '' "
    "FROM json_to_recordset(CAST(:rows AS json)) AS t(delivery_id text, number integer, "
    "url text) "
    "RETURNING attempts.delivery_id, attempts.id"
)

_RECORD_ATTEMPTS = text(
    "UPDATE attempts AS a SET request_headers = t.request_headers, "
    "request_body = t.request_body, outcome = t.outcome, duration_ms = t.duration_ms, "
    "response_status = t.status, response_headers = t.headers, "
    "response_body = t.body, error = t.error "
    "FROM json_to_recordset(CAST(:rows AS json)) AS t(id integer, request_headers jsonb, "
    "request_body text, outcome text, duration_ms integer, status integer, headers jsonb, "
    "body text, error text) "
    # The outcome unindexed: not the partial index of the attempts in flight (`unindexed`).
    f"WHERE a.id = t.id AND (a.outcome || '') = '{AttemptOutcome.IN_FLIGHT}'"
)

_SUCCEED = text(
    f"UPDATE deliveries AS d SET status = '{DeliveryStatus.SUCCEEDED}', "
    + "".join(f"{column} = NULL, " for column in ENDED)
    + "updated_at = :now, last_status_code = t.code, last_error = NULL "
    "FROM json_to_recordset(CAST(:rows AS json)) AS t(id text, token text, code integer) "
    "WHERE d.id = t.id AND d.lease_token = t.token"
)


# A freshly published event and its deliveries, in one statement. Of a delivery's 19 columns
# only its id and its webhook differ from one row to the next: the rest is bound once, and the
# two lists go joined by commas (ids never hold one), read by `string_to_array` in C. The
# foreign key from the deliveries to the event is checked at the end of the statement, when
# the event's row is there.
_PUBLISH_EVENT = text(
    "WITH event AS (INSERT INTO events (id, workspace_id, type, data, occurred_at, created_at, "
    "idempotency_key, request_hash, is_test) VALUES (:event_id, :workspace_id, :type, "
    "CAST(:data AS jsonb), :now, :now, :idempotency_key, :request_hash, false)) "
    "INSERT INTO deliveries (id, workspace_id, event_id, webhook_id, event_type, kind, status, "
    "attempt_count, lost_count, max_attempts, ignores_pause, next_attempt_at, enqueued_at, "
    "created_at, updated_at) "
    "SELECT d.id, :workspace_id, :event_id, d.webhook_id, :type, 'event', "
    f"'{DeliveryStatus.PENDING}', 0, 0, :max_attempts, false, :now, :now, :now, :now "
    "FROM unnest(string_to_array(:ids, ','), string_to_array(:webhook_ids, ',')) "
    "AS d(id, webhook_id)"
)


def used_by(session: Session) -> bool:
    """The session's database is PostgreSQL."""
    return fastsql.dialect(session) == "postgresql"


def by_key_without_flush(session: Session) -> None:
    """On PostgreSQL, for the worker's transaction (a claim's, a batch of results'), in one
    statement: its commit returns before its WAL reaches the disk, and the planner reads
    through indexes, neither collecting rows in a bitmap nor scanning a table, and joins by
    looking rows up by key (no hash or merge join).

    A claim or a result lost in a database crash only means the attempt is made again, which
    at-least-once delivery allows; an event accepted by the API is never committed this way.
    Here disk flushes took up to 0.7 s under load, on the path of every delivery.

    The claim must walk the (status, next_attempt_at) index in order until its batch is full,
    and every other statement look its rows up by key. With statistics that say few rows are
    pending or in flight (a new database, an ANALYZE between bursts, autovacuum off), the
    planner chose a bitmap of every due row and sorted it (6.5 ms a claim for 12,000 due rows,
    against 0.1 ms), scanned the deliveries' table for the results' ids, or read every entry
    of the attempts in flight, dead ones included, for a batch of results (5 ms a batch after
    40,000 deliveries). A plan cached while a table was small would keep such a scan: the
    statements are prepared once per connection (`pgwire`), and PostgreSQL keeps a generic
    plan once it costs no more than the first few; one made while the deliveries were a few
    hundred rows joined a batch's JSON rows to them by hashing every row of the primary key's
    index (10 ms a batch of results at 24,000 rows, against 1.7). Without hash or merge joins,
    each JSON row looks its delivery up by key whatever the statistics said."""
    if used_by(session):
        fastsql.execute(session, _BY_KEY_WITHOUT_FLUSH)


_BY_KEY_WITHOUT_FLUSH = text(
    "SELECT set_config('synchronous_commit', 'off', true), "
    "set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true), "
    "set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)"
)


def unindexed(column: Any) -> Any:
    """`(table.column || '')`: the same text, but no index matches it, so the planner cannot
    choose one for it (`sqlite.unindexed` is SQLite's way). Given `id = ANY(…)` and
    `status = 'pending'` on a table whose statistics are missing or stale (a new database, a
    burst since the last ANALYZE), PostgreSQL walked every pending row through the status index
    to find the 32 ids instead of looking them up by key."""
    return literal_column(f"({column.table.name}.{column.name} || '')", type_=column.type)


def insert_attempts(
    session: Session, rows: Sequence[tuple[str, int, str]], now: datetime
) -> dict[str, int]:
    """In-flight attempts for (delivery id, number, URL) rows: each delivery's attempt id."""
    found = fastsql.rows(
        session,
        _INSERT_ATTEMPTS,
        {
            "outcome": AttemptOutcome.IN_FLIGHT,
            "now": now,
            "rows": json.dumps([{"delivery_id": d, "number": n, "url": url} for d, n, url in rows]),
        },
    )
    return {delivery_id: attempt_id for delivery_id, attempt_id in found}


def record_attempts(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Results of in-flight attempts, rows as `webhooks.delivery` builds them (`b_…` keys): the
    request's headers come masked, its body is masked here (as `LoggedBody` does)."""
    fastsql.execute(
        session,
        _RECORD_ATTEMPTS,
        {
            "rows": json.dumps(
                [
                    {
                        "id": r["b_id"],
                        "request_headers": r["b_request_headers"],
                        "request_body": mask_body(r["b_request_body"]),
                        "outcome": r["b_outcome"],
                        "duration_ms": r["b_duration"],
                        "status": r["b_status"],
                        "headers": r["b_headers"],
                        "body": r["b_body"],
                        "error": r["b_error"],
                    }
                    for r in rows
                ]
            )
        },
    )


def succeed(session: Session, rows: Sequence[dict[str, Any]], now: datetime) -> None:
    """Deliveries whose lease still holds end `succeeded` (`b_id`, `b_token`, `b_code`)."""
    fastsql.execute(
        session,
        _SUCCEED,
        {
            "now": now,
            "rows": json.dumps(
                [{"id": r["b_id"], "token": r["b_token"], "code": r["b_code"]} for r in rows]
            ),
        },
    )


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT `rows` (dicts with the same keys, the table's own values: no column of it may
    transform them on the way in) into `table` in one statement of fixed text."""
    columns = tuple(rows[0])
    # The rows of a batch share their few moments: each is formatted once.
    moment = functools.lru_cache(maxsize=None)(_json_time)
    fastsql.execute(
        session, _insert_text(table, columns), {"rows": json.dumps(list(rows), default=moment)}
    )


@functools.lru_cache(maxsize=32)
def _insert_text(table: Table, columns: tuple[str, ...]) -> TextClause:
    dialect = postgresql.dialect()
    typed = []
    for name in columns:
        column_type = table.c[name].type
        if isinstance(column_type, TypeDecorator):
            raise TypeError(f"{table.name}.{name} transforms its values: not for insert_rows")
        sql_type = "jsonb" if isinstance(column_type, JSON) else column_type.compile(dialect)
        typed.append(f"{name} {sql_type}")
    names = ", ".join(columns)
    return text(
        f"INSERT INTO {table.name} ({names}) SELECT {names} "
        f"FROM json_to_recordset(CAST(:rows AS json)) AS t({', '.join(typed)})"
    )


def _json_time(value: Any) -> str:
    """A naive UTC datetime in the rows' JSON, as PostgreSQL reads a timestamp."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a column value")


def publish_event(
    session: Session,
    values: dict[str, Any],
    deliveries: Sequence[tuple[str, str]],
    max_attempts: int,
) -> None:
    """INSERT an event (`values`, its row as `publishing` builds it) and a due delivery of it
    for each (delivery id, webhook id), in one statement, and commit (one round trip)."""
    ids = [delivery_id for delivery_id, _ in deliveries]
    webhook_ids = [webhook_id for _, webhook_id in deliveries]
    if any("," in item for item in ids + webhook_ids):
        raise ValueError("an id with a comma cannot be bound as a list")
    fastsql.execute_and_commit(
        session,
        _PUBLISH_EVENT,
        {
            "event_id": values["id"],
            "workspace_id": values["workspace_id"],
            "type": values["type"],
            "data": json.dumps(values["data"]),
            "now": values["created_at"],
            "idempotency_key": values["idempotency_key"],
            "request_hash": values["request_hash"],
            "max_attempts": max_attempts,
            "ids": ",".join(ids),
            "webhook_ids": ",".join(webhook_ids),
        },
    )
