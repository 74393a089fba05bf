"""SQL statements and transactions counted per process, for the benchmark (bench/README.md).

`make bench` reports how many statements each delivery costs, on SQLite as on PostgreSQL,
where pg_stat_statements needs a server restart to load. When WEBHOOK_COUNT_STATEMENTS names a
path, the app factory calls `install`: every engine of the process counts what it sends, and
the counts are written to `<path>.<pid>` (`statements transactions checkouts`) every half
second and at exit. Pool checkouts are counted because on PostgreSQL one may be a round trip
of its own (the ping of a connection that sat idle, `webhooks.liveness`) that no statement
event sees. An executemany counts once. Unset, nothing is installed and nothing is counted.
"""

from __future__ import annotations

import atexit
import os
import threading
import time

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from webhooks import fastsql

WRITE_EVERY_S = 0.5


class _Counts:
    """This process's counts, bumped by any thread, and their writer."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.statements = self.transactions = self.checkouts = 0

    def statement(self, _conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        # SQLite's BEGIN IMMEDIATE is sent as a statement, psycopg's BEGIN is not: neither is
        # counted, so both databases count the same statements (transactions are counted apart).
        if not statement.startswith("BEGIN"):
            with self.lock:
                self.statements += 1

    def transaction(self, *_args: object) -> None:
        with self.lock:
            self.transactions += 1

    def checkout(self, *_args: object) -> None:
        with self.lock:
            self.checkouts += 1

    def write(self) -> None:
        """Replace the file whole, so a reader never sees half a line."""
        with self.lock:
            line = f"{self.statements} {self.transactions} {self.checkouts}\n"
        target = f"{self.path}.{os.getpid()}"
        with open(f"{target}.tmp", "w") as fh:
            fh.write(line)
        os.replace(f"{target}.tmp", target)

    def write_forever(self) -> None:
        # Written even when unchanged: a fresh file tells the reader the counts are current.
        while True:
            try:
                self.write()
            except OSError:
                pass
            time.sleep(WRITE_EVERY_S)

    def start(self) -> None:
        threading.Thread(target=self.write_forever, name="stmtcount", daemon=True).start()

    def restart_in_child(self) -> None:
        """A forked child counts its own statements from zero, in its own file."""
        self.lock = threading.Lock()
        self.statements = self.transactions = self.checkouts = 0
        self.start()


_installed: _Counts | None = None


def install(path: str) -> None:
    """Count every statement, commit or rollback and pool checkout of this process, once."""
    global _installed
    if _installed is not None:
        return
    counts = _installed = _Counts(path)
    event.listen(Engine, "before_cursor_execute", counts.statement)
    fastsql.watch(lambda sql, _params: counts.statement(None, None, sql))
    event.listen(Engine, "commit", counts.transaction)
    event.listen(Engine, "rollback", counts.transaction)
    event.listen(Pool, "checkout", counts.checkout)
    atexit.register(counts.write)
    os.register_at_fork(after_in_child=counts.restart_in_child)
    counts.start()
