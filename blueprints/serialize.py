"""The API's JSON shapes of webhooks, events, deliveries and attempts."""

from __future__ import annotations

from typing import Any

from webhooks import templates
from webhooks.delivery import envelope, iso
from webhooks.management import MASK
from webhooks.models import Attempt, Delivery, Event, Webhook


def webhook_json(webhook: Webhook) -> dict[str, Any]:
    return {
        "id": webhook.id,
        "name": webhook.name,
        "url": webhook.url,
        "events": list(webhook.events),
        "headers": dict(webhook.headers or {}),
        "active": webhook.active,
        "disabled_reason": webhook.disabled_reason,
        "has_secret": any(s.expires_at is None for s in webhook.secrets),
        "template": webhook.template,
        "template_params": masked_params(webhook),
        "transform": webhook.transform,
        "created_at": iso(webhook.created_at),
        "updated_at": iso(webhook.updated_at),
    }


def masked_params(webhook: Webhook) -> dict[str, Any] | None:
    """Template parameters with credentials (API tokens) masked."""
    if webhook.template_params is None:
        return None
    template = templates.get(webhook.template or "")
    secret = set(template.secret_params) if template else set()
    return {k: (MASK if k in secret and v else v) for k, v in webhook.template_params.items()}


def envelope_json(event: Event) -> dict[str, Any]:
    return {**envelope(event), "test": event.is_test}


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "webhook_id": delivery.webhook_id,
        "kind": delivery.kind,
        "status": delivery.status,
        "attempt_count": delivery.attempt_count,
        "max_attempts": delivery.max_attempts,
        "next_attempt_at": iso(delivery.next_attempt_at),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": iso(delivery.created_at),
        "updated_at": iso(delivery.updated_at),
    }


def attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "outcome": attempt.outcome,
        "started_at": iso(attempt.started_at),
        "duration_ms": attempt.duration_ms,
        "request": {
            "url": attempt.request_url,
            "headers": attempt.request_headers,
            "body": attempt.request_body,
        },
        "response": None
        if attempt.response_status is None
        else {
            "status_code": attempt.response_status,
            "headers": attempt.response_headers or {},
            "body": attempt.response_body,
        },
        "error": attempt.error,
    }
