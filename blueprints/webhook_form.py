"""The webhook form: from the page's fields to the API's payload, and back; the live preview."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from webhooks import (
    catalog,
    credentials,
    flow,
    management,
    renderpool,
    signing,
    templates,
    transforms,
)
from webhooks.errors import FAILED, Invalid, Problems
from webhooks.models import Event, Webhook, utcnow
from webhooks.outgoing import envelope


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


def payload(form: Any, *, creating: bool, problems: Problems | None = None) -> dict[str, Any]:
    """The API payload the form describes (validation happens once, in the domain).

    A Transform field that is not a JSON object is left out, its problem recorded in
    `problems` (raised at once without them), so that the other fields are checked too.
    """
    events = form.getlist("events")
    result: dict[str, Any] = {
        **{key: form.get(key, "") for key in TEXT},
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
    text = form.get("transform", "")
    transform = parse_transform(text) if problems is None else problems.run(parse_transform, text)
    if transform is not FAILED and (transform is not None or not creating):
        result["transform"] = transform
    # Flow control: empty is no limit (and, a text field, no ordering).
    result["rate_limit"] = flow.read_rate_limit(form.get("rate_limit", ""))
    return result


class FormField(NamedTuple):
    key: str  # the API's field (webhooks.schemas.WebhookInput)
    label: str
    target: str  # the id of its input
    text: bool = False  # a text input, sent as typed (the field's check says what empty means)


# The form's fields in the order a person meets them.
FIELDS = (
    FormField("name", "Name", "name", text=True),
    FormField("url", "URL", "url", text=True),
    FormField("events", "Events", "events-all"),
    FormField("secret", "Secret", "secret"),
    FormField("headers", "Headers", "header-name-first"),
    FormField("rate_limit", "Rate limit", "rate_limit"),
    FormField("ordering_key", "Ordering key", "ordering_key", text=True),
    FormField("transform", "Transform", "transform"),
    FormField("active", "Active", "active"),
)
TEXT = tuple(field.key for field in FIELDS if field.text)


def summary(errors: dict[str, str], template: templates.Template | None) -> list[dict[str, Any]]:
    """The form's problems as its error summary lists them, in the order of the form: each
    with `text` (saying which field) and `target`, the id of the field to go to (None when the
    form has no field for it: the template itself, a field the API does not know)."""
    fields: list[tuple[str, str, str | None]] = [("template", "Template", None)]
    if template is not None:
        first = f"param_{template.params[0].name}" if template.params else None
        fields.append(("template_params", f"{template.label} settings", first))
        fields += [
            (f"template_params.{p.name}", p.label, f"param_{p.name}") for p in template.params
        ]
    fields += [(field.key, field.label, field.target) for field in FIELDS]
    known = {key for key, _, _ in fields}
    items = []
    for key, label, target in [*fields, *((k, k, None) for k in errors if k not in known)]:
        message = errors.get(key)
        if not message or key == "form":
            continue
        if message.lower().startswith(label.lower()):
            text = message[0].upper() + message[1:]
        else:
            text = f"{label}: {message}"
        items.append({"text": text, "target": target})
    return items


def _rate(value: float | None) -> str:
    """A rate limit as the field shows it: 1, 0.5, 2.25; empty for none."""
    return "" if value is None else f"{value:g}"


def values(webhook: Webhook | None, template_name: str | None = None) -> dict[str, Any]:
    """What the form shows: a webhook's settings, or a fresh one (from a template)."""
    if webhook is not None:
        secret = management.current_secret(webhook) or ""
        template = templates.get(webhook.template or "")
        return {
            **{key: getattr(webhook, key) or "" for key in TEXT},
            "events": list(webhook.events),
            "headers": credentials.mask_headers(webhook.headers),
            "active": webhook.active,
            "secret": secret,
            "secret_was": secret,
            "template": webhook.template,
            "params": {
                **{p.name: p.default or "" for p in template.params},
                **(credentials.mask_params(webhook.template_params) or {}),
            }
            if template
            else {},
            "transform": json.dumps(webhook.transform, indent=2) if webhook.transform else "",
            "rate_limit": _rate(webhook.rate_limit),
        }
    template = templates.get(template_name or "")
    return {
        **dict.fromkeys(TEXT, ""),
        "name": template.label if template and template.name != "generic" else "",
        "events": list(template.default_events) if template else [],
        "headers": {},
        "active": True,
        "secret": signing.generate_secret(),
        "secret_was": "",
        "template": template.name if template else None,
        "params": {p.name: p.default or "" for p in template.params} if template else {},
        "transform": "",
        "rate_limit": _rate(template.rate_limit if template else None),
        "ordering_key": (template.ordering_key if template else None) or "",
    }


def redisplay(form: Any, webhook: Webhook | None) -> dict[str, Any]:
    """The form's values as submitted, to show again next to its errors."""
    events = form.getlist("events")
    return {
        **{key: form.get(key, "") for key in TEXT},
        "events": events,
        "headers": _headers(form),
        "active": form.get("active") == "on",
        "secret": form.get("secret", ""),
        "secret_was": form.get("secret_was", ""),
        "template": form.get("template") or (webhook.template if webhook else None),
        "params": {k[len("param_") :]: v for k, v in form.items() if k.startswith("param_")},
        "transform": form.get("transform", ""),
        "rate_limit": form.get("rate_limit", ""),
    }


@dataclass(frozen=True)
class Preview:
    """The body the form would send for an example event, or why not; and where an undefined
    value reached it (sent as null or empty text, which a person should know)."""

    body: str | None = None
    error: str | None = None
    undefined: tuple[str, ...] = ()


def preview(form: Any, workspace_id: str) -> Preview:
    """The chosen event type's example, rendered as the form stands."""
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
        fields: dict[str, Any] = {}
        if template is not None:
            params = {k: (v or f"<{k}>") for k, v in (_params(form, template) or {}).items()}
            out = templates.outgoing(template.name, params, transform, {})
            if out.error:
                return Preview(error=out.error)
            transform, fields = out.transform, out.body_fields
        notes: list[str] = []
        if transform is not None:
            body, notes = renderpool.render_noting_undefined(transform, body)
            if fields and isinstance(body, dict):
                body = {**body, **fields}
    except (Invalid, transforms.TransformError, ValueError) as exc:
        return Preview(error=getattr(exc, "message", None) or str(exc))
    # The preview is a page: a routing key in the body is shown masked, as in the logs.
    shown = credentials.mask_body(json.dumps(body, indent=2, ensure_ascii=False))
    return Preview(body=shown, undefined=tuple(notes))


def customise(form: Any) -> tuple[str, str | None]:
    """(the template's body as editable JSON, error): the copy that "Customise the body" makes."""
    template = templates.get(form.get("template", ""))
    if template is None:
        return form.get("transform", ""), None
    try:
        transform = templates.customised(template.name, _params(form, template))
    except ValueError as exc:
        return "", str(exc)
    return json.dumps(transform, indent=2, ensure_ascii=False) if transform else "", None
