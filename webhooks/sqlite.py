"""SQLite as a server-grade default: WAL, a busy timeout, foreign keys, immediate writes.

SQLite lets one transaction write at a time, and a connection that finds the lock taken
sleeps in steps of up to 100 ms before it looks again: under load most of a worker's time
went to those naps. Here every transaction first queues on an exclusive `flock` of a file
next to the database, which the kernel hands over the moment its holder commits, and only
then takes SQLite's own lock (BEGIN IMMEDIATE), which is then free.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import ColumnElement, event, literal_column
from sqlalchemy.engine import Connection as SAConnection
from sqlalchemy.engine import Engine
from sqlalchemy.orm import scoped_session

from webhooks import fastsql

# Short holds are the rule: look again a few times before queueing in the kernel.
_QUICK_LOOKS = (0.0, 0.0001, 0.0002)


class Connection(sqlite3.Connection):
    """A connection whose transactions queue on the database's lock file."""

    def __init__(self, database: str, timeout: float = 5.0, **kwargs: Any) -> None:
        super().__init__(database, timeout, **kwargs)
        self._lock_fd: int | None = None
        self._held = False
        path = str(database)
        if path and path != ":memory:" and not path.startswith("file:"):
            self._lock_fd = os.open(path + "-lock", os.O_RDWR | os.O_CREAT, 0o600)

    def take_lock(self) -> None:
        """Wait for the write lock: a few quick looks, then in the kernel's queue."""
        if self._lock_fd is None or self._held:
            return
        for pause in _QUICK_LOOKS:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._held = True
                return
            except BlockingIOError:
                time.sleep(pause)
        # Woken the moment the holder commits; a holder's transaction lasts at most as long
        # as its request or job (none is kept open across a network call).
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._held = True

    def give_lock(self) -> None:
        if self._held and self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            self._held = False

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.give_lock()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.give_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.give_lock()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


def used_by(session: Any) -> bool:
    """The session's database is SQLite."""
    return fastsql.dialect(session) == "sqlite"


def unindexed(column: Any) -> ColumnElement[Any]:
    """`+table.column`: the same value, but SQLite's planner will not search an index on it.

    SQLite keeps no statistics (the service never runs ANALYZE), so given `id IN (…)` and
    `status = 'pending'` it may walk every pending row through the status index rather than
    look the ids up by key; this says which index not to use (SQLite only: PostgreSQL has no
    unary plus on text)."""
    return literal_column(f"+{column.table.name}.{column.name}", type_=column.type)


def unindexed_on(session: Any, column: Any) -> Any:
    """`column`, written `unindexed` when the session's database is SQLite."""
    return unindexed(column) if used_by(session) else column


def install(engine: Engine) -> None:
    """Give a SQLite engine's connections these settings and its transactions the lock queue
    (the app factory calls it for the app's engine; other databases are left as they are)."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _on_connect)
        event.listen(engine, "begin", _on_begin)
        _adapt_as_they_are()


def _adapt_as_they_are() -> None:
    """Let sqlite3 bind None, bools and bytes without asking their types for an adapter.

    sqlite3 looks for an adapter for every parameter that is not exactly an int, a float, a
    str or a bytearray; for None, a bool and bytes the search fails on the way by formatting
    an AttributeError's message and throwing it away (`type object 'PrepareProtocol' has no
    attribute '__adapt__'`). A publish's rows carry dozens of such values: the misses were
    1.4 % of a publish call's instructions (under 1 % of the worker's claim and record).
    Registered adapters are found first, and these bind the same values as before: None as
    NULL (`{}.get` answers None for anything), a bool as its int, bytes as themselves."""
    nothing: dict[None, None] = {}
    sqlite3.register_adapter(type(None), cast(Callable[[None], None], nothing.get))
    sqlite3.register_adapter(bool, int)
    sqlite3.register_adapter(bytes, bytes)


# SQLite copies the write-ahead log back into the database in the commit that takes it past
# this many pages, fsync included, while that commit still holds the write lock (every 60
# publishes or so at its default of 1,000). The scheduler copies it twice a second instead
# (`checkpoint`); this is the backstop for when no scheduler runs (40 MB of log).
AUTOCHECKPOINT_PAGES = 10_000


def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    # We issue BEGIN ourselves (below); pysqlite's own transaction handling is turned off.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
    cursor.close()


def checkpoint(engine: Engine) -> tuple[int, int, int] | None:
    """Copy the log's committed pages into the database file, waiting for and blocking no
    writer (a PASSIVE checkpoint, outside any transaction and the lock queue): (busy, pages in
    the log, pages copied), or None for another database."""
    if engine.dialect.name != "sqlite":
        return None
    raw = engine.raw_connection()
    try:
        busy, logged, copied = raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return busy, logged, copied
    finally:
        raw.close()


# The execution option of a transaction that only reads (`reading`).
READ_ONLY = "webhooks_read_only"


def reading(session: Any) -> bool:
    """Let the session's next transaction only read: on SQLite it then neither queues for the
    write lock nor holds it (WAL readers see the last commit and block no writer). True when
    it did (SQLite, and no transaction begun yet): end that transaction before writing."""
    if isinstance(session, scoped_session):
        session = session()
    if fastsql.dialect(session) != "sqlite" or session.in_transaction():
        return False
    session.connection(execution_options={READ_ONLY: True})
    return True


def reading_now(session: Any) -> bool:
    """The session is in a transaction begun by `reading` (SQLite, only reads so far)."""
    if isinstance(session, scoped_session):
        session = session()
    if not session.in_transaction() or fastsql.dialect(session) != "sqlite":
        return False
    return bool(session.connection().get_execution_options().get(READ_ONLY))


def _on_begin(conn: SAConnection) -> None:
    if conn.get_execution_options().get(READ_ONLY):
        conn.exec_driver_sql("BEGIN")
        return
    # BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so a
    # transaction that reads and then writes can never fail with SQLITE_BUSY half-way.
    dbapi_connection = conn.connection.dbapi_connection
    if isinstance(dbapi_connection, Connection):
        dbapi_connection.take_lock()
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        if isinstance(dbapi_connection, Connection):
            dbapi_connection.give_lock()
        raise
