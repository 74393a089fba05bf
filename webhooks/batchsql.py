"""Where the batch writes of the claim, the recorder and publishing go: on PostgreSQL one
statement of fixed text over arrays (`webhooks.pgbatch`), on SQLite plain SQL over tuples
(`webhooks.litebatch`). Both modules have the same functions, with the same arguments."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from sqlalchemy import String, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY

from webhooks import litebatch, pgbatch
from webhooks.models import Session


def of(session: Session) -> ModuleType:
    """The batch writes for the session's database."""
    return pgbatch if pgbatch.used_by(session) else litebatch


def among(column: Any, name: str, *, postgres: bool) -> Any:
    """`column IN (…)` with the list bound as `name`. On PostgreSQL `column = ANY(:name)`, one
    array parameter: the statement's text is the same for every length of the list, so psycopg
    prepares it once and PostgreSQL plans it once, where an IN list is written out anew for each
    execution (its text, its casts, a plan for each length)."""
    if postgres:
        return column == any_(bindparam(name, type_=ARRAY(String)))
    return column.in_(bindparam(name, expanding=True))
