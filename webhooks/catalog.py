"""The event catalog: the 20 event types of the product documentation, with examples
(`catalog.json`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EventType:
    """One event type: its name, category key, one-line description and example `data`."""

    type: str
    category: str
    description: str
    example: dict[str, Any] = field(hash=False)


CATEGORIES: tuple[tuple[str, str], ...] = (
    ("recommendation", "Recommendation"),
    ("incident", "Incident"),
    ("security", "Security"),
    ("task", "Task"),
    ("agent", "Agent"),
    ("resource", "Resource"),
)

# The types, their words and their examples are content, kept as the JSON they are sent as.
CATALOG: tuple[EventType, ...] = tuple(
    EventType(**row) for row in json.loads(Path(__file__).with_name("catalog.json").read_bytes())
)

BY_TYPE: dict[str, EventType] = {event.type: event for event in CATALOG}

_CATEGORY_KEYS = frozenset(key for key, _label in CATEGORIES)
# Name prefix ("finding") -> category key ("security"), so future types of a known family match.
_PREFIX_CATEGORY: dict[str, str] = {
    event.type.split(".", 1)[0]: event.category for event in CATALOG
}


def get(event_type: str) -> EventType | None:
    """The catalog entry for `event_type`, or None when it is not in the catalog."""
    return BY_TYPE.get(event_type)


def category_of(event_type: str) -> str | None:
    """The category key of a catalog type, or None when it is not in the catalog."""
    event = BY_TYPE.get(event_type)
    return event.category if event is not None else None


def matches(pattern: str, event_type: str) -> bool:
    """Whether a subscription pattern (`*`, `X.*` or an exact type) covers `event_type`."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        prefix = pattern[:-2]
        if not prefix:
            return False
        if event_type.startswith(prefix + "."):
            return True
        category = category_of(event_type)
        if category is None:
            category = _PREFIX_CATEGORY.get(event_type.split(".", 1)[0])
        return category == prefix
    return pattern == event_type


def is_valid_pattern(pattern: str) -> bool:
    """Whether `pattern` is `*`, `X.*` (X a category or a catalog prefix) or a catalog type."""
    if not isinstance(pattern, str):
        return False
    if pattern == "*" or pattern in BY_TYPE:
        return True
    if pattern.endswith(".*"):
        prefix = pattern[:-2]
        if not prefix:
            return False
        return prefix in _CATEGORY_KEYS or any(
            event.type.startswith(prefix + ".") for event in CATALOG
        )
    return False


def types_in_category(category: str) -> list[EventType]:
    """The catalog entries of one category key, in catalog order."""
    return [event for event in CATALOG if event.category == category]


def families(category: str) -> list[str]:
    """The name prefixes of a category's types that are not the category's own key, in
    catalog order: `security` holds `finding.*` and `compliance.*`, `incident` none."""
    prefixes = dict.fromkeys(event.type.split(".", 1)[0] for event in types_in_category(category))
    return [prefix for prefix in prefixes if prefix != category]
