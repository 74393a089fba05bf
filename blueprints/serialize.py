"""The API's JSON shapes of webhooks, events, deliveries and attempts."""

from __future__ import annotations

from typing import Any

from webhooks import credentials, flow, templates
from webhooks.models import Attempt, Delivery, Event, Webhook
from webhooks.outgoing import envelope, iso


def webhook_json(webhook: Webhook) -> dict[str, Any]:
    return {
        "id": webhook.id,
        "name": webhook.name,
        "url": webhook.url,
        "events": list(webhook.events),
        "headers": credentials.mask_headers(webhook.headers),
        "template_headers": template_headers(webhook),
        "active": webhook.active,
        "disabled_reason": webhook.disabled_reason,
        "has_secret": any(s.expires_at is None for s in webhook.secrets),
        "template": webhook.template,
        "template_params": credentials.mask_params(webhook.template_params),
        "transform": shown_transform(webhook),
        "transform_source": transform_source(webhook),
        "rate_limit": webhook.rate_limit,
        "ordering_key": webhook.ordering_key,
        "created_at": iso(webhook.created_at),
        "updated_at": iso(webhook.updated_at),
    }


def transform_source(webhook: Webhook) -> str | None:
    """`custom` (its own transform), `template` (its template's, live), or None (the envelope)."""
    if webhook.transform is not None:
        return "custom"
    return "template" if shown_transform(webhook) is not None else None


def shown_transform(webhook: Webhook) -> dict[str, Any] | None:
    """The transform rendered for this webhook: its own, else its template's (as an editable
    copy: credentials are set on the body at send time and never shown)."""
    if webhook.transform is not None or webhook.template is None:
        return webhook.transform
    try:
        return templates.customised(webhook.template, webhook.template_params)
    except ValueError:
        return None


def template_headers(webhook: Webhook) -> dict[str, str]:
    """The headers its template adds at send time, credentials masked."""
    if webhook.template is None:
        return {}
    try:
        headers = templates.apply(webhook.template, webhook.template_params)["headers"]
    except ValueError:
        return {}
    return credentials.mask_headers(headers)


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
        # A delivery waiting for its turn has no time yet: it goes once the earlier one ends.
        "next_attempt_at": None
        if delivery.waiting == flow.ORDER
        else iso(delivery.next_attempt_at),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "waiting": delivery.waiting,
        "waiting_for": delivery.waiting_for,
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
            "headers": credentials.mask_headers(attempt.request_headers),
            "body": credentials.mask_body(attempt.request_body),
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
