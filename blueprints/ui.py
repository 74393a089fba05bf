"""What every dashboard page shares: sign-in guard, workspace scoping, filters for times."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user
from werkzeug.exceptions import HTTPException

from blueprints import localtime
from blueprints.auth import current_workspace
from webhooks import catalog, listeners, services
from webhooks.config import Settings
from webhooks.models import Webhook, utcnow


def settings() -> Settings:
    return services.settings()


def require_workspace() -> None:
    """Before each dashboard request: a signed-in user looking at one of their workspaces."""
    if not current_user.is_authenticated:
        return current_app.login_manager.unauthorized()  # type: ignore[attr-defined]
    workspace = current_workspace()
    if workspace is None:
        abort(403, "You do not belong to any workspace yet.")
    g.workspace_id = workspace.id
    return None


def guarded(bp: Blueprint) -> Blueprint:
    bp.before_request(require_workspace)
    return bp


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """'3 min ago', 'in 2 h', 'just now'."""
    if moment is None:
        return "never"
    seconds = ((now or utcnow()) - moment).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 10:
        return "just now"
    for limit, size, unit in (
        (60, 1, "s"),
        (3600, 60, "min"),
        (86400, 3600, "h"),
        (None, 86400, "d"),
    ):
        if limit is None or seconds < limit:
            amount = int(seconds // size)
            return f"in {amount} {unit}" if future else f"{amount} {unit} ago"
    raise AssertionError("unreachable")


def summarize_events(patterns: list[str]) -> str:
    """'All events', 'Incident (all), finding.created', …"""
    if "*" in patterns:
        return "All events"
    labels = dict(catalog.CATEGORIES)
    parts = []
    for pattern in patterns:
        if pattern.endswith(".*") and pattern[:-2] in labels:
            parts.append(f"{labels[pattern[:-2]]} (all)")
        else:
            parts.append(pattern)
    if len(parts) > 3:
        return f"{', '.join(parts[:3])} and {len(parts) - 3} more"
    return ", ".join(parts)


def webhook_state(webhook: Webhook) -> tuple[str, str]:
    """('Active'|'Paused'|'Disabled', reason)."""
    if webhook.active:
        return "Active", ""
    reason = webhook.disabled_reason or ""
    if reason.startswith("Disabled"):
        return "Disabled", reason
    return "Paused", reason


def urlhost(url: str) -> str:
    """The scheme and host of a URL, shown prominently."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def urlrest(url: str) -> str:
    parts = urlsplit(url)
    return url[len(f"{parts.scheme}://{parts.netloc}") :]


def plural(count: int, noun: str) -> str:
    """'1 attempt', '2 attempts'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def prettyjson(text: str | None) -> str:
    """A JSON body indented for reading; other text as it is."""
    try:
        return json.dumps(json.loads(text or ""), indent=2, ensure_ascii=False)
    except ValueError:
        return text or ""


_ERROR_PAGES = {
    403: ("Not allowed", "You cannot open this page with your account."),
    404: (
        "Page not found",
        "Nothing is here: the link may be mistyped, or what it pointed to was deleted.",
    ),
    405: ("Not allowed", "This address does not take that kind of request."),
}


def install(app: Flask) -> None:
    """Template helpers and no-store caching for live fragments."""
    localtime.install(app)
    app.jinja_env.filters.update(
        ago=ago, urlhost=urlhost, urlrest=urlrest, prettyjson=prettyjson, plural=plural
    )
    app.jinja_env.globals.update(
        summarize_events=summarize_events,
        webhook_state=webhook_state,
        listener_state=lambda webhook: listeners.connected(services.of(app).redis, webhook),
        categories=catalog.CATEGORIES,
        catalog=catalog,
    )

    @app.after_request
    def _no_store_fragments(response: Response) -> Response:
        if request.headers.get("HX-Request") == "true":
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.context_processor
    def _workspace() -> dict[str, Any]:
        egress_ips = services.of(app).settings.egress_ips
        if current_user.is_authenticated:
            return {"workspace": current_workspace(), "egress_ips": egress_ips}
        return {"egress_ips": egress_ips}

    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(405)
    def _error_page(exc: HTTPException) -> ResponseReturnValue:
        if request.path == "/api/v1" or request.path.startswith("/api/"):
            from blueprints.api import http_error

            return http_error(exc)  # the API answers in JSON, even for a path it does not have
        title, message = _ERROR_PAGES.get(exc.code or 404, _ERROR_PAGES[404])
        if exc.code == 403 and exc.description and "workspace" in exc.description:
            message = exc.description
        return render_template("errors/page.html", title=title, message=message), exc.code or 500

    @app.get("/settings")
    def _settings_home() -> ResponseReturnValue:
        return redirect(url_for("dashboard.webhooks"))
