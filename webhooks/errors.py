"""The domain's answer to input it refuses: one error type that every layer shares.

The domain raises `Invalid` with a contract error code (docs/API.md section 5), a message for a
person, the message of each field at fault, and the HTTP status the API answers with; the API
turns it into its JSON error body, the dashboard shows each field's message next to its field.
`Problems` gathers every field's Invalid of one input, to answer them all at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Invalid(Exception):
    """Input that cannot be saved: a contract error code, a message and per-field messages."""

    code: str
    message: str
    fields: dict[str, str] = field(default_factory=dict)
    status: int = 400


class _Failed:
    """What a check that found a problem gives instead of a value."""

    def __repr__(self) -> str:
        return "FAILED"


FAILED: Any = _Failed()


class Problems:
    """Every field's problem in one input, answered at once.

    `run` calls a check and records the Invalid it raises (its value is then FAILED), so that
    the other fields are checked all the same; `raise_any` raises one Invalid whose `fields`
    holds every problem found, with the code and message of the first in the input's field
    order (a field the input does not have comes before all: often a misspelt one, which
    explains the problem of the field it was meant to be).
    """

    def __init__(self) -> None:
        self.found: list[Invalid] = []

    def run(self, check: Callable[..., Any], *args: Any) -> Any:
        """`check(*args)`, or FAILED once its problem is recorded."""
        try:
            return check(*args)
        except Invalid as exc:
            self.found.append(exc)
            return FAILED

    def failed(self, *names: str) -> bool:
        """Whether a field of these (or a part of one, "template_params.email") has a problem."""
        return any(
            key.split(".", 1)[0] in names for problem in self.found for key in problem.fields
        )

    def raise_any(self, order: Sequence[str]) -> None:
        """One Invalid for every problem found, if any; `order` is the input's fields'."""
        if not self.found:
            return

        def rank(key: str) -> int:
            name = key.split(".", 1)[0]
            return order.index(name) + 1 if name in order else 0

        ranked = sorted(self.found, key=lambda problem: min(map(rank, problem.fields), default=0))
        fields: dict[str, str] = {}
        for problem in ranked:
            for key, message in problem.fields.items():
                fields.setdefault(key, message)
        first = ranked[0]
        raise Invalid(
            first.code,
            first.message,
            dict(sorted(fields.items(), key=lambda kv: rank(kv[0]))),
            first.status,
        )

    def raise_listed(self) -> None:
        """One `validation_error` for every problem found, if any, each named in its message
        too (in the order found), for inputs whose problems are few and plain."""
        if not self.found:
            return
        fields = {key: message for problem in self.found for key, message in problem.fields.items()}
        listed = "; ".join(f"{key}: {message}" for key, message in fields.items())
        raise Invalid("validation_error", listed, fields)
