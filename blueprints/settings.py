"""Settings › API keys and the event catalog."""

from __future__ import annotations

from flask import Blueprint, abort, g, render_template, request
from sqlalchemy import select

from blueprints.ui import guarded
from webhooks import accounts, catalog
from webhooks.models import ApiKey, db, utcnow

bp = guarded(Blueprint("settings", __name__, url_prefix="/settings"))


def _keys() -> list[ApiKey]:
    return list(
        db.session.scalars(
            select(ApiKey)
            .where(ApiKey.workspace_id == g.workspace_id)
            .order_by(ApiKey.revoked_at.is_not(None), ApiKey.created_at.desc())
        )
    )


@bp.get("/api-keys")
def api_keys():  # type: ignore[no-untyped-def]
    """List the workspace's API keys."""
    return render_template("settings/api_keys.html", keys=_keys(), created=None, error=None)


@bp.post("/api-keys")
def create_api_key():  # type: ignore[no-untyped-def]
    """Create a key; the full key is shown this once."""
    name = request.form.get("name", "").strip()
    if not name or len(name) > 200:
        error = "Give the key a name (at most 200 characters), such as the system that will use it."
        return render_template(
            "settings/api_keys.html", keys=_keys(), created=None, error=error
        ), 422
    key, plain = accounts.create_api_key(db.session, g.workspace_id, name)
    db.session.commit()
    return render_template("settings/api_keys.html", keys=_keys(), created=(key, plain), error=None)


@bp.post("/api-keys/<key_id>/revoke")
def revoke_api_key(key_id: str):  # type: ignore[no-untyped-def]
    """Revoke a key: requests with it are refused from now on."""
    key = db.session.scalars(
        select(ApiKey).where(ApiKey.id == key_id, ApiKey.workspace_id == g.workspace_id)
    ).first()
    if key is None:
        abort(404)
    key.revoked_at = key.revoked_at or utcnow()
    db.session.commit()
    return render_template("settings/api_keys.html", keys=_keys(), created=None, error=None)


@bp.get("/event-types")
def event_types():  # type: ignore[no-untyped-def]
    """The event catalog with descriptions and example payloads."""
    return render_template("settings/event_types.html", types=catalog.CATALOG)
