"""Group commit: calls of one process that write at the same moment share one transaction.

SQLite lets one transaction write at a time, and under load that lock is what the service
waits for: in `make bench` it was held 80-90 % of the time, publish calls' transactions for
two fifths of it. A transaction pays for more than its rows: the queue for the lock, the page
cache that another process's commit made stale, and at its commit every page it touched,
written once to the log however many rows changed on it. One event to 10 webhooks touched
about 50 pages (a leaf of each index, ten of the per-webhook log's); two events in one
transaction touched 34 pages each, four 22, and cost 25 and 40 % less.

`Group.write` queues a call's rows; the first call to arrive leads: it takes the database's
write lock (waiting behind other processes' transactions, while more calls queue up), then
writes the rows of every call queued by then, its own first, in one transaction. The others
wait for its commit and answer as if they had written alone, then the first call queued
after them leads the next group. Every call still answers only once its rows are committed.

A group's write that fails (a webhook deleted meanwhile breaks its deliveries' foreign key;
the database is out of reach) is rolled back whole, and every call of the group then writes
alone, as it would have without the group: no call fails for another's rows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from webhooks.models import Session

log = logging.getLogger(__name__)

_QUEUED, _LEAD, _WRITTEN, _ALONE = "queued", "lead", "written", "alone"


class _Call:
    __slots__ = ("item", "state", "turn")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.state = _QUEUED
        self.turn = threading.Event()


class Group:
    """The calls of this process waiting to write with `write(session, items)`, which writes
    the items in the session's transaction and commits it."""

    def __init__(self, write: Callable[[Session, Sequence[Any]], None]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._queue: list[_Call] = []
        self._busy = False  # a call leads a group now

    def write(self, session: Session, item: Any) -> bool:
        """Write `item` with the group, committed when this returns True; False: nothing of it
        was written, the caller writes it alone (the group's transaction failed)."""
        call = _Call(item)
        with self._lock:
            self._queue.append(call)
            if not self._busy:
                self._busy = True
                call.state = _LEAD
        if call.state != _LEAD:
            call.turn.wait()
        if call.state == _LEAD:
            self._lead(session)
        return call.state == _WRITTEN

    def queued(self) -> int:
        """How many calls wait for the group that will write them (the leader's included)."""
        with self._lock:
            return len(self._queue)

    def _lead(self, session: Session) -> None:
        group: list[_Call] | None = None
        state = _ALONE
        try:
            # The write lock first (on SQLite, BEGIN IMMEDIATE waits in its queue): the calls
            # that arrive meanwhile join this group.
            session.connection()
            group = self._take()
            self._write(session, [call.item for call in group])
            state = _WRITTEN
        except Exception:
            log.warning("a group of writes failed; each call writes alone", exc_info=True)
            try:
                session.rollback()
            except Exception:  # the connection is gone: each call meets that itself
                log.debug("rollback after a failed group write failed", exc_info=True)
        finally:
            if group is None:
                group = self._take()
            self._hand_over()
            for call in group:
                call.state = state
                call.turn.set()

    def _take(self) -> list[_Call]:
        with self._lock:
            group, self._queue = self._queue, []
        return group

    def _hand_over(self) -> None:
        """The first call queued after this group leads the next one."""
        with self._lock:
            if not self._queue:
                self._busy = False
                return
            following = self._queue[0]
            following.state = _LEAD
        following.turn.set()
