"""Settings › Webhooks › Logs: every delivery, filtered, live, with its attempts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from blueprints import localtime
from blueprints.lookup import delivery_or_404
from blueprints.ui import guarded, settings
from webhooks import bulk, catalog, logs, publishing, services, sqlite, verification
from webhooks.errors import Invalid
from webhooks.models import BulkJob, Delivery, DeliveryStatus, Webhook, db, utcnow

bp = Blueprint("logs", __name__, url_prefix="/settings/webhooks/logs")


@bp.before_request
def _reads_only() -> None:
    """The log's pages only read: on SQLite they neither wait for the write lock nor hold it
    (a count over a large log would otherwise keep every worker from recording meanwhile)."""
    if request.method == "GET":
        sqlite.reading(db.session)


guarded(bp)  # after the above: the sign-in check is the first read

PAGE = 50
FILTER_KEYS = ("q", "status", "event_type", "webhook_id", "since", "until")


def _filters() -> tuple[logs.LogFilter, dict[str, str], dict[str, str]]:
    """The filter from the query string, the values to show in the form, and any errors."""
    args = {k: request.args.get(k, "").strip() for k in FILTER_KEYS}
    try:
        return logs.LogFilter.from_args(args), args, {}
    except logs.BadFilter as exc:
        return logs.LogFilter(), args, {exc.field: str(exc)}


def _utc_query() -> dict[str, str] | None:
    """The filter form's fields with its From and To (typed in local time) turned to UTC."""
    query = {k: request.args.get(k, "").strip() for k in FILTER_KEYS}
    for key in ("since", "until"):
        try:
            query[key] = localtime.utc_value(query[key]) if query[key] else ""
        except ValueError:
            return None  # left as typed: the filter says what is wrong with it
    return {k: v for k, v in query.items() if v}


@bp.get("")
def index() -> ResponseReturnValue:
    """The log: newest first, filters kept in the URL, first page updating live."""
    if "zone" in request.args:  # the form, submitted: its local times go into the URL as UTC
        query = _utc_query()
        if query is not None:
            return redirect(url_for("logs.index", **query))  # type: ignore[arg-type]
    filters, values, errors = _filters()
    cursor = request.args.get("cursor") or None
    try:
        rows, next_cursor = logs.page(
            db.session, g.workspace_id, filters, limit=PAGE, cursor=cursor
        )
    except logs.BadFilter as exc:
        rows, next_cursor, errors = [], None, {exc.field: str(exc)}
    webhooks = db.session.scalars(
        select(Webhook).where(Webhook.workspace_id == g.workspace_id).order_by(Webhook.name)
    ).all()
    context = {
        "deliveries": rows,
        "next_cursor": next_cursor,
        "values": values,
        "errors": errors,
        "live": cursor is None,
        "query": {k: v for k, v in values.items() if v},
        "webhook_names": {w.id: w.name for w in webhooks},
        "titles": logs.titles(db.session, (d.event_id for d in rows)),
    }
    if request.headers.get("HX-Request") == "true" and request.args.get("fragment") == "rows":
        return render_template("logs/_live.html", **context)
    return render_template(
        "logs/index.html",
        webhooks=webhooks,
        statuses=logs.STATUSES,
        types=catalog.CATALOG,
        # Counted by `redeliver_offer` once the page is shown: counting up to 10,001 matches
        # as it rendered made a Failed view take up to 330 ms at a million rows (SQLite),
        # where the log itself takes 20 ms.
        offers_redeliver=_offers_redeliver(filters, errors),
        job=_shown_job(),
        **context,
    )


def _offers_redeliver(filters: logs.LogFilter, errors: dict[str, str]) -> bool:
    """Whether "Redeliver all matching" may apply: the view is of failed deliveries."""
    return not errors and filters.status == DeliveryStatus.FAILED


@bp.get("/redeliver-all")
def redeliver_offer() -> ResponseReturnValue:
    """The offer to redeliver all N failed deliveries the query string's filter matches: the
    fragment the logs page fetches once it is shown, or (without JavaScript) a page of its own."""
    filters, values, errors = _filters()
    count = 0
    if _offers_redeliver(filters, errors):
        count = bulk.redeliver_count(db.session, g.workspace_id, filters)
    context = {
        "redeliver_count": count,
        "max_per_call": bulk.MAX_PER_CALL,
        "query": {k: v for k, v in values.items() if v},
        "errors": errors,
    }
    if request.headers.get("HX-Request") == "true":
        return render_template("logs/_redeliver_all.html", **context)
    return render_template("logs/redeliver_all.html", **context)


def _shown_job() -> BulkJob | None:
    """The redeliver job started from this page without JavaScript (`?job=` after the POST)."""
    job_id = request.args.get("job")
    if not job_id:
        return None
    return db.session.scalars(
        select(BulkJob).where(BulkJob.id == job_id, BulkJob.workspace_id == g.workspace_id)
    ).first()


@bp.post("/redeliver-all")
def redeliver_all() -> ResponseReturnValue:
    """Redeliver every failed delivery the filter (in the form) matches, as one bulk job; its
    progress replaces the button."""
    try:
        filters = logs.LogFilter.from_args(request.form)
        if filters.status != DeliveryStatus.FAILED:
            raise Invalid("validation_error", "Only failed deliveries are redelivered in bulk.")
        job = bulk.start_redeliver(db.session, _redis(), g.workspace_id, filters, settings())
    except logs.BadFilter as exc:
        return _bulk_refused(str(exc))
    except Invalid as exc:
        return _bulk_refused(exc.message)
    if request.headers.get("HX-Request") == "true":
        return render_template("dashboard/_job.html", job=job, error=None)
    query = {k: v for k in FILTER_KEYS if (v := request.form.get(k, "").strip())}
    return redirect(url_for("logs.index", job=job.id, **query) + "#redeliver-all")  # type: ignore[arg-type]


def _bulk_refused(message: str) -> ResponseReturnValue:
    db.session.rollback()
    if request.headers.get("HX-Request") == "true":
        # 200, so that htmx swaps the message in where the progress would have been.
        return render_template("dashboard/_job.html", job=None, error=message)
    flash(message, "error")
    return redirect(url_for("logs.index"))


@bp.get("/<delivery_id>")
def show(delivery_id: str) -> ResponseReturnValue:
    """One delivery with every attempt's request and response."""
    delivery = delivery_or_404(delivery_id)
    return render_template(
        "logs/show.html", delivery=delivery, **_replay_context(delivery, request.args)
    )


@bp.get("/<delivery_id>/attempts")
def attempts(delivery_id: str) -> ResponseReturnValue:
    """The attempts fragment of a delivery; polls itself while the delivery is pending."""
    return render_template("logs/_attempts.html", delivery=delivery_or_404(delivery_id))


@bp.post("/<delivery_id>/redeliver")
def redeliver(delivery_id: str) -> ResponseReturnValue:
    """Send the same event to the same webhook again, as a new delivery."""
    new_id = publishing.redeliver(db.session, _redis(), delivery_or_404(delivery_id), settings())
    flash("Redelivery queued: it appears at the top of the logs.", "success")
    return redirect(url_for("logs.show", delivery_id=new_id))


REPLAY_URL = "http://localhost:3000/hook"


@bp.post("/<delivery_id>/check-signature")
def check_signature(delivery_id: str) -> ResponseReturnValue:
    """Check a body and headers a receiver got against what this delivery sent."""
    delivery = delivery_or_404(delivery_id)
    headers_text = request.form.get("headers", "")
    report = verification.check(
        db.session,
        delivery.webhook,
        request.form.get("body", ""),
        verification.parse_header_lines(headers_text),
        now=utcnow(),
        secret=request.form.get("secret") or None,
        computed=request.form.get("computed") or None,
    )
    return render_template("logs/_signature_result.html", delivery=delivery, report=report)


@bp.get("/<delivery_id>/replay")
def replay(delivery_id: str) -> ResponseReturnValue:
    """The curl command that replays one attempt's exact request to a URL of your choice."""
    delivery = delivery_or_404(delivery_id)
    return render_template(
        "logs/_replay.html", delivery=delivery, **_replay_context(delivery, request.args)
    )


def _replay_context(delivery: Delivery, args: Mapping[str, str]) -> dict[str, Any]:
    """The attempt chosen (default the latest), the URL, and the command."""
    attempts = {str(a.number): a for a in delivery.attempts}
    attempt = attempts.get(args.get("attempt", "")) or (
        delivery.attempts[-1] if delivery.attempts else None
    )
    url = args.get("url", "").strip() or REPLAY_URL
    command = None
    if attempt is not None:
        sent = verification.Sent(attempt.request_body, dict(attempt.request_headers))
        command = verification.replay_command(url, sent)
    return {"attempt": attempt, "replay_url": url, "command": command}


_redis = services.redis
