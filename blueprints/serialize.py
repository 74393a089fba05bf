"""The API's JSON of an event (its answers' other shapes are webhooks.schemas')."""

from __future__ import annotations

from typing import Any

from webhooks.models import Event
from webhooks.outgoing import envelope
from webhooks.schemas import template_headers

__all__ = ["envelope_json", "template_headers"]  # the dashboard shows a template's headers too


def envelope_json(event: Event) -> dict[str, Any]:
    # Written out rather than built from schemas.Envelope: POST /events answers with it, and
    # this is that hot path's cost.
    return {**envelope(event), "test": event.is_test}
