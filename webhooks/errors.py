"""The domain's answer to input it refuses: one error type that every layer shares.

The domain raises `Invalid` with a contract error code (docs/API.md section 5), a message for a
person, the message of each field at fault, and the HTTP status the API answers with; the API
turns it into its JSON error body, the dashboard shows each field's message next to its field.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Invalid(Exception):
    """Input that cannot be saved: a contract error code, a message and per-field messages."""

    code: str
    message: str
    fields: dict[str, str] = field(default_factory=dict)
    status: int = 400
