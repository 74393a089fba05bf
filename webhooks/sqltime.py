"""Time arithmetic in SQL that reads the same on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class epoch(FunctionElement[float]):  # noqa: N801  (reads like the SQL function it stands for)
    """Seconds since 1970 of a naive UTC datetime column, as a float."""

    type = Float()
    name = "epoch"
    inherit_cache = True


@compiles(epoch)
def _epoch_default(element: epoch, compiler: Any, **kw: Any) -> str:
    return f"CAST(EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)}) AS FLOAT)"


@compiles(epoch, "sqlite")
def _epoch_sqlite(element: epoch, compiler: Any, **kw: Any) -> str:
    # Whole seconds from strftime('%s') are exact, so hour boundaries never blur; the
    # milliseconds come from '%f' ("SS.SSS") less '%S' ("SS").
    arg = compiler.process(element.clauses, **kw)
    return (
        f"(CAST(strftime('%s', {arg}) AS INTEGER)"
        f" + CAST(strftime('%f', {arg}) AS REAL) - CAST(strftime('%S', {arg}) AS INTEGER))"
    )
