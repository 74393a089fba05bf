"""A workspace's notification settings: e-mail addresses and an alert URL, checked first."""

from __future__ import annotations

from typing import Any

from webhooks import checks, credentials
from webhooks.errors import Invalid
from webhooks.models import NotificationSettings, Session, utcnow
from webhooks.schemas import NotificationSettings as Shown
from webhooks.schemas import NotificationSettingsInput, Reading


def load(session: Session, workspace_id: str) -> dict[str, Any]:
    found = session.get(NotificationSettings, workspace_id)
    return Shown.of(found) if found else Shown.of(emails=[], alert_url=None)  # none saved yet


def check_alert_url(url: Any, reading: Reading) -> str | None:
    """None, or a URL that follows the same target rules as a webhook's."""
    if url is None or (isinstance(url, str) and not url.strip()):
        return None
    try:
        return checks.check_url(url, reading.settings, reading.warnings)
    except Invalid as exc:
        field = {"alert_url": exc.fields.get("url", exc.message)}
        raise Invalid(exc.code, exc.message, field) from None


def save(
    session: Session, workspace_id: str, payload: dict[str, Any], reading: Reading
) -> dict[str, Any]:
    """Replace the workspace's settings with `payload` (`emails`, `alert_url`), committed."""
    extra = sorted(set(payload) - set(NotificationSettingsInput.model_fields))
    if extra:
        raise Invalid("validation_error", f"unknown field {extra[0]!r}", {extra[0]: "unknown"})
    emails = checks.check_emails(payload.get("emails"))
    found = session.get(NotificationSettings, workspace_id)
    given = payload.get("alert_url")
    if found is not None and found.alert_url and given == credentials.mask_url(found.alert_url):
        given = found.alert_url  # sent back as shown: kept
    elif credentials.looks_masked(given):
        msg = f"alert_url {given!r} is masked and matches no stored URL; send the URL in full"
        raise Invalid("validation_error", msg, {"alert_url": msg})
    alert_url = check_alert_url(given, reading)
    if found is None:
        found = NotificationSettings(workspace_id=workspace_id)
        session.add(found)
    found.emails = emails
    found.alert_url = alert_url
    found.updated_at = utcnow()
    session.commit()
    return Shown.of(found)
