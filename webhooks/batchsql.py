"""Where the batch writes of the claim, the recorder and publishing go: on PostgreSQL one
statement of fixed text over arrays (`webhooks.pgbatch`), on SQLite plain SQL over tuples
(`webhooks.litebatch`). Both modules have the same functions, with the same arguments."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

from sqlalchemy import String, any_, bindparam, func, select
from sqlalchemy.types import TypeDecorator

from webhooks import litebatch, pgbatch
from webhooks.fastsql import row_type
from webhooks.models import Session


def of(session: Session) -> ModuleType:
    """The batch writes for the session's database."""
    return pgbatch if pgbatch.used_by(session) else litebatch


def plain(result: Any) -> list[Any]:
    """A result's rows as named tuples, for the rows the worker reads each field of several
    times. A SQLAlchemy row finds a field by name only once Python's own look-up has failed,
    and that failure formats an AttributeError message first: 0.5 µs a field, ten times an
    index. A named tuple's fields are found in C."""
    return list(map(row_type(tuple(result.keys()))._make, result))


def among(column: Any, name: str, *, postgres: bool) -> Any:
    """`column IN (…)` with the list bound whole as `name`, one parameter: the statement's text
    is the same for every length of the list. An IN list is written out anew for each
    execution (a placeholder per item, by SQLAlchemy in Python), then parsed anew by the
    driver and planned anew by the database. On PostgreSQL the ids go joined by commas, read
    by `string_to_array` (`column = ANY(…)`); on SQLite as a JSON array read by `json_each`.
    Both databases still look each id up by key, as for an IN list."""
    if postgres:
        return column == any_(func.string_to_array(bindparam(name, type_=_Joined()), ","))
    items = func.json_each(bindparam(name, type_=_JsonList())).table_valued("value")
    return column.in_(select(items.c.value))


class _Joined(TypeDecorator[list[str]]):
    """A list of ids bound as one comma-separated string (for PostgreSQL's `string_to_array`):
    psycopg writes a list as an array element by element in Python, quoting each; a join is
    one call in C. Ids never hold a comma; one that did would be refused, not split."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str:
        items = list(value)
        if any("," in item for item in items):
            raise ValueError("an id with a comma cannot be bound as a list")
        return ",".join(items)


class _JsonList(TypeDecorator[list[str]]):
    """A list of strings bound as one JSON array (for SQLite's `json_each`)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str:
        return json.dumps(list(value))
