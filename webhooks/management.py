"""Creating, changing and rotating webhooks, with every field checked first."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import selectinload

from webhooks import (
    catalog,
    credentials,
    egress,
    flow,
    quotas,
    renderpool,
    signing,
    templates,
    transforms,
)
from webhooks.config import Settings
from webhooks.errors import Invalid
from webhooks.models import Delivery, Session, Webhook, WebhookSecret, utcnow
from webhooks.outgoing import RESERVED_HEADERS

MAX_URL_LENGTH = 2048
MAX_HEADERS = 20
ROTATION_OVERLAP = timedelta(hours=24)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 7230 token
_UNSET: Any = object()


# The order of a webhook's fields. An error naming several takes its code and message from the
# first of them in this order; a field the webhook does not have comes before all (often a
# misspelt one, which explains the problem of the field it was meant to be).
FIELD_ORDER = (
    "name",
    "url",
    "events",
    "headers",
    "secret",
    "active",
    "template",
    "template_params",
    "transform",
    "rate_limit",
    "ordering_key",
)


class _Failed:
    """What a check that found a problem gives instead of a value."""

    def __repr__(self) -> str:
        return "FAILED"


FAILED: Any = _Failed()


def _rank(key: str) -> int:
    name = key.split(".", 1)[0]
    return FIELD_ORDER.index(name) + 1 if name in FIELD_ORDER else 0


class Problems:
    """Every field's problem in one input, answered at once.

    `run` calls a check and records the Invalid it raises (its value is then FAILED), so that
    the other fields are checked all the same; `raise_any` raises one Invalid whose `fields`
    holds every problem found, with the code and message of the first in FIELD_ORDER.
    """

    def __init__(self) -> None:
        self.found: list[Invalid] = []

    def run(self, check: Any, *args: Any) -> Any:
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

    def raise_any(self) -> None:
        if not self.found:
            return
        ranked = sorted(self.found, key=lambda problem: min(map(_rank, problem.fields), default=0))
        fields: dict[str, str] = {}
        for problem in ranked:
            for key, message in problem.fields.items():
                fields.setdefault(key, message)
        first = ranked[0]
        raise Invalid(
            first.code,
            first.message,
            dict(sorted(fields.items(), key=lambda kv: _rank(kv[0]))),
            first.status,
        )


# Refusals no setting of the private-address block lifts (the port's message names its own).
_NOT_ALLOWABLE = ("scheme", "port", "scoped")


def check_url(url: Any, settings: Settings, warnings: list[str] | None = None) -> str:
    """The URL to save, or Invalid: `invalid_url` for its form, `target_not_allowed` when the
    egress guard refuses its address. A name that does not resolve yet is accepted; the warning
    saying so is appended to `warnings` when given (its addresses are checked at send time)."""
    if not isinstance(url, str) or not url.strip():
        raise Invalid("invalid_url", "url is required", {"url": "URL is required"})
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        msg = f"URL must be at most {MAX_URL_LENGTH} characters, got {len(url)}"
        raise Invalid("invalid_url", msg, {"url": msg})
    try:
        if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
            raise ValueError("whitespace or control character")
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise Invalid(
            "invalid_url", f"not a valid URL: {url!r}", {"url": "Not a valid URL"}
        ) from None
    allowed = ("https", "http") if settings.allow_http else ("https",)
    if parts.scheme.lower() not in allowed:
        msg = "URL must use https:// (WEBHOOK_ALLOW_HTTP=1 allows http:// for development)"
        raise Invalid("invalid_url", f"URL must use https://, got {url!r}", {"url": msg})
    if not parts.hostname:
        raise Invalid("invalid_url", f"URL has no host: {url!r}", {"url": "URL has no host"})
    if parts.username or parts.password:
        msg = "URL must not carry a user name or password; use a header instead"
        raise Invalid("invalid_url", msg, {"url": msg})
    try:
        warning = egress.check_url(url, settings)
    except egress.TargetNotAllowed as exc:
        msg = exc.message
        if exc.reason not in _NOT_ALLOWABLE:
            msg += " (WEBHOOK_ALLOWED_PRIVATE_NETWORKS can allow it, for local testing)"
        raise Invalid("target_not_allowed", msg, {"url": msg}) from None
    except ValueError:
        raise Invalid(
            "invalid_url", f"not a valid URL: {url!r}", {"url": "Not a valid URL"}
        ) from None
    if warning and warnings is not None:
        warnings.append(warning)
    return url


def check_events(events: Any) -> list[str]:
    if not isinstance(events, list) or not events:
        msg = "choose at least one event type"
        raise Invalid("validation_error", f"events: {msg}", {"events": msg})
    cleaned: list[str] = []
    for pattern in events:
        if not isinstance(pattern, str) or not catalog.is_valid_pattern(pattern):
            msg = f"unknown event type {pattern!r}"
            raise Invalid("unknown_event_type", msg, {"events": msg})
        if pattern not in cleaned:
            cleaned.append(pattern)
    return cleaned


def check_headers(headers: Any) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        msg = "headers must be an object of names to values"
        raise Invalid("invalid_headers", msg, {"headers": msg})
    if len(headers) > MAX_HEADERS:
        msg = f"at most {MAX_HEADERS} custom headers, got {len(headers)}"
        raise Invalid("invalid_headers", msg, {"headers": msg})
    seen: set[str] = set()
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            msg = f"header name {name!r} is not a valid HTTP token"
            raise Invalid("invalid_headers", msg, {"headers": msg})
        if name.lower() in RESERVED_HEADERS:
            msg = f"header {name!r} is set by the service and cannot be replaced"
            raise Invalid("invalid_headers", msg, {"headers": msg})
        if name.lower() in seen:
            msg = f"header {name!r} is given twice"
            raise Invalid("invalid_headers", msg, {"headers": msg})
        seen.add(name.lower())
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            msg = f"header {name!r} must be text without line breaks or NUL"
            raise Invalid("invalid_headers", msg, {"headers": msg})
        if len(value) > 4096:
            msg = f"header {name!r} is longer than 4096 characters"
            raise Invalid("invalid_headers", msg, {"headers": msg})
    return dict(headers)


def check_secret(secret: Any) -> str | None:
    if secret is None:
        return None
    problem = signing.secret_problem(secret)
    if problem:
        raise Invalid("invalid_secret", problem, {"secret": problem})
    return secret


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise Invalid("validation_error", "name is required", {"name": "Name is required"})
    if len(name.strip()) > 200:
        msg = "Name must be at most 200 characters"
        raise Invalid("validation_error", msg, {"name": msg})
    return name.strip()


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        msg = f"{name} must be true or false"
        raise Invalid("validation_error", msg, {name: msg})
    return value


def check_transform(transform: Any) -> dict[str, Any] | None:
    """A transform that compiles in the sandbox, or None; refused with the line and message."""
    if transform is None:
        return None
    try:
        renderpool.check(transform)
    except transforms.TransformError as exc:
        raise Invalid("invalid_transform", str(exc), {"transform": str(exc)}) from None
    return transform


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


def _own_headers(given: Any, webhook: Webhook | None) -> dict[str, str]:
    """The custom headers to save; a masked credential sent back as shown keeps the stored one."""
    headers = check_headers(given)
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
    """What `template`, `template_params`, `headers` and `transform` in the payload change.

    A template is live: only its settings are stored, and its transform and headers are derived
    from them at send time. A `transform` other than the template's own customises the body
    (it is stored, and the template's settings no longer change it); `null`, or the template's
    own transform, follows the template again. Choosing another template follows it.
    Problems go to `problems`; a check that needs a valid template or settings is skipped
    when they have one.
    """
    changes: dict[str, Any] = {}
    template = (
        payload["template"] if "template" in payload else (webhook.template if webhook else None)
    )
    params = _params(payload, webhook, template, problems)
    retemplate = webhook is None or "template" in payload or "template_params" in payload
    if retemplate:
        if not problems.failed("template_params"):
            problems.run(_apply_template, template, params)
        changes.update(template=template, template_params=params)
        chosen = templates.get(template) if isinstance(template, str) else None
        if webhook is None and chosen is not None:
            changes["events"] = list(chosen.default_events)
        if webhook is not None and template != webhook.template:
            changes["transform"] = None
    if "transform" in payload:
        transform = payload["transform"]
        template_name = template if isinstance(template, str) else None
        if templates.follows(template_name, params, transform):
            transform = None
        changes["transform"] = problems.run(
            check_transform, templates.without_body_credentials(template_name, transform)
        )
    if "headers" in payload:
        changes["headers"] = problems.run(_own_headers, payload["headers"], webhook)
    return changes


def _flow_check(check: Any, value: Any, name: str) -> Any:
    try:
        return check(value)
    except flow.FlowError as exc:
        raise Invalid(exc.code, exc.message, {name: exc.message}) from None


def _flow_fields(
    payload: dict[str, Any], webhook: Webhook | None, template: Any, problems: Problems
) -> dict[str, Any]:
    """What `rate_limit` and `ordering_key` in the payload change (API.md section 8). A new
    webhook, or one that changes template, starts with its template's unless it gives its own."""
    changes: dict[str, Any] = {}
    chosen = templates.get(template) if isinstance(template, str) else None
    new_template = webhook is None or ("template" in payload and template != webhook.template)
    for name, check in (
        ("rate_limit", flow.check_rate_limit),
        ("ordering_key", flow.check_ordering_key),
    ):
        if name in payload:
            changes[name] = problems.run(_flow_check, check, payload[name], name)
        elif new_template and (chosen is not None or webhook is not None):
            changes[name] = getattr(chosen, name) if chosen is not None else None
    return changes


KNOWN_FIELDS = frozenset(FIELD_ORDER)  # the fields a webhook payload may carry


def _unknown_fields(payload: dict[str, Any]) -> None:
    extra = sorted(set(payload) - KNOWN_FIELDS)
    if extra:
        msg = f"unknown field {extra[0]!r}"
        raise Invalid("validation_error", msg, dict.fromkeys(extra, "unknown field"))


def create(
    session: Session,
    workspace_id: str,
    payload: dict[str, Any],
    settings: Settings,
    warnings: list[str] | None = None,
    problems: Problems | None = None,
) -> tuple[Webhook, str | None]:
    """A new webhook from API input; returns it with its secret (generated unless given).

    `warnings` collects what is accepted but worth saying (a host that does not resolve yet).
    Raises one Invalid naming every field's problem, those already in `problems` (found by the
    caller reading its own input) included.
    """
    problems = problems if problems is not None else Problems()
    problems.run(_unknown_fields, payload)
    name = problems.run(_check_name, payload.get("name"))
    url = problems.run(check_url, payload.get("url"), settings, warnings)
    fields = _template_fields(payload, None, problems)
    fields.update(_flow_fields(payload, None, fields.get("template"), problems))
    events = FAILED  # without a valid template, none of its events
    if "events" in payload or not problems.failed("template"):
        events = problems.run(
            check_events, payload["events"] if "events" in payload else fields.get("events")
        )
    active = problems.run(_check_bool, "active", payload.get("active", True))
    secret = (
        problems.run(check_secret, payload["secret"])
        if "secret" in payload
        else signing.generate_secret()
    )
    problems.raise_any()
    webhook = Webhook(
        workspace_id=workspace_id,
        name=name,
        url=url,
        events=events,
        headers=fields.get("headers", {}),
        active=active,
        template=fields.get("template"),
        template_params=fields.get("template_params"),
        transform=fields.get("transform"),
        rate_limit=fields.get("rate_limit"),
        ordering_key=fields.get("ordering_key"),
    )
    if secret is not None:
        webhook.secrets.append(WebhookSecret(secret=secret))
    try:
        quotas.check_webhooks(session, workspace_id, settings.max_webhooks)
    except quotas.QuotaExceeded as exc:
        raise Invalid("quota_exceeded", exc.message, status=403) from None
    session.add(webhook)
    session.commit()
    return webhook, secret


def update(
    session: Session,
    webhook: Webhook,
    payload: dict[str, Any],
    settings: Settings,
    warnings: list[str] | None = None,
    problems: Problems | None = None,
) -> Webhook:
    """Change the given fields; `active: false` pauses, `active: true` clears a disable.

    Raises one Invalid naming every field's problem (those already in `problems` included),
    and then changes nothing.
    """
    problems = problems if problems is not None else Problems()
    problems.run(_unknown_fields, payload)
    changes: dict[str, Any] = {}
    if "name" in payload:
        changes["name"] = problems.run(_check_name, payload["name"])
    if "url" in payload:
        changes["url"] = problems.run(check_url, payload["url"], settings, warnings)
    if "events" in payload:
        changes["events"] = problems.run(check_events, payload["events"])
    if "active" in payload:
        changes["active"] = problems.run(_check_bool, "active", payload["active"])
    changes.update(_template_fields(payload, webhook, problems))
    template = changes.get("template", webhook.template)
    changes.update(_flow_fields(payload, webhook, template, problems))
    was_active = webhook.active
    secret = problems.run(check_secret, payload["secret"]) if "secret" in payload else _UNSET
    problems.raise_any()
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
    new = check_secret(secret) if secret is not None else signing.generate_secret()
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
