"""Settings › API keys, Users, Notifications, and the event catalog."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

from flask import (
    Blueprint,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_user
from sqlalchemy import select
from werkzeug.exceptions import HTTPException

from blueprints.lookup import owned_or_404
from blueprints.security import dashboard_limit, too_many
from blueprints.ui import guarded, settings
from webhooks import accounts, catalog, notification_settings, notifications, quotas, services
from webhooks.errors import Invalid
from webhooks.models import ApiKey, Notification, db
from webhooks.schemas import Reading

log = logging.getLogger(__name__)

bp = guarded(Blueprint("settings", __name__, url_prefix="/settings"))
# A page with a one-time link on it stays out of every cache.
NO_STORE = {"Cache-Control": "no-store"}


def _keys() -> list[ApiKey]:
    return list(
        db.session.scalars(
            select(ApiKey)
            .where(ApiKey.workspace_id == g.workspace_id)
            .order_by(ApiKey.revoked_at.is_not(None), ApiKey.created_at.desc())
        )
    )


@bp.get("/api-keys")
def api_keys() -> ResponseReturnValue:
    """List the workspace's API keys."""
    return render_template("settings/api_keys.html", keys=_keys(), created=None, error=None)


@bp.post("/api-keys")
def create_api_key() -> ResponseReturnValue:
    """Create a key; the full key is shown this once."""
    name = request.form.get("name", "").strip()
    if not name or len(name) > 200:
        error = "Give the key a name (at most 200 characters), such as the system that will use it."
        return render_template(
            "settings/api_keys.html", keys=_keys(), created=None, error=error
        ), 422
    try:
        key, plain = accounts.create_api_key(
            db.session, g.workspace_id, name, limit=settings().max_api_keys
        )
    except quotas.QuotaExceeded as exc:
        db.session.rollback()
        error = exc.message[0].upper() + exc.message[1:] + "."
        return render_template(
            "settings/api_keys.html", keys=_keys(), created=None, error=error
        ), 403
    return render_template("settings/api_keys.html", keys=_keys(), created=(key, plain), error=None)


@bp.post("/api-keys/<key_id>/revoke")
def revoke_api_key(key_id: str) -> ResponseReturnValue:
    """Revoke a key: requests with it are refused from now on."""
    accounts.revoke_api_key(db.session, owned_or_404(ApiKey, key_id, "API key"))
    return render_template("settings/api_keys.html", keys=_keys(), created=None, error=None)


def _users_page(status: int = 200, **shown: Any) -> tuple[str, int]:
    """Settings › Users: the workspace's users, the invite form, and your password."""
    context = {
        "users": accounts.workspace_users(db.session, g.workspace_id),
        "invited": None,
        "invite_email": "",
        "invite_error": None,
        "password_errors": {},
        "invite_days": settings().invite_days,
        "smtp_configured": bool(settings().smtp_url),
        **shown,
    }
    return render_template("settings/users.html", **context), status


@bp.get("/users")
def users() -> ResponseReturnValue:
    """List the workspace's users."""
    return _users_page()


@bp.post("/users")
def invite_user() -> ResponseReturnValue:
    """Add a user with a one-time link to choose a password: shown once, e-mailed if possible."""
    email = request.form.get("email", "").strip()
    days = settings().invite_days
    try:
        user, token = accounts.invite_user(db.session, g.workspace_id, email, timedelta(days=days))
    except accounts.AccountError as exc:
        db.session.rollback()
        return _users_page(422, invite_email=email, invite_error=str(exc))
    scheme = "https" if settings().force_https else request.scheme
    link = url_for("auth.accept_invite", token=token, _external=True, _scheme=scheme)
    mailed = _mail_invitation(user.email, link, days) if settings().smtp_url else None
    page, status = _users_page(invited={"email": user.email, "link": link, "mailed": mailed})
    return page, status, NO_STORE


def _mail_invitation(email: str, link: str, days: float) -> tuple[bool, str]:
    """(sent, what happened in words). The link on the page works whatever happens here."""
    workspace = g.workspace.name if g.get("workspace") else "a workspace"
    subject = f"You are invited to {workspace} on CloudThinker Webhooks"
    body = (
        f"{current_user.email} added you to {workspace} on CloudThinker Webhooks.\n\n"
        f"Choose your password here (the link works once, for {days:g} days):\n{link}\n"
    )
    try:
        error = notifications.send_email(settings(), [email], subject, body)
    except (OSError, ValueError) as exc:  # smtplib's and ssl's errors are OSErrors
        error = f"{type(exc).__name__}: {exc}"
    if error is None:
        return True, f"It was also e-mailed to {email}."
    log.warning("invitation e-mail to a new user not sent: %s", error)
    return False, f"E-mailing it failed ({error}), so pass it on yourself."


@bp.post("/users/<user_id>/remove")
def remove_user(user_id: str) -> ResponseReturnValue:
    """Take a user out of the workspace; their sessions end at once."""
    target = accounts.member(db.session, g.workspace_id, user_id)
    email = target.email if target is not None else ""
    try:
        removed = accounts.remove_user(db.session, g.workspace_id, user_id, current_user.id)
    except accounts.AccountError as exc:
        flash(str(exc), "error")
        return redirect(url_for("settings.users")), 303
    if not removed:
        abort(404)
    flash(f"{email} was removed and signed out.", "success")
    return redirect(url_for("settings.users")), 303


@bp.post("/password")
def change_password() -> ResponseReturnValue:
    """Change your password; your other sessions end, this one stays signed in."""
    errors = accounts.change_password(
        db.session,
        current_user,
        request.form.get("current_password", ""),
        request.form.get("new_password", ""),
        request.form.get("confirm_password", ""),
    )
    if errors:
        db.session.rollback()
        return _users_page(422, password_errors=errors)
    login_user(current_user)  # this session carries the new session token
    flash("Your password was changed. Your other sessions are signed out.", "success")
    return redirect(url_for("settings.users")), 303


@bp.get("/event-types")
def event_types() -> ResponseReturnValue:
    """The event catalog with descriptions and example payloads."""
    return render_template("settings/event_types.html", types=catalog.CATALOG)


@bp.app_template_global()
def shown_target(channel: str, target: str) -> str:
    """A notification's target as the page shows it (an alert URL's secret path cut)."""
    return notifications.shown_target(channel, target)


def _recent_notifications() -> list[Notification]:
    return notifications.recent(db.session, g.workspace_id)


def _notifications_page(values: dict[str, Any], errors: dict[str, str]) -> tuple[str, int]:
    return render_template(
        "settings/notifications.html",
        values=values,
        errors=errors,
        recent=_recent_notifications(),
        smtp_configured=bool(settings().smtp_url),
    ), 422 if errors else 200


@bp.get("/notifications")
def notifications_page() -> ResponseReturnValue:
    """Where the workspace is told about failing webhooks, and what was sent lately."""
    return _notifications_page(notification_settings.load(db.session, g.workspace_id), {})


@bp.post("/notifications")
def save_notifications() -> ResponseReturnValue:
    """Save the e-mail addresses and the alert URL."""
    payload = _form_notification_settings()
    reading = Reading(settings())
    try:
        notification_settings.save(db.session, g.workspace_id, payload, reading)
    except Invalid as exc:
        db.session.rollback()
        return _notifications_page(payload, exc.fields or {"form": exc.message})
    flash("Notification settings saved.", "success")
    for warning in reading.warnings:
        flash(warning, "info")
    return redirect(url_for("settings.notifications_page"))


def _form_notification_settings() -> dict[str, Any]:
    """The e-mail addresses and alert URL as the form stands (saved or not)."""
    emails = [e for e in re.split(r"[\s,;]+", request.form.get("emails", "")) if e]
    return {"emails": emails, "alert_url": request.form.get("alert_url", "").strip() or None}


@bp.post("/notifications/test")
@dashboard_limit("WEBHOOK_NOTIFY_TEST_RATE_LIMIT")
def test_notification() -> ResponseReturnValue:
    """Send a test message to every saved channel; it appears in the list below, then its result.

    Only what is saved gets it: what is typed in the form and not saved yet could be anyone's
    address."""
    saved = notification_settings.load(db.session, g.workspace_id)
    unsaved = "emails" in request.form and _form_notification_settings() != saved
    ids = notifications.send_test(db.session, g.workspace_id, settings())
    notifications.hand_off(services.redis(), settings(), ids)
    if not ids:
        message = "Add an e-mail address or an alert URL and save them first."
    elif unsaved:
        message = "Sent to the saved settings only: save your changes first to test them."
    else:
        message = None
    return render_template(
        "settings/_notifications.html", recent=_recent_notifications(), message=message
    )


@bp.errorhandler(429)
def _too_many(exc: HTTPException) -> ResponseReturnValue:
    """Over the per-person rate: the message appears above the list of notifications."""
    # 200, so that htmx swaps the message in where the list would have been.
    return render_template(
        "settings/_notifications.html",
        recent=_recent_notifications(),
        message=too_many("test notifications"),
    )


@bp.get("/notifications/recent")
def recent_notifications() -> ResponseReturnValue:
    """The recent notifications fragment; it polls while any is still being sent."""
    return render_template(
        "settings/_notifications.html", recent=_recent_notifications(), message=None
    )
