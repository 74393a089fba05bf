"""PostgreSQL: the hot paths' statements sent through libpq itself, each prepared once per
connection, with the transaction's BEGIN (and, when asked, its COMMIT) in the same round trip.

psycopg's cursor spent 50-85 µs of a 2-core VM's CPU on each execution of a prepared
statement (its Python: the query's conversion, the prepare manager, the result's
bookkeeping, a generator per step) against 25-40 µs for libpq's call and the same statement;
and it sends a transaction's BEGIN as a round trip of its own. Here a statement goes as
libpq's Bind and Execute of a statement prepared once on the connection, behind the BEGIN that
opens the transaction when none is open (as psycopg would have sent it, with the connection's
isolation level), and ahead of the COMMIT when the caller commits with it: one pipeline, one
round trip, read with psycopg's own waits (in C, with Python's lock released while waiting).
Values are written and rows read by psycopg's adapters (one `Transformer`, in C): the same
texts and the same Python values as through its cursor.

The connection's prepared statements are its own here: psycopg is told never to prepare
(`prepare_threshold=None`, `CONNECT_ARGS`), as its prepare manager answers a ROLLBACK with a
DEALLOCATE ALL, which would drop these too.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from psycopg import errors, generators, pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.types.json import Json, Jsonb

# What the service's PostgreSQL connections are opened with.
CONNECT_ARGS = {"prepare_threshold": None}

_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)
_IDLE = pq.TransactionStatus.IDLE
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_TEXT = PyFormat.TEXT
# A parameter's type, when the statement's text does not say it (`$1` rather than
# `$1::VARCHAR`), taken from its first value: an integer as bigint, whatever its size (psycopg
# picks the smallest type that holds each value, which a prepared statement cannot follow);
# text and NULL as unknown, for PostgreSQL to infer from where the parameter stands.
_TYPES: tuple[tuple[type, int], ...] = (
    (bool, 16),
    (int, 20),
    (float, 701),
    (datetime, 1114),
    (date, 1082),
    (Jsonb, 3802),
    (Json, 114),
)
_PREPARED = "_webhooks_prepared"  # the connection's attribute: name -> when it was prepared
# A statement is planned anew this long after it was prepared: PostgreSQL keeps a generic plan
# for a prepared statement once it costs no more than the first few custom ones, and costs it
# with the tables' sizes of that moment (a join planned while a table held a few hundred rows
# hashed all of it once it held thousands: `pgbatch.by_key_without_flush`).
REPLAN_SECONDS = 60.0
_names = itertools.count(1)
_names_lock = threading.Lock()


def _new_name() -> bytes:
    with _names_lock:
        return b"webhooks_%d" % next(_names)


@dataclass(frozen=True)
class Statement:
    """A statement in PostgreSQL's own terms: `$1`… in order, prepared under `name`."""

    sql: bytes
    name: bytes = field(default_factory=_new_name)


class Answer:
    """A statement's result, read as a cursor's: its rows, their columns' names, how many rows
    it changed."""

    def __init__(self, transformer: Any, result: Any) -> None:
        self._result = result
        self._transformer = transformer
        self.rowcount = result.command_tuples if result.command_tuples is not None else -1

    @property
    def description(self) -> list[tuple[str]]:
        result = self._result
        return [(result.fname(i).decode(),) for i in range(result.nfields)]

    def fetchall(self) -> list[tuple[Any, ...]]:
        result = self._result
        if result.ntuples == 0:
            return []
        self._transformer.set_pgresult(result)
        return self._transformer.load_rows(0, result.ntuples, tuple)

    def close(self) -> None:
        self._result = None


def run(
    connection: Any, statement: Statement, values: Sequence[Any], *, commit: bool = False
) -> Answer:
    """Execute `statement` with `values` on psycopg's `connection`, in its transaction (begun
    here when none is open, unless the connection is in autocommit), committed with it when
    `commit`. Raises psycopg's error for a failed statement, as its cursor would."""
    pgconn = connection.pgconn
    prepared: dict[bytes, float] | None = connection.__dict__.get(_PREPARED)
    if prepared is None:
        connection.prepare_threshold = None  # (`CONNECT_ARGS`) on a connection opened elsewhere
        prepared = connection.__dict__[_PREPARED] = {}
    transformer = Transformer(connection)
    params = transformer.dump_sequence(values, [_TEXT] * len(values))
    commands: list[Callable[[], None]] = []
    begins = not connection.autocommit and pgconn.transaction_status == _IDLE
    if begins:
        start = connection._get_tx_start_command()  # BEGIN, with the isolation level if set
        commands.append(lambda: pgconn.send_query_params(start, None))
    now = time.monotonic()
    since = prepared.get(statement.name)
    fresh = since is None or now - since > REPLAN_SECONDS
    if fresh:
        if since is not None:
            drop = b"DEALLOCATE " + statement.name
            commands.append(lambda: pgconn.send_query_params(drop, None))
        types = [_type_of(v) for v in values]
        commands.append(lambda: pgconn.send_prepare(statement.name, statement.sql, types))
    executed = len(commands)
    commands.append(lambda: pgconn.send_query_prepared(statement.name, params))
    if commit:
        commands.append(lambda: pgconn.send_query_params(b"COMMIT", None))
    with connection.lock:
        results = _exchange(connection, pgconn, commands)
    if fresh and len(results) >= executed:
        # A statement outlives a rolled back transaction: prepared (or dropped), whatever
        # became of the rest.
        if results[executed - 1].status in _OK:
            prepared[statement.name] = now
        elif since is not None and results[executed - 2].status in _OK:
            del prepared[statement.name]
    failed = next((r for r in results if r.status not in _OK), None)
    if failed is not None or len(results) != len(commands):
        error = _error(connection, failed)
        if isinstance(error, errors.InvalidSqlStatementName):
            # Deallocated behind our back (DEALLOCATE ALL): prepared anew from now on, and
            # at once when the failed transaction was this call's own.
            prepared.clear()
            if begins:
                with connection.lock:
                    _exchange(
                        connection, pgconn, [lambda: pgconn.send_query_params(b"ROLLBACK", None)]
                    )
                return run(connection, statement, values, commit=commit)
        raise error
    return Answer(transformer, results[executed])  # the values' transformer reads the rows


def _exchange(connection: Any, pgconn: Any, commands: list[Callable[[], None]]) -> list[Any]:
    """Send `commands` in one pipeline, then read a result for each (a failed one's followers
    come back aborted) up to the pipeline's end."""
    pgconn.enter_pipeline_mode()
    try:
        for command in commands:
            command()
        pgconn.pipeline_sync()
        connection.wait(generators.send(pgconn))
        results: list[Any] = []
        while True:
            group = connection.wait(generators.fetch_many(pgconn))
            if not group or group[0].status == _SYNC:
                return results
            results.append(group[0])
    finally:
        if pgconn.status == pq.ConnStatus.OK:
            try:
                pgconn.exit_pipeline_mode()
            except errors.Error:
                pgconn.finish()  # left mid-pipeline: the pool replaces a closed connection


def _type_of(value: Any) -> int:
    for kind, oid in _TYPES:
        if isinstance(value, kind):
            return oid
    return 0


def _error(connection: Any, failed: Any) -> Exception:
    """psycopg's error for a failed result (by its SQLSTATE: a unique violation is an
    IntegrityError), or an OperationalError when the connection broke."""
    if failed is not None and failed.error_field(pq.DiagnosticField.SQLSTATE):
        return errors.error_from_result(failed, encoding=connection.info.encoding)
    message = failed.error_message.decode(errors="replace") if failed is not None else ""
    return errors.OperationalError(message or connection.pgconn.get_error_message())
