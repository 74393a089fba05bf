"""The outgoing message: the envelope, its body (the webhook's transform, rendered in a
render process), its headers and signatures. Nothing here touches the database or the state
of a delivery: the API's serialisers and the dashboard build envelopes from here too."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from webhooks import credentials, listeners, renderpool, signing, templates, transforms, transport
from webhooks.config import Settings
from webhooks.models import Event, utcnow

# Names a custom header may never take: ours, and what the HTTP client owns.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Content-Type",
        "User-Agent",
        "X-CloudThinker-Signature",
        "X-CloudThinker-Event",
        "X-CloudThinker-Delivery",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
    )
)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, as the API and the envelope show times."""
    if moment is None:
        return None
    return moment.isoformat(timespec="microseconds") + "Z"


def envelope(event: Event) -> dict[str, Any]:
    """The standard payload; built from the stored event, so it never changes across retries."""
    return {
        "id": event.id,
        "type": event.type,
        "timestamp": event.occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "workspace_id": event.workspace_id,
        "data": event.data,
    }


class RenderError(Exception):
    """The body could not be built; retrying would fail the same way."""


def render_body(webhook: Target, event: Event) -> bytes:
    """The exact bytes to send and sign: the envelope, or the webhook's transform of it (its
    own, or its template's, derived when it was read: see `webhooks.claim`)."""
    if webhook.template_error is not None:
        raise RenderError(webhook.template_error)
    payload: Any = envelope(event)
    if webhook.transform is not None:
        try:
            payload = renderpool.render(webhook.transform, payload)
        except transforms.TransformError as exc:
            raise RenderError(f"transform failed: {exc}") from None
        if webhook.body_fields and isinstance(payload, dict):
            payload = {**payload, **webhook.body_fields}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def valid_secrets(webhook: Target, now: datetime) -> list[str]:
    """The secrets that sign now, newest first."""
    return [s.secret for s in webhook.secrets if s.expires_at is None or s.expires_at > now]


def build_headers(delivery: Any, webhook: Target, body: bytes, now: datetime) -> dict[str, str]:
    """The request's headers for a delivery (its `id`, `event_id` and `event_type`): the
    webhook's (credentials in clear, for the receiver), then ours."""
    headers = {
        name: str(value)
        for name, value in (webhook.headers or {}).items()
        if name.lower() not in RESERVED_HEADERS
    }
    headers.update(
        {
            "Content-Type": "application/json",
            "User-Agent": transport.USER_AGENT,
            "X-CloudThinker-Event": delivery.event_type,
            "X-CloudThinker-Delivery": delivery.id,
        }
    )
    headers.update(
        signing.signature_headers(
            event_id=delivery.event_id,
            timestamp=int(_epoch(now)),
            body=body,
            secrets=valid_secrets(webhook, now),
        )
    )
    return headers


def _epoch(naive_utc: datetime) -> float:
    return (naive_utc - datetime(1970, 1, 1)).total_seconds()


@dataclass
class RenderLater:
    """What a transformed body is rendered from, once the claim has committed."""

    webhook: Any  # Target
    event: Any  # the event's row
    delivery: Any  # the claimed row (id, event id, event type)


@dataclass
class Prepared:
    """A claimed delivery with its attempt row written: everything needed to send.

    With `later`, the body and headers are built by `render` before the POST (outside any
    transaction, signed at send time); the attempt's request is written with its result."""

    delivery_id: str
    attempt_id: int
    token: str
    url: str
    body: bytes
    headers: dict[str, str]
    render_error: str | None = None
    webhook_id: str = ""
    later: RenderLater | None = None
    # In an ordering key's line: its end lets the next delivery of the line go (webhooks.flow).
    ordered: bool = False


def render(prepared: Prepared, envelopes: dict[str, bytes] | None = None) -> None:
    """Build a claimed delivery's body (a transform renders in a render process) and sign it.

    Runs after the claim has committed, before the POST; a render that fails or hits a bound
    leaves `render_error`, and the attempt fails with it. `envelopes` keeps the plain bodies
    built so far by event id: the deliveries of one event to webhooks without a transform
    send the same bytes."""
    later = prepared.later
    if later is None or prepared.headers:
        return
    webhook = later.webhook
    plain = webhook.transform is None and webhook.template_error is None
    memo = envelopes if plain and envelopes is not None else {}
    try:
        body = memo.get(later.event.id)
        if body is None:
            body = memo[later.event.id] = render_body(webhook, later.event)
        prepared.body = body
    except RenderError as exc:
        prepared.body, prepared.render_error = b"", str(exc)
    prepared.headers = build_headers(later.delivery, later.webhook, prepared.body, utcnow())


def overran(prepared: Prepared) -> bool:
    """The attempt's render hit the time or CPU bound: the webhook holds threads for long."""
    error = prepared.render_error or ""
    return "s of CPU" in error or "rendering took longer" in error


@dataclass
class Target:
    """What sending needs of a webhook, read in one query per batch.

    `transform` and `headers` are what is sent: a template's are derived from its settings
    when the webhook is read (templates are live), credentials decrypted."""

    id: str
    url: str
    active: bool
    disabled_reason: str | None
    headers: dict[str, Any] | None
    transform: dict[str, Any] | None
    secrets: list[Any]
    body_fields: dict[str, Any] = field(default_factory=dict)
    template_error: str | None = None


def target_of(row: Any) -> Target:
    """A webhook row as sending needs it, its template (if any) applied now."""
    out = templates.outgoing(row.template, row.template_params, row.transform, row.headers)
    return Target(
        id=row.id,
        url=row.url,
        active=row.active,
        disabled_reason=row.disabled_reason,
        headers=out.headers,
        secrets=[],  # the claim adds them, read for the whole batch at once
        transform=out.transform,
        body_fields=out.body_fields,
        template_error=out.error,
    )


def loggable(headers: dict[str, str]) -> dict[str, str]:
    """Headers as the log shows them: credentials are masked (`webhooks.credentials`)."""
    return credentials.mask_headers(headers)


def send(prepared: Prepared, settings: Settings) -> transport.Result:
    """The POST of one claimed delivery (or the render error that stopped it)."""
    render(prepared)
    if prepared.render_error is not None:
        return transport.Result(error=prepared.render_error)
    listener_id = listeners.listener_id_of(prepared.url)
    if listener_id is not None:  # a `listen` stream, not a URL: the command reports the result
        return listeners.relay(
            listener_id,
            prepared.delivery_id,
            prepared.attempt_id,
            prepared.headers,
            prepared.body,
            settings,
        )
    return post(prepared.url, prepared.body, prepared.headers, settings)


def post(url: str, body: bytes, headers: dict[str, str], settings: Settings) -> transport.Result:
    """One POST under the configured egress rules, timeout, CA bundle and proxy: deliveries
    and alert notifications alike."""
    return transport.post(
        url,
        body,
        headers,
        timeout=settings.timeout,
        ca_bundle=settings.ca_bundle,
        proxy_url=settings.proxy_url,
        allowed_networks=settings.allowed_private_networks,
        allow_http=settings.allow_http,
        allowed_ports=settings.allowed_ports,
    )
