"""Creating, changing and rotating webhooks, with every field checked first.

Each field is checked as its shape says (webhooks.schemas.WebhookInput); what needs more than
one field is checked here: a template with its settings and the transform, credentials sent
back masked, and what a template sets unless the input does (events, flow control).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import selectinload

from webhooks import checks, credentials, flow, quotas, signing, templates
from webhooks.errors import FAILED, Invalid, Problems
from webhooks.models import Delivery, Session, Webhook, WebhookSecret, utcnow
from webhooks.schemas import Reading, WebhookInput

__all__ = ["FAILED", "Problems", "Reading"]  # what a form reading its own input shares

ROTATION_OVERLAP = timedelta(hours=24)
ORDER = WebhookInput.order()
# A new webhook's name and URL are checked even when absent (their checks say that they are
# required); its events may come from its template.
NEW = {"name": None, "url": None}
_UNSET: Any = object()


def _apply_template(template: Any, params: Any) -> dict[str, Any] | None:
    """The events, transform and headers a template gives, or None without a template."""
    if template is None:
        if params is not None:
            msg = "template_params needs a template"
            raise Invalid("validation_error", msg, {"template_params": msg})
        return None
    if not isinstance(template, str) or template not in templates.TEMPLATES:
        msg = f"unknown template {template!r}; available: {', '.join(templates.TEMPLATES)}"
        raise Invalid("validation_error", msg, {"template": msg})
    try:
        return templates.apply(template, params)
    except templates.ParamsError as exc:
        # One entry per setting, in words, so that a form shows each next to its own field.
        fields = {f"template_params.{name}": msg for name, msg in exc.problems.items()}
        raise Invalid("validation_error", str(exc), fields) from None
    except ValueError as exc:
        raise Invalid("validation_error", str(exc), {"template_params": str(exc)}) from None


def _kept(given: Any, stored: Any, what: str, field_name: str, code: str) -> Any:
    """`given`, or the stored credential when `given` is how it is shown (masked)."""
    value = credentials.unmask(given, stored)
    if credentials.is_masked(value):
        msg = (
            f"{what} is a masked value ({value!r}) that matches no stored value; "
            "send the new value in full"
        )
        raise Invalid(code, msg, {field_name: msg})
    return value


def _params(
    payload: dict[str, Any], webhook: Webhook | None, template: Any, problems: Problems
) -> Any:
    """The template parameters to save: merged into the stored ones (a key set to null is
    removed) while the template stays the same, masked credentials sent back kept."""
    stored = webhook.template_params if webhook else None
    same = webhook is not None and template == webhook.template
    if "template_params" not in payload:
        return stored if same else None
    given = payload["template_params"]
    if not isinstance(given, dict):
        return given  # refused by the template's check
    merged = dict(stored or {}) if same else {}
    for name, value in given.items():
        if value is None:
            merged.pop(name, None)
            continue
        old = (stored or {}).get(name) if same else None
        key = f"template_params.{name}"
        merged[name] = problems.run(_kept, value, old, key, key, "validation_error")
    return merged


def _unmasked_headers(headers: dict[str, str], webhook: Webhook | None) -> dict[str, str]:
    """The custom headers to save; a masked credential sent back as shown keeps the stored one."""
    stored = {
        name.lower(): value for name, value in ((webhook.headers or {}) if webhook else {}).items()
    }
    return {
        name: _kept(
            value, stored.get(name.lower()), f"header {name!r}", "headers", "invalid_headers"
        )
        for name, value in headers.items()
    }


def _template_fields(
    payload: dict[str, Any], webhook: Webhook | None, problems: Problems
) -> dict[str, Any]:
    """What `template`, `template_params` and `transform` in the payload change.

    A template is live: only its settings are stored, and its transform and headers are derived
    from them at send time. A `transform` other than the template's own customises the body
    (it is stored, and the template's settings no longer change it); `null`, or the template's
    own transform, follows the template again. Choosing another template follows it.
    Problems go to `problems`; a check that needs valid template settings is skipped when they
    have one.
    """
    changes: dict[str, Any] = {}
    template = (
        payload["template"] if "template" in payload else (webhook.template if webhook else None)
    )
    params = _params(payload, webhook, template, problems)
    if webhook is None or "template" in payload or "template_params" in payload:
        if not problems.failed("template_params"):
            problems.run(_apply_template, template, params)
        changes.update(template=template, template_params=params)
        if webhook is not None and template != webhook.template:
            changes["transform"] = None
    if "transform" in payload:
        transform = payload["transform"]
        template_name = template if isinstance(template, str) else None
        if templates.follows(template_name, params, transform):
            transform = None
        changes["transform"] = problems.run(
            checks.check_transform, templates.without_body_credentials(template_name, transform)
        )
    return changes


def _template_defaults(
    payload: dict[str, Any], webhook: Webhook | None, template: Any, problems: Problems
) -> dict[str, Any]:
    """What a template sets that the payload does not: a new webhook's events, and the flow
    control (API.md section 8) of a webhook that is new or changes template."""
    changes: dict[str, Any] = {}
    chosen = templates.get(template) if isinstance(template, str) else None
    if webhook is None and "events" not in payload and not problems.failed("template"):
        events = list(chosen.default_events) if chosen is not None else None
        changes["events"] = problems.run(checks.check_events, events)
    new_template = webhook is None or ("template" in payload and template != webhook.template)
    for name in ("rate_limit", "ordering_key"):
        if name not in payload and new_template and (chosen is not None or webhook is not None):
            changes[name] = getattr(chosen, name) if chosen is not None else None
    return changes


def _changes(payload: dict[str, Any], webhook: Webhook | None, reading: Reading) -> dict[str, Any]:
    """What the payload sets on `webhook` (None: a new one), every field checked; raises one
    Invalid naming every field's problem, those already in `reading.problems` included."""
    problems = reading.problems
    # The template, its settings and the transform are read as given, and checked together.
    changes = WebhookInput.read(payload if webhook else {**NEW, **payload}, reading, partial=True)
    changes.update(_template_fields(payload, webhook, problems))
    if "headers" in payload and changes["headers"] is not FAILED:
        changes["headers"] = problems.run(_unmasked_headers, changes["headers"], webhook)
    template = changes.get("template", webhook.template if webhook else None)
    changes.update(_template_defaults(payload, webhook, template, problems))
    problems.raise_any(ORDER)
    return changes


def create(
    session: Session, workspace_id: str, payload: dict[str, Any], reading: Reading
) -> tuple[Webhook, str | None]:
    """A new webhook from API input; returns it with its secret (generated unless given).

    `reading.warnings` collects what is accepted but worth saying (a host that does not
    resolve yet).
    """
    changes = _changes(payload, None, reading)
    values = {**WebhookInput.defaults(leaving=changes), **changes}
    secret = values.pop("secret")
    webhook = Webhook(workspace_id=workspace_id, **values)
    if secret is not None:
        webhook.secrets.append(WebhookSecret(secret=secret))
    try:
        quotas.check_webhooks(session, workspace_id, reading.settings.max_webhooks)
    except quotas.QuotaExceeded as exc:
        raise Invalid("quota_exceeded", exc.message, status=403) from None
    session.add(webhook)
    session.commit()
    return webhook, secret


def update(
    session: Session, webhook: Webhook, payload: dict[str, Any], reading: Reading
) -> Webhook:
    """Change the given fields; `active: false` pauses, `active: true` clears a disable.

    Checks every field first, and changes nothing when one has a problem.
    """
    changes = _changes(payload, webhook, reading)
    secret = changes.pop("secret", _UNSET)
    was_active = webhook.active
    rate_changed = "rate_limit" in changes and changes["rate_limit"] != webhook.rate_limit
    ordering_removed = (
        "ordering_key" in changes and webhook.ordering_key and not changes["ordering_key"]
    )
    if rate_changed or ordering_removed:
        # Before the webhook row is written: deliveries first, as the claim locks them.
        with session.no_autoflush:
            flow.settings_changed(
                session,
                webhook.id,
                rate_changed=rate_changed,
                ordering_removed=bool(ordering_removed),
                now=utcnow(),
            )
    for key, value in changes.items():
        setattr(webhook, key, value)
    if "active" in changes and changes["active"] != was_active:
        webhook.disabled_reason = None if changes["active"] else _paused_reason()
        webhook.disabled_at = None if changes["active"] else utcnow()
        if changes["active"]:
            webhook.failing_since = None  # a fresh start for the auto-disable window
    if secret is not _UNSET:
        replace_secret(webhook, secret, overlap=None)
    webhook.updated_at = utcnow()
    session.commit()
    return webhook


def _paused_reason() -> str:
    return f"Paused on {utcnow().strftime('%Y-%m-%d %H:%M UTC')}"


def replace_secret(webhook: Webhook, secret: str | None, *, overlap: timedelta | None) -> None:
    """Make `secret` current; older secrets expire now, or after `overlap` (a rotation)."""
    now = utcnow()
    expires = now + overlap if overlap else now
    for old in webhook.secrets:
        if old.expires_at is None or old.expires_at > expires:
            old.expires_at = expires
    if secret is not None:
        webhook.secrets.insert(0, WebhookSecret(secret=secret, created_at=now))


def rotate(session: Session, webhook: Webhook, secret: Any = None) -> str:
    """A new current secret; the previous one keeps signing alongside for 24 hours."""
    new = checks.check_secret(secret) if secret is not None else signing.generate_secret()
    assert new is not None
    replace_secret(webhook, new, overlap=ROTATION_OVERLAP)
    webhook.updated_at = utcnow()
    session.commit()
    return new


def current_secret(webhook: Webhook) -> str | None:
    now = utcnow()
    for s in webhook.secrets:
        if s.expires_at is None or s.expires_at > now:
            return s.secret
    return None


# PostgreSQL's answer when two transactions wait for each other's rows: one is aborted, and
# trying it again is the remedy.
DEADLOCK = "40P01"
DELETE_TRIES = 3


def delete(session: Session, webhook: Webhook) -> None:
    """Delete a webhook with its deliveries and their attempts.

    A worker recording results for its deliveries at that moment locks attempts before
    deliveries, the cascade locks them the other way round; when PostgreSQL aborts the
    delete to break that deadlock, it is tried again (the worker's transaction has ended)."""
    webhook_id = webhook.id
    for tries_left in reversed(range(DELETE_TRIES)):
        try:
            session.delete(webhook)
            session.commit()
            return
        except OperationalError as exc:
            session.rollback()
            if getattr(exc.orig, "sqlstate", None) != DEADLOCK or not tries_left:
                raise
        found = session.get(Webhook, webhook_id)
        if found is None:
            return  # deleted meanwhile, by another request
        webhook = found


def listed(session: Session, workspace_id: str) -> list[Webhook]:
    """The workspace's webhooks, newest first, with their secrets loaded."""
    return list(
        session.scalars(
            select(Webhook)
            .where(Webhook.workspace_id == workspace_id)
            .options(selectinload(Webhook.secrets))
            .order_by(Webhook.created_at.desc(), Webhook.id.desc())
        )
    )


def find(session: Session, workspace_id: str, webhook_id: str) -> Webhook | None:
    """The workspace's webhook with its secrets, or None (another workspace's id included)."""
    return session.scalars(
        select(Webhook)
        .where(Webhook.id == webhook_id, Webhook.workspace_id == workspace_id)
        .options(selectinload(Webhook.secrets))
    ).first()


def find_delivery(session: Session, workspace_id: str, delivery_id: str) -> Delivery | None:
    """The workspace's delivery, or None."""
    return session.scalars(
        select(Delivery).where(Delivery.id == delivery_id, Delivery.workspace_id == workspace_id)
    ).first()
