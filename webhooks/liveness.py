"""A pooled PostgreSQL connection is pinged before use only when it may have gone stale.

SQLAlchemy's `pool_pre_ping` sends a round trip (`SELECT 1`, in autocommit) at every checkout:
on PostgreSQL that was one in three of the database's transactions under load, and 2.4 % of a
publish call's instructions on the web side (`bench/instructions.py`). A connection handed back
to the pool a moment ago is as alive as it was then, and a busy service checks its connections
out again within milliseconds. So a connection is pinged when it has been idle for longer than
`FRESH_SECONDS`, or when any connection of the pool has been found dead (invalidated) since
it was handed back: a restart of the database is seen by the first request that meets it, and
every other connection is then pinged before it is used again. A ping that fails makes the
pool open a new connection instead (SQLAlchemy's `DisconnectionError`, as for `pool_pre_ping`).

The cost: a request that uses a connection the database dropped less than `FRESH_SECONDS` after
its last use fails once (the caller sees the database error; an API client retries), as it would
with `pool_pre_ping` if the database dropped it between the ping and the query.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine

FRESH_SECONDS = 1.0
_IDLE_SINCE = "webhooks_idle_since"


class _Pings:
    """One engine's listeners: when each connection was handed back, and when the pool last
    found a connection dead."""

    def __init__(self, engine: Engine, fresh: float) -> None:
        self.engine = engine
        self.fresh = fresh
        self.distrust_before = 0.0  # connections idle since before this are pinged

    def idle_from_now(self, _dbapi_connection: Any, record: Any) -> None:
        """A connection just opened or handed back."""
        record.info[_IDLE_SINCE] = time.monotonic()

    def invalidated(self, _dbapi_connection: Any, _record: Any, _exception: Any) -> None:
        self.distrust_before = time.monotonic()

    def checked_out(self, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is not None and since >= self.distrust_before:
            if time.monotonic() - since <= self.fresh:
                return
        try:
            alive = self.engine.dialect.do_ping(dbapi_connection)
        except self.engine.dialect.loaded_dbapi.Error as error:
            raise exc.DisconnectionError(f"the database dropped the connection: {error}") from error
        if not alive:
            raise exc.DisconnectionError("the database dropped the connection")


def install(engine: Engine, fresh: float = FRESH_SECONDS) -> None:
    """Ping `engine`'s connections at checkout only when they may be stale (PostgreSQL; the
    engine must not use `pool_pre_ping`). SQLite's connections are files: nothing to do."""
    if engine.dialect.name == "sqlite":
        return
    pings = _Pings(engine, fresh)
    event.listen(engine.pool, "connect", pings.idle_from_now)
    event.listen(engine.pool, "checkin", pings.idle_from_now)
    event.listen(engine.pool, "invalidate", pings.invalidated)
    event.listen(engine.pool, "soft_invalidate", pings.invalidated)
    event.listen(engine.pool, "checkout", pings.checked_out)
