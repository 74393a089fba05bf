"""Where the batch writes of the claim, the recorder and publishing go: on PostgreSQL one
statement of fixed text over arrays (`webhooks.pgbatch`), on SQLite plain SQL over tuples
(`webhooks.litebatch`). Both modules have the same functions, with the same arguments."""

from __future__ import annotations

from types import ModuleType

from webhooks import litebatch, pgbatch
from webhooks.models import Session


def of(session: Session) -> ModuleType:
    """The batch writes for the session's database."""
    return pgbatch if pgbatch.used_by(session) else litebatch
