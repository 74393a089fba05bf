"""Settings › Webhooks: the list, the create and edit form, and each webhook's page."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from flask_htmx import make_response
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from blueprints import webhook_form
from blueprints.ui import delivery_or_404, guarded, settings, webhook_or_404
from webhooks import catalog, logs, management, publishing, templates
from webhooks.management import Invalid
from webhooks.models import Delivery, Webhook, db, utcnow

bp = guarded(Blueprint("dashboard", __name__, url_prefix="/settings/webhooks"))

RECENT = 10


@bp.get("")
def webhooks():  # type: ignore[no-untyped-def]
    """List the workspace's webhooks with their state and last 24 hours."""
    rows = db.session.scalars(
        select(Webhook)
        .where(Webhook.workspace_id == g.workspace_id)
        .options(selectinload(Webhook.secrets))
        .order_by(Webhook.created_at.desc(), Webhook.id.desc())
    ).all()
    summary = logs.summaries(db.session, g.workspace_id, utcnow())
    return render_template("dashboard/webhooks.html", webhooks=rows, summary=summary)


def render_form(webhook: Webhook | None, values: dict[str, Any], errors: dict[str, str]):  # type: ignore[no-untyped-def]
    template = templates.get(values.get("template") or "")
    return render_template(
        "dashboard/form.html",
        webhook=webhook,
        values=values,
        errors=errors,
        template=template,
        gallery=templates.TEMPLATES.values(),
    ), 422 if errors else 200


@bp.route("/new", methods=["GET", "POST"])
def create():  # type: ignore[no-untyped-def]
    """Show the form for a new webhook, and create it."""
    if request.method == "GET":
        return render_form(None, webhook_form.values(None, request.args.get("template")), {})
    try:
        payload = webhook_form.payload(request.form, creating=True)
        warnings: list[str] = []
        webhook, _ = management.create(db.session, g.workspace_id, payload, settings(), warnings)
    except Invalid as exc:
        db.session.rollback()
        values = webhook_form.redisplay(request.form, None)
        return render_form(None, values, exc.fields or {"form": exc.message})
    flash(f"Webhook “{webhook.name}” created. Send a test event to try it.", "success")
    for warning in warnings:
        flash(warning, "info")
    return redirect(url_for("dashboard.show", webhook_id=webhook.id))


@bp.route("/<webhook_id>/edit", methods=["GET", "POST"])
def edit(webhook_id: str):  # type: ignore[no-untyped-def]
    """Show the form for an existing webhook, and save it."""
    webhook = webhook_or_404(webhook_id)
    if request.method == "GET":
        return render_form(webhook, webhook_form.values(webhook), {})
    try:
        payload = webhook_form.payload(request.form, creating=False)
        management.update(db.session, webhook, payload, settings())
    except Invalid as exc:
        db.session.rollback()
        values = webhook_form.redisplay(request.form, webhook)
        return render_form(webhook, values, exc.fields or {"form": exc.message})
    flash("Webhook saved.", "success")
    return redirect(url_for("dashboard.show", webhook_id=webhook.id))


@bp.get("/<webhook_id>")
def show(webhook_id: str):  # type: ignore[no-untyped-def]
    """A webhook's page: settings, switch, secret, test event, recent deliveries."""
    webhook = webhook_or_404(webhook_id)
    return render_template(
        "dashboard/show.html",
        webhook=webhook,
        recent=_recent(webhook),
        default_type=_default_type(webhook),
    )


def _default_type(webhook: Webhook) -> str:
    for event in catalog.CATALOG:
        if publishing.subscribes(webhook, event.type):
            return event.type
    return catalog.CATALOG[0].type


def _recent(webhook: Webhook) -> list[Delivery]:
    return list(
        db.session.scalars(
            select(Delivery)
            .where(Delivery.webhook_id == webhook.id)
            .order_by(Delivery.created_at.desc(), Delivery.id.desc())
            .limit(RECENT)
        )
    )


@bp.get("/<webhook_id>/deliveries")
def recent(webhook_id: str):  # type: ignore[no-untyped-def]
    """The recent deliveries fragment (polled)."""
    webhook = webhook_or_404(webhook_id)
    return render_template("dashboard/_recent.html", webhook=webhook, recent=_recent(webhook))


@bp.post("/<webhook_id>/active")
def toggle_active(webhook_id: str):  # type: ignore[no-untyped-def]
    """Pause or resume at once (the Active switch saves by itself)."""
    webhook = webhook_or_404(webhook_id)
    management.update(
        db.session, webhook, {"active": request.form.get("active") == "on"}, settings()
    )
    return render_template("dashboard/_active.html", webhook=webhook)


@bp.get("/<webhook_id>/secret")
def secret(webhook_id: str):  # type: ignore[no-untyped-def]
    """The secret box, revealed."""
    webhook = webhook_or_404(webhook_id)
    return render_template(
        "dashboard/_secret.html",
        webhook=webhook,
        revealed=True,
        secret=management.current_secret(webhook),
    )


@bp.post("/<webhook_id>/rotate")
def rotate(webhook_id: str):  # type: ignore[no-untyped-def]
    """A new secret; the previous one keeps signing for 24 hours."""
    webhook = webhook_or_404(webhook_id)
    new = management.rotate(db.session, webhook)
    return render_template(
        "dashboard/_secret.html", webhook=webhook, revealed=True, secret=new, rotated=True
    )


@bp.post("/<webhook_id>/test")
def send_test(webhook_id: str):  # type: ignore[no-untyped-def]
    """Send a catalog example to this webhook alone; the result appears in place."""
    webhook = webhook_or_404(webhook_id)
    event_type = request.form.get("type", "")
    if event_type not in catalog.BY_TYPE:
        return render_template(
            "dashboard/_test_result.html", error=f"Unknown event type {event_type!r}."
        ), 422
    event = publishing.create_test_event(db.session, webhook, event_type)
    delivery_id = publishing.add_delivery(db.session, event, webhook, settings(), kind="test")
    publishing.dispatch(db.session, _redis(), settings(), [delivery_id])
    return render_template(
        "dashboard/_test_result.html", delivery=db.session.get(Delivery, delivery_id)
    )


@bp.get("/test-results/<delivery_id>")
def test_result(delivery_id: str):  # type: ignore[no-untyped-def]
    """The test delivery's status fragment; it stops polling once the attempt is done."""
    return render_template("dashboard/_test_result.html", delivery=delivery_or_404(delivery_id))


@bp.post("/<webhook_id>/delete")
def delete(webhook_id: str):  # type: ignore[no-untyped-def]
    """Delete a webhook and its logs."""
    webhook = webhook_or_404(webhook_id)
    name = webhook.name
    db.session.delete(webhook)
    db.session.commit()
    flash(f"Webhook “{name}” and its delivery logs were deleted.", "success")
    if request.headers.get("HX-Request") == "true":
        return make_response("", redirect=url_for("dashboard.webhooks"))
    return redirect(url_for("dashboard.webhooks"))


@bp.post("/preview")
def preview():  # type: ignore[no-untyped-def]
    """The body the form's settings would send for an event type's example."""
    body, error = webhook_form.preview(request.form, g.workspace_id)
    return render_template("dashboard/_preview.html", body=body, error=error)


@bp.get("/header-row")
def header_row():  # type: ignore[no-untyped-def]
    """One more empty name/value row for the Headers field."""
    return render_template("dashboard/_header_row.html", name="", value="")


def _redis():  # type: ignore[no-untyped-def]
    from flask import current_app

    return current_app.extensions["redis"]
