"""The hot paths' statements sent to the driver's own cursor, in the session's transaction.

On a 2-core VM, SQLAlchemy spent 100-200 µs of CPU on each statement a session executed (its
execution context, the processing of every parameter, the result object and its rows)
against 15-50 µs for the driver's own cursor and the same SELECT, on SQLite as on
PostgreSQL. A publish call sends four statements and a worker about ten per batch; sent here,
a publish call costs 7 % (SQLite) and 12 % (PostgreSQL) fewer instructions, a delivery's claim
and record 7 % and 13 % (`bench/instructions.py`).

Nothing else changes: each statement is still built with SQLAlchemy and compiled by it, once
per database (`_plan`); its values are bound and its rows read through the processors
SQLAlchemy itself would apply (a datetime written as SQLite's text, a boolean read back from
SQLite's integer, a secret decrypted); and it runs on the session's connection, inside the
transaction the session began (`session.connection()`: SQLite's write lock, psycopg's
transaction), which the session still commits or rolls back. Rows come back as named tuples
(`batchsql.plain`). Statements are counted as SQLAlchemy's are (`watch`: `stmtcount`).
"""

from __future__ import annotations

import copy
import functools
import threading
from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc

from webhooks import pgwire
from webhooks.models import Session


@dataclass(frozen=True)
class _Plan:
    """A statement compiled for one database, with what its values and rows go through."""

    sql: str
    order: tuple[str, ...] | None  # positional parameters' names (SQLite); None: by name
    defaults: dict[str, Any]  # the statement's own values (literals bound by SQLAlchemy)
    binds: tuple[tuple[str, Callable[[Any], Any]], ...]
    row: Any  # the named tuple of a row (None: the statement returns none)
    results: tuple[tuple[int, Callable[[Any], Any]], ...]  # the columns read otherwise
    wire: pgwire.Statement | None = None  # PostgreSQL: sent through libpq (`pgwire`)


_plans: dict[tuple[int, str], tuple[Any, _Plan]] = {}
_lock = threading.Lock()
# Called with each statement's text and parameters before it is sent: SQLAlchemy's
# `before_cursor_execute` listeners do not see these statements (`webhooks.stmtcount`, tests).
_watchers: list[Callable[[str, Any], None]] = []


def watch(watcher: Callable[[str, Any], None]) -> None:
    """Call `watcher(sql, parameters)` before each statement sent here."""
    _watchers.append(watcher)


def unwatch(watcher: Callable[[str, Any], None]) -> None:
    _watchers.remove(watcher)


_DIALECT = "webhooks_dialect"


def dialect(session: Session) -> str:
    """The name of the session's database ("sqlite", "postgresql"), asked of its engine once
    per session: Flask-SQLAlchemy finds a session's engine anew each time (4 µs), and the
    hot paths ask about ten times a call."""
    info = session.info
    name = info.get(_DIALECT)
    if name is None:
        name = info[_DIALECT] = session.get_bind().dialect.name
    return str(name)


def rows(session: Session, statement: Any, params: Mapping[str, Any] | None = None) -> list[Any]:
    """Run `statement` (built with SQLAlchemy: a select, or a write with RETURNING) with
    `params`; its rows as named tuples."""
    connection = session.connection()
    plan = _plan(statement, connection.dialect)
    cursor = _execute(connection, plan, params or {})
    found = cursor.fetchall()
    # SQL text declares no columns: its rows are named as the driver names them.
    row = plan.row or row_type(tuple(column[0] for column in cursor.description))
    cursor.close()
    return converted(found, plan.results, row._make)


def converted(
    found: Iterable[Sequence[Any]],
    converters: Sequence[tuple[int, Callable[[Any], Any]]],
    make: Callable[[Any], Any],
) -> list[Any]:
    """Each row of `found` made by `make`, the values at the converters' places converted
    first: the others stay as they are, taken whole (no Python step per value)."""
    if not converters:
        return list(map(make, found))
    out = []
    for row in found:
        values = list(row)
        for i, convert in converters:
            values[i] = convert(values[i])
        out.append(make(values))
    return out


def execute(session: Session, statement: Any, params: Mapping[str, Any] | None = None) -> int:
    """Run `statement` (a write without RETURNING) with `params`; how many rows it changed."""
    connection = session.connection()
    cursor = _execute(connection, _plan(statement, connection.dialect), params or {})
    changed = int(cursor.rowcount)
    cursor.close()
    return changed


def driver(session: Session) -> Any:
    """The driver's cursor on the session's connection, in its transaction, for SQL written
    in the driver's own terms (`webhooks.litebatch`: `?` and tuples)."""
    connection = session.connection()
    return _Driver(connection, _cursor(connection))


class _Driver:
    """A cursor whose statements are watched (`watch`) and whose errors are SQLAlchemy's."""

    def __init__(self, connection: Any, cursor: Any) -> None:
        self.connection = connection
        self.cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        return _send(self.connection, self.cursor, "execute", sql, params)

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> Any:
        return _send(self.connection, self.cursor, "executemany", sql, params)


def _execute(
    connection: Any, plan: _Plan, params: Mapping[str, Any], *, commit: bool = False
) -> Any:
    """`plan` run with `params` (and committed with its transaction when `commit`, which only
    PostgreSQL's statements take); a cursor, or what reads as one."""
    values = {**plan.defaults, **params}
    for name, bind in plan.binds:
        values[name] = bind(values[name])
    if plan.wire is not None:
        assert plan.order is not None  # PostgreSQL's statements are positional here
        ordered = [values[n] for n in plan.order]
        for watcher in _watchers:
            watcher(plan.sql, ordered)
        dbapi_connection = connection.connection.dbapi_connection
        try:
            return pgwire.run(dbapi_connection, plan.wire, ordered, commit=commit)
        except connection.dialect.loaded_dbapi.Error as error:
            raise _raised(connection, None, "execute", plan.sql, ordered, error) from error
    assert not commit
    cursor = _cursor(connection)
    if plan.order is None:
        _send(connection, cursor, "execute", plan.sql, values)
    else:
        _send(connection, cursor, "execute", plan.sql, tuple(values[n] for n in plan.order))
    return cursor


def execute_and_commit(session: Session, statement: Any, params: Mapping[str, Any]) -> None:
    """Run `statement` (a write) and commit the session's transaction in one round trip, on
    PostgreSQL (the statement and the COMMIT go together, `pgwire`, and the session's own
    commit then finds nothing left to do). Errors are raised as `execute` raises them, the
    transaction left for the caller to roll back."""
    connection = session.connection()
    _execute(connection, _plan(statement, connection.dialect), params, commit=True)
    session.commit()


def _send(connection: Any, cursor: Any, method: str, sql: str, params: Any) -> Any:
    """`cursor.<method>(sql, params)`, watched; a driver's error raised as SQLAlchemy raises
    it (`_raised`)."""
    for watcher in _watchers:
        watcher(sql, params)
    try:
        return getattr(cursor, method)(sql, params)
    except connection.dialect.loaded_dbapi.Error as error:
        raise _raised(connection, cursor, method, sql, params, error) from error


def _raised(
    connection: Any, cursor: Any, method: str, sql: str, params: Any, error: Exception
) -> Exception:
    """A driver's error as SQLAlchemy raises it (an IntegrityError is caught as such by the
    callers), with a connection the database dropped invalidated, as SQLAlchemy does, so
    that the pool replaces it."""
    dialect = connection.dialect
    dbapi_connection = connection.connection.dbapi_connection
    dropped = bool(dialect.is_disconnect(error, dbapi_connection, cursor))
    if dropped:
        connection.invalidate(error)
    return exc.DBAPIError.instance(
        sql,
        params,
        error,
        dialect.loaded_dbapi.Error,
        connection_invalidated=dropped,
        dialect=dialect,
        ismulti=method == "executemany",
    )


@functools.lru_cache(maxsize=64)
def row_type(fields: tuple[str, ...]) -> Any:
    """A named tuple type for rows of these fields."""
    return namedtuple("Row", fields, rename=True)  # noqa: PYI024 - known only at run time


def _cursor(connection: Any) -> Any:
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None  # a session's connection is checked out
    return dbapi_connection.cursor()


# Statements sent here are built once (module constants, or cached by their builder); were
# one built per call, its plans would be dropped now and then rather than pile up.
MAX_PLANS = 512


def _plan(statement: Any, dialect: Any) -> _Plan:
    key = (id(statement), dialect.name)
    found = _plans.get(key)
    if found is None:
        with _lock:
            if len(_plans) >= MAX_PLANS:
                _plans.clear()
            # The statement is kept with its plan: its id is never another's meanwhile.
            found = _plans.setdefault(key, (statement, _compile(statement, dialect)))
    return found[1]


def _compile(statement: Any, dialect: Any) -> _Plan:
    postgres = dialect.name == "postgresql"
    # PostgreSQL's statements go as PostgreSQL writes them, `$1`… (`pgwire`).
    compiled = statement.compile(dialect=_numbered(dialect) if postgres else dialect)
    if "POSTCOMPILE" in compiled.string:
        raise ValueError("a statement with expanding parameters cannot be sent as it is")
    required = {name for name, bind in compiled.binds.items() if bind.required}
    defaults = compiled.construct_params(dict.fromkeys(required))
    for name in required:
        defaults.pop(name, None)
    binds = []
    for name in (*defaults, *required):
        bind = compiled.binds[name]
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            binds.append((name, process))
    returned = list(getattr(statement, "exported_columns", ()) or ())
    names = tuple(column.key for column in returned)
    processors = [
        column.type.dialect_impl(dialect).result_processor(dialect, None) for column in returned
    ]
    results = tuple((i, f) for i, f in enumerate(processors) if f is not None)
    return _Plan(
        sql=compiled.string,
        order=tuple(compiled.positiontup) if compiled.positiontup is not None else None,
        defaults=defaults,
        binds=tuple(binds),
        row=row_type(names) if names else None,
        results=results,
        wire=pgwire.Statement(compiled.string.encode()) if postgres else None,
    )


@functools.lru_cache(maxsize=4)
def _numbered(dialect: Any) -> Any:
    """`dialect`, but compiling its parameters as `$1`, `$2`… in order."""
    numbered = copy.copy(dialect)
    numbered.paramstyle = "numeric_dollar"
    numbered.positional = True
    return numbered
