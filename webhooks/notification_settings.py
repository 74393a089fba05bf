"""A workspace's notification settings: e-mail addresses and an alert URL, checked first."""

from __future__ import annotations

from typing import Any

from webhooks import accounts, credentials, management
from webhooks.config import Settings
from webhooks.errors import Invalid
from webhooks.models import NotificationSettings, Session, utcnow

MAX_EMAILS = 20
# A practical check, not RFC 5322: one @, a dot in the domain, no spaces or separators.
FIELDS = {"emails", "alert_url"}


def as_json(found: NotificationSettings | None) -> dict[str, Any]:
    if found is None:
        return {"emails": [], "alert_url": None}
    # The alert URL's path is a credential (a Slack incoming webhook's, say): shown masked.
    return {"emails": list(found.emails or []), "alert_url": credentials.mask_url(found.alert_url)}


def load(session: Session, workspace_id: str) -> dict[str, Any]:
    return as_json(session.get(NotificationSettings, workspace_id))


def check_emails(emails: Any) -> list[str]:
    if emails is None:
        return []
    if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
        msg = "emails must be a list of e-mail addresses"
        raise Invalid("validation_error", msg, {"emails": msg})
    cleaned: list[str] = []
    for email in (e.strip() for e in emails):
        if not email:
            continue
        if not accounts.is_email(email):
            msg = f"not an e-mail address: {email!r}"
            raise Invalid("validation_error", msg, {"emails": msg})
        if email.lower() not in (c.lower() for c in cleaned):
            cleaned.append(email)
    if len(cleaned) > MAX_EMAILS:
        msg = f"at most {MAX_EMAILS} e-mail addresses, got {len(cleaned)}"
        raise Invalid("validation_error", msg, {"emails": msg})
    return cleaned


def check_alert_url(url: Any, settings: Settings, warnings: list[str] | None = None) -> str | None:
    """None, or a URL that follows the same target rules as a webhook's."""
    if url is None or (isinstance(url, str) and not url.strip()):
        return None
    try:
        return management.check_url(url, settings, warnings)
    except Invalid as exc:
        field = {"alert_url": exc.fields.get("url", exc.message)}
        raise Invalid(exc.code, exc.message, field) from None


def save(
    session: Session,
    workspace_id: str,
    payload: dict[str, Any],
    settings: Settings,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """Replace the workspace's settings with `payload` (`emails`, `alert_url`), committed."""
    extra = sorted(set(payload) - FIELDS)
    if extra:
        raise Invalid("validation_error", f"unknown field {extra[0]!r}", {extra[0]: "unknown"})
    emails = check_emails(payload.get("emails"))
    found = session.get(NotificationSettings, workspace_id)
    given = payload.get("alert_url")
    if found is not None and found.alert_url and given == credentials.mask_url(found.alert_url):
        given = found.alert_url  # sent back as shown: kept
    elif credentials.looks_masked(given):
        msg = f"alert_url {given!r} is masked and matches no stored URL; send the URL in full"
        raise Invalid("validation_error", msg, {"alert_url": msg})
    alert_url = check_alert_url(given, settings, warnings)
    if found is None:
        found = NotificationSettings(workspace_id=workspace_id)
        session.add(found)
    found.emails = emails
    found.alert_url = alert_url
    found.updated_at = utcnow()
    session.commit()
    return as_json(found)
