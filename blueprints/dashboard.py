"""Settings › Webhooks: the list, the create and edit form, and each webhook's page."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_htmx import make_response
from sqlalchemy import select
from werkzeug.exceptions import HTTPException

from blueprints import localtime, serialize, webhook_form
from blueprints.lookup import delivery_or_404, owned_or_404, webhook_or_404
from blueprints.security import dashboard_limit, too_many
from blueprints.ui import guarded, settings
from webhooks import (
    bulk,
    catalog,
    charts,
    credentials,
    flow,
    logs,
    management,
    publishing,
    services,
    templates,
)
from webhooks.errors import Invalid
from webhooks.models import BulkJob, Delivery, DeliveryStatus, Webhook, db, utcnow

bp = guarded(Blueprint("dashboard", __name__, url_prefix="/settings/webhooks"))

RECENT = 10


@bp.app_template_global()
def template_named(name: str | None) -> templates.Template | None:
    return templates.get(name or "")


@bp.app_template_global()
def shown_params(webhook: Webhook) -> dict[str, Any] | None:
    """A webhook's template settings as pages show them: credentials masked."""
    return credentials.mask_params(webhook.template_params)


@bp.app_template_global()
def template_header_names(webhook: Webhook) -> list[str]:
    """The headers a webhook's template adds when it sends."""
    return list(serialize.template_headers(webhook))


@bp.get("")
def webhooks() -> ResponseReturnValue:
    """List the workspace's webhooks with their state (and why one is failing) and last 24
    hours."""
    rows = management.listed(db.session, g.workspace_id)
    summary = logs.summaries(db.session, g.workspace_id, utcnow())
    sparklines = charts.sparklines(db.session, g.workspace_id, utcnow(), settings())
    return render_template(
        "dashboard/webhooks.html",
        webhooks=rows,
        summary=summary,
        sparklines=sparklines,
        last_errors=logs.last_errors(db.session, g.workspace_id),
    )


def render_form(
    webhook: Webhook | None, values: dict[str, Any], errors: dict[str, str]
) -> tuple[str, int]:
    template = templates.get(values.get("template") or "")
    return render_template(
        "dashboard/form.html",
        webhook=webhook,
        values=values,
        errors=errors,
        problems=webhook_form.summary(errors, template),
        template=template,
        gallery=templates.TEMPLATES.values(),
    ), 422 if errors else 200


@bp.route("/new", methods=["GET", "POST"])
def create() -> ResponseReturnValue:
    """Show the form for a new webhook, and create it."""
    if request.method == "GET":
        return render_form(None, webhook_form.values(None, request.args.get("template")), {})
    problems = management.Problems()  # the form's own reading, then the domain's checks
    try:
        payload = webhook_form.payload(request.form, creating=True, problems=problems)
        reading = management.Reading(settings(), problems=problems)
        webhook, _ = management.create(db.session, g.workspace_id, payload, reading)
    except Invalid as exc:
        db.session.rollback()
        values = webhook_form.redisplay(request.form, None)
        return render_form(None, values, exc.fields or {"form": exc.message})
    flash(f"Webhook “{webhook.name}” created. Send a test event to try it.", "success")
    for warning in reading.warnings:
        flash(warning, "info")
    return redirect(url_for("dashboard.show", webhook_id=webhook.id))


@bp.route("/<webhook_id>/edit", methods=["GET", "POST"])
def edit(webhook_id: str) -> ResponseReturnValue:
    """Show the form for an existing webhook, and save it."""
    webhook = webhook_or_404(webhook_id)
    if request.method == "GET":
        return render_form(webhook, webhook_form.values(webhook), {})
    problems = management.Problems()
    try:
        payload = webhook_form.payload(request.form, creating=False, problems=problems)
        reading = management.Reading(settings(), problems=problems)
        management.update(db.session, webhook, payload, reading)
    except Invalid as exc:
        db.session.rollback()
        values = webhook_form.redisplay(request.form, webhook)
        return render_form(webhook, values, exc.fields or {"form": exc.message})
    flash("Webhook saved.", "success")
    return redirect(url_for("dashboard.show", webhook_id=webhook.id))


@bp.get("/<webhook_id>")
def show(webhook_id: str) -> ResponseReturnValue:
    """A webhook's page: settings, switch, secret, test event, recent deliveries."""
    webhook = webhook_or_404(webhook_id)
    return render_template(
        "dashboard/show.html",
        webhook=webhook,
        recent=_recent(webhook),
        default_type=publishing.default_test_type(webhook),
        activity=_activity(webhook),
        waiting=flow.waiting_counts(db.session, webhook.id),
    )


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
def recent(webhook_id: str) -> ResponseReturnValue:
    """The recent deliveries fragment (polled)."""
    webhook = webhook_or_404(webhook_id)
    return render_template("dashboard/_recent.html", webhook=webhook, recent=_recent(webhook))


@bp.post("/<webhook_id>/active")
def toggle_active(webhook_id: str) -> ResponseReturnValue:
    """Pause or resume at once; turning it on offers to recover what failed meanwhile and to
    replay what it missed while it was off."""
    webhook = webhook_or_404(webhook_id)
    turning_on = request.form.get("active") == "on"
    # Turning it on clears these, so the offer's window is taken first.
    marks = [t for t in (webhook.failing_since, webhook.disabled_at) if t is not None]
    anchor = min(marks) if turning_on and not webhook.active and marks else None
    paused_at = webhook.disabled_at if turning_on and not webhook.active else None
    management.update(db.session, webhook, {"active": turning_on}, management.Reading(settings()))
    offer = bulk.recover_offer(db.session, webhook, anchor, settings()) if anchor else None
    missed = bulk.replay_offer(db.session, webhook, paused_at) if paused_at else 0
    return render_template(
        "dashboard/_active.html",
        webhook=webhook,
        offer=offer,
        missed=(paused_at, missed) if missed else None,
    )


def _form_time(name: str, required: bool = False) -> datetime | None:
    """A datetime-local field, typed in the browser's time zone; None when empty and optional."""
    value = request.form.get(name, "").strip()
    if not value:
        if required:
            raise Invalid("validation_error", f"Choose the {name} time.", {name: "required"})
        return None
    try:
        return localtime.from_input(value)
    except ValueError:
        raise Invalid("validation_error", f"Not a time: {value!r}", {name: "invalid"}) from None


def _start_bulk(webhook: Webhook, kind: str) -> ResponseReturnValue:
    """Start a bulk job from a form; its progress (or the error) appears in place."""
    try:
        since = cast(datetime, _form_time("since", required=True))  # required: never None
        until = _form_time("until") if kind == bulk.RECOVER else None
        job = bulk.start(db.session, _redis(), webhook, kind, since, until, settings())
    except Invalid as exc:
        db.session.rollback()
        # 200, so that htmx swaps the message in where the progress would have been.
        return render_template("dashboard/_job.html", job=None, error=exc.message)
    return render_template("dashboard/_job.html", job=job, error=None)


@bp.post("/<webhook_id>/recover")
def recover(webhook_id: str) -> ResponseReturnValue:
    """Deliver again the events whose deliveries failed in a window."""
    return _start_bulk(webhook_or_404(webhook_id), bulk.RECOVER)


@bp.post("/<webhook_id>/replay")
def replay(webhook_id: str) -> ResponseReturnValue:
    """Deliver the events of its types it missed since a time (while it was paused, say)."""
    return _start_bulk(webhook_or_404(webhook_id), bulk.REPLAY)


@bp.get("/jobs/<job_id>")
def job(job_id: str) -> ResponseReturnValue:
    """A bulk job's progress fragment; it stops polling once the job has ended."""
    return render_template(
        "dashboard/_job.html", job=owned_or_404(BulkJob, job_id, "job"), error=None
    )


@bp.get("/<webhook_id>/secret")
def secret(webhook_id: str) -> ResponseReturnValue:
    """The secret box, revealed."""
    webhook = webhook_or_404(webhook_id)
    return _revealed(webhook, management.current_secret(webhook))


@bp.post("/<webhook_id>/rotate")
def rotate(webhook_id: str) -> ResponseReturnValue:
    """A new secret; the previous one keeps signing for 24 hours."""
    webhook = webhook_or_404(webhook_id)
    new = management.rotate(db.session, webhook)
    return _revealed(webhook, new, rotated=True)


def _revealed(webhook: Webhook, secret: str | None, rotated: bool = False) -> str:
    """The secret box showing `secret`, with a note when it was just rotated in."""
    return render_template(
        "dashboard/_secret.html", webhook=webhook, revealed=True, secret=secret, rotated=rotated
    )


@bp.post("/<webhook_id>/test")
@dashboard_limit("WEBHOOK_DASHBOARD_RATE_LIMIT")
def send_test(webhook_id: str) -> ResponseReturnValue:
    """Send a catalog example to this webhook alone; the result appears in place."""
    webhook = webhook_or_404(webhook_id)
    event_type = request.form.get("type", "")
    if event_type not in catalog.BY_TYPE:
        return render_template(
            "dashboard/_test_result.html", error=f"Unknown event type {event_type!r}."
        ), 422
    _, delivery_id = publishing.send_test(db.session, _redis(), webhook, event_type, settings())
    return render_template(
        "dashboard/_test_result.html", delivery=db.session.get(Delivery, delivery_id)
    )


@bp.get("/test-results/<delivery_id>")
def test_result(delivery_id: str) -> ResponseReturnValue:
    """The test delivery's status fragment; it stops polling once the attempt is done, and
    then tells the page's activity charts to refresh."""
    delivery = delivery_or_404(delivery_id)
    page = render_template("dashboard/_test_result.html", delivery=delivery)
    if delivery.status == DeliveryStatus.PENDING:
        return page
    return make_response(page, trigger={"activity-changed": True})


@bp.get("/<webhook_id>/activity")
def activity(webhook_id: str) -> ResponseReturnValue:
    """The activity charts fragment, fetched again when a test delivery ends."""
    webhook = webhook_or_404(webhook_id)
    return render_template("dashboard/_charts.html", webhook=webhook, activity=_activity(webhook))


def _activity(webhook: Webhook) -> charts.Activity:
    """What the activity charts show, for the page and for the fragment alike."""
    return charts.for_webhook(db.session, webhook.id, utcnow(), settings())


@bp.post("/<webhook_id>/delete")
def delete(webhook_id: str) -> ResponseReturnValue:
    """Delete a webhook and its logs."""
    webhook = webhook_or_404(webhook_id)
    name = webhook.name
    management.delete(db.session, webhook)
    flash(f"Webhook “{name}” and its delivery logs were deleted.", "success")
    if request.headers.get("HX-Request") == "true":
        return make_response("", redirect=url_for("dashboard.webhooks"))
    return redirect(url_for("dashboard.webhooks"))


@bp.post("/preview")
@dashboard_limit("WEBHOOK_DASHBOARD_RATE_LIMIT")
def preview() -> ResponseReturnValue:
    """The body the form's settings would send for an event type's example."""
    return render_template(
        "dashboard/_preview.html", preview=webhook_form.preview(request.form, g.workspace_id)
    )


@bp.errorhandler(429)
def _too_many(exc: HTTPException) -> ResponseReturnValue:
    """Over the per-person rate: the message appears in place of the preview or the result."""
    # 200, so that htmx swaps the message in where the answer would have been.
    if request.endpoint == "dashboard.send_test":
        return render_template("dashboard/_test_result.html", error=too_many("test events"))
    return render_template(
        "dashboard/_preview.html", preview=webhook_form.Preview(error=too_many("previews"))
    )


@bp.post("/customise")
def customise() -> ResponseReturnValue:
    """The body field holding a copy of the template's body, to edit (it no longer follows)."""
    text, error = webhook_form.customise(request.form)
    return render_template(
        "dashboard/_transform.html",
        template=templates.get(request.form.get("template", "")),
        values={"transform": text},
        errors={"transform": error} if error else {},
    )


@bp.get("/header-row")
def header_row() -> ResponseReturnValue:
    """One more empty name/value row for the Headers field."""
    return render_template("dashboard/_header_row.html", name="", value="")


_redis = services.redis
