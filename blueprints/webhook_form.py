"""The webhook form: from the page's fields to the API's payload, and back; the live preview."""

from __future__ import annotations

import json
from typing import Any

from webhooks import catalog, management, renderpool, signing, templates, transforms
from webhooks.delivery import envelope
from webhooks.management import MASK, Invalid
from webhooks.models import Event, Webhook, utcnow


def _headers(form: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in zip(form.getlist("header_name"), form.getlist("header_value"), strict=False):
        if name.strip() or value.strip():
            headers[name.strip()] = value
    return headers


def _params(form: Any, template: templates.Template | None) -> dict[str, str] | None:
    if template is None or not template.params:
        return None
    return {p.name: form.get(f"param_{p.name}", "") for p in template.params}


def parse_transform(text: str) -> dict[str, Any] | None:
    """The Transform field's JSON, or None when it is empty."""
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        msg = f"Transform is not valid JSON: {exc}"
        raise Invalid("invalid_transform", msg, {"transform": msg}) from None
    if not isinstance(value, dict):
        msg = "Transform must be a JSON object"
        raise Invalid("invalid_transform", msg, {"transform": msg})
    return value


def payload(form: Any, *, creating: bool) -> dict[str, Any]:
    """The API payload the form describes (validation happens once, in the domain)."""
    events = form.getlist("events")
    result: dict[str, Any] = {
        "name": form.get("name", ""),
        "url": form.get("url", ""),
        "events": ["*"] if "*" in events else events,
        "headers": _headers(form),
        "active": form.get("active") == "on",
    }
    secret = form.get("secret", "").strip()
    if creating or secret != form.get("secret_was", ""):
        result["secret"] = secret or None
    template = templates.get(form.get("template", ""))
    if template is not None:
        result["template"] = template.name
        result["template_params"] = _params(form, template)
    transform = parse_transform(form.get("transform", ""))
    if transform is not None or not creating:
        result["transform"] = transform
    return result


def values(webhook: Webhook | None, template_name: str | None = None) -> dict[str, Any]:
    """What the form shows: a webhook's settings, or a fresh one (from a template)."""
    if webhook is not None:
        secret = management.current_secret(webhook) or ""
        template = templates.get(webhook.template or "")
        params = dict(webhook.template_params or {})
        secret_names = set(template.secret_params) if template else set()
        return {
            "name": webhook.name,
            "url": webhook.url,
            "events": list(webhook.events),
            "headers": dict(webhook.headers or {}),
            "active": webhook.active,
            "secret": secret,
            "secret_was": secret,
            "template": webhook.template,
            "params": {k: (MASK if k in secret_names and v else v) for k, v in params.items()},
            "transform": json.dumps(webhook.transform, indent=2) if webhook.transform else "",
        }
    template = templates.get(template_name or "")
    return {
        "name": template.label if template and template.name != "generic" else "",
        "url": "",
        "events": list(template.default_events) if template else [],
        "headers": {},
        "active": True,
        "secret": signing.generate_secret(),
        "secret_was": "",
        "template": template.name if template else None,
        "params": {p.name: p.default or "" for p in template.params} if template else {},
        "transform": "",
    }


def redisplay(form: Any, webhook: Webhook | None) -> dict[str, Any]:
    """The form's values as submitted, to show again next to its errors."""
    events = form.getlist("events")
    return {
        "name": form.get("name", ""),
        "url": form.get("url", ""),
        "events": events,
        "headers": _headers(form),
        "active": form.get("active") == "on",
        "secret": form.get("secret", ""),
        "secret_was": form.get("secret_was", ""),
        "template": form.get("template") or (webhook.template if webhook else None),
        "params": {k[len("param_") :]: v for k, v in form.items() if k.startswith("param_")},
        "transform": form.get("transform", ""),
    }


def preview(form: Any, workspace_id: str) -> tuple[str | None, str | None]:
    """(rendered body, error) for the chosen event type's example, as the form stands."""
    event_type = form.get("preview_type") or catalog.CATALOG[0].type
    example = catalog.BY_TYPE.get(event_type, catalog.CATALOG[0])
    event = Event(
        id="evt_PREVIEW",
        workspace_id=workspace_id,
        type=example.type,
        data=example.example,
        occurred_at=utcnow(),
    )
    body: Any = envelope(event)
    try:
        transform = parse_transform(form.get("transform", ""))
        template = templates.get(form.get("template", ""))
        if transform is None and template is not None:
            params = {k: (v or f"<{k}>") for k, v in (_params(form, template) or {}).items()}
            transform = templates.apply(template.name, params)["transform"]
        if transform is not None:
            body = renderpool.render(transform, body)
    except (Invalid, transforms.TransformError, ValueError) as exc:
        return None, getattr(exc, "message", None) or str(exc)
    return json.dumps(body, indent=2, ensure_ascii=False), None
