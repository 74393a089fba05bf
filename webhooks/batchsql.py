"""Where the batch writes of the claim, the recorder and publishing go: on PostgreSQL one
statement of fixed text over arrays (`webhooks.pgbatch`), on SQLite plain SQL over tuples
(`webhooks.litebatch`). Both modules have the same functions, with the same arguments."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

from sqlalchemy import String, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import TypeDecorator

from webhooks import litebatch, pgbatch
from webhooks.models import Session


def of(session: Session) -> ModuleType:
    """The batch writes for the session's database."""
    return pgbatch if pgbatch.used_by(session) else litebatch


def among(column: Any, name: str, *, postgres: bool) -> Any:
    """`column IN (…)` with the list bound whole as `name`, one parameter: the statement's text
    is the same for every length of the list. An IN list is written out anew for each
    execution (a placeholder per item, by SQLAlchemy in Python), then parsed anew by the
    driver and planned anew by the database. On PostgreSQL the list is an array
    (`column = ANY(:name)`); on SQLite a JSON array read by `json_each`, which SQLite's planner
    turns into look-ups by key like an IN list's."""
    if postgres:
        return column == any_(bindparam(name, type_=ARRAY(String)))
    items = func.json_each(bindparam(name, type_=_JsonList())).table_valued("value")
    return column.in_(select(items.c.value))


class _JsonList(TypeDecorator[list[str]]):
    """A list of strings bound as one JSON array (for SQLite's `json_each`)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str:
        return json.dumps(list(value))
