"""The REST API under /api/v1: JSON in, JSON out, every query scoped to the key's workspace."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from werkzeug.exceptions import HTTPException

from blueprints import security
from blueprints.lookup import Missing, delivery_or_404, owned_or_404, webhook_or_404
from blueprints.serialize import envelope_json
from webhooks import (
    bulk,
    catalog,
    checks,
    listeners,
    logs,
    management,
    notification_settings,
    publishing,
    schemas,
    services,
    verification,
)
from webhooks.errors import Invalid
from webhooks.models import BulkJob, Delivery, Event, db, utcnow
from webhooks.schemas import Reading

bp = Blueprint("api", __name__, url_prefix="/api/v1")

MAX_PAGE = 100
MAX_BATCH = publishing.MAX_BATCH
DEFAULT_PAGE = 50


settings = services.settings
redis = services.redis


@bp.errorhandler(Invalid)
def _invalid(exc: Invalid) -> Response:
    response = jsonify(schemas.Error.of(exc))
    response.status_code = exc.status
    return response


@bp.errorhandler(Missing)
def _missing(exc: Missing) -> Response:
    return _invalid(Invalid("not_found", exc.description or "no such resource", status=404))


@bp.errorhandler(429)  # by code, so that it wins over the dashboard's 429 page
@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> ResponseReturnValue:
    codes = {
        401: "unauthorized",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        429: "rate_limited",
        500: "internal_error",
        503: "unavailable",
    }
    code = codes.get(exc.code or 500, "bad_request")
    message = {
        404: "no such resource",
        413: "request body too large",
        500: "the server failed to handle this request; it is safe to retry "
        "(with the same Idempotency-Key, nothing is sent twice)",
        429: f"rate limit exceeded ({exc.description}); retry after the Retry-After seconds",
    }.get(exc.code or 500, exc.description or exc.name)
    response = _invalid(Invalid(code, message, status=exc.code or 500))
    if exc.code == 429:
        response.headers["Retry-After"] = str(security.retry_after())
    return response


def fail(code: str, message: str, status: int = 400, **fields: str) -> Invalid:
    return Invalid(code, message, dict(fields), status=status)


def fail_field(code: str, message: str, field: str, problem: str) -> Invalid:
    """A 400 naming one field whose name is not an identifier (`since`, `events[0].type`)."""
    return Invalid(code, message, {field: problem})


@bp.before_request
def _authenticate() -> None:
    if security.has_nul(request):
        raise fail("validation_error", "the request URL must not contain NUL characters")
    workspace_id = security.api_workspace_id()
    security.api_limit()  # per workspace, or per address for a call without a valid key
    if workspace_id is None:
        raise fail("unauthorized", "missing or invalid API key (Authorization: Bearer <key>)", 401)
    g.workspace_id = workspace_id


def _given(shape: type[schemas.Shape]) -> dict[str, Any]:
    """The request body read by `shape`: its fields as their checks take them, or a 400 that
    names every problem."""
    reading = Reading(settings())
    given = shape.read(json_body(), reading)
    reading.problems.raise_listed()
    return given


def json_body(*, optional: bool = False) -> dict[str, Any]:
    raw = request.get_data(cache=True)
    if not raw.strip() and optional:
        return {}
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise fail("invalid_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise fail("invalid_json", "the request body must be a JSON object")
    return payload


@bp.get("/event-types")
def event_types() -> ResponseReturnValue:
    """List the event catalog."""
    return {"data": [schemas.EventType.of(event) for event in catalog.CATALOG]}


@bp.post("/webhooks")
def create_webhook() -> ResponseReturnValue:
    """Create a webhook; the answer carries its secret."""
    reading = Reading(settings())
    webhook, secret = management.create(db.session, g.workspace_id, json_body(), reading)
    return {**schemas.Webhook.of(webhook, secret=secret), **_warned(reading.warnings)}, 201


@bp.get("/webhooks")
def list_webhooks() -> ResponseReturnValue:
    """List the workspace's webhooks, newest first."""
    webhooks = management.listed(db.session, g.workspace_id)
    return {"data": [schemas.Webhook.of(w) for w in webhooks]}


@bp.get("/webhooks/<webhook_id>")
def get_webhook(webhook_id: str) -> ResponseReturnValue:
    """Show one webhook (without its secret)."""
    return schemas.Webhook.of(webhook_or_404(webhook_id))


@bp.patch("/webhooks/<webhook_id>")
def update_webhook(webhook_id: str) -> ResponseReturnValue:
    """Change any field of a webhook."""
    webhook = webhook_or_404(webhook_id)
    reading = Reading(settings())
    management.update(db.session, webhook, json_body(), reading)
    return {**schemas.Webhook.of(webhook), **_warned(reading.warnings)}


def _warned(warnings: list[str]) -> dict[str, list[str]]:
    """`warnings` in an answer, only when there is something to say."""
    return {"warnings": warnings} if warnings else {}


@bp.delete("/webhooks/<webhook_id>")
def delete_webhook(webhook_id: str) -> ResponseReturnValue:
    """Delete a webhook with its delivery logs."""
    management.delete(db.session, webhook_or_404(webhook_id))
    return "", 204


@bp.get("/webhooks/<webhook_id>/secret")
def get_secret(webhook_id: str) -> ResponseReturnValue:
    """Reveal the current signing secret."""
    return schemas.Secret.of(secret=management.current_secret(webhook_or_404(webhook_id)))


@bp.post("/webhooks/<webhook_id>/rotate-secret")
def rotate_secret(webhook_id: str) -> ResponseReturnValue:
    """Make a new secret current; the old one signs alongside for 24 hours."""
    webhook = webhook_or_404(webhook_id)
    secret = management.rotate(db.session, webhook, json_body(optional=True).get("secret"))
    return schemas.Rotated.of(secret=secret, webhook=schemas.Webhook.of(webhook))


@bp.post("/webhooks/<webhook_id>/test")
def send_test(webhook_id: str) -> ResponseReturnValue:
    """Send a catalog example to this webhook alone, once, active or not."""
    webhook = webhook_or_404(webhook_id)
    event_type = json_body(optional=True).get("type") or publishing.default_test_type(webhook)
    if not isinstance(event_type, str) or event_type not in catalog.BY_TYPE:
        raise fail("unknown_event_type", f"unknown event type {event_type!r}", type="unknown type")
    event, delivery_id = publishing.send_test(db.session, redis(), webhook, event_type, settings())
    return schemas.TestSent.of(event=envelope_json(event), delivery_id=delivery_id), 202


@bp.post("/webhooks/<webhook_id>/verify-signature")
def verify_signature(webhook_id: str) -> ResponseReturnValue:
    """Say whether a received request verifies, per signature header, and why not."""
    webhook = webhook_or_404(webhook_id)
    given = _given(schemas.SignatureCheckInput)
    report = verification.check(
        db.session,
        webhook,
        given["body"],
        given["headers"],
        now=utcnow(),
        secret=given.get("secret"),
        computed=given.get("computed"),
    )
    return schemas.SignatureReport.of(report)


@bp.post("/events")
def publish_event() -> ResponseReturnValue:
    """Publish an event to every active webhook subscribed to its type."""
    _body_within(settings().max_payload_bytes)
    payload = json_body()
    event_type, data = payload.get("type"), payload.get("data", {})
    if not isinstance(event_type, str) or not event_type:
        raise fail("validation_error", "type is required", type="required")
    if event_type not in catalog.BY_TYPE:
        raise fail("unknown_event_type", f"unknown event type {event_type!r}", type="unknown type")
    if not isinstance(data, dict):
        raise fail("validation_error", "data must be a JSON object", data="must be an object")
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > 255:
        raise fail("validation_error", "Idempotency-Key must be at most 255 characters")
    try:
        published = publishing.publish(
            db.session,
            g.workspace_id,
            event_type,
            data,
            settings(),
            idempotency_key=key,
            webhooks=security.api_webhooks(),
        )
    except publishing.IdempotencyConflict:
        raise fail(
            "idempotency_conflict",
            f"Idempotency-Key {key!r} was already used with a different request body",
            409,
        ) from None
    if published.created:
        publishing.dispatch(db.session, redis(), settings(), published.delivery_ids)
    return _published_json(published), 202 if published.created else 200


def _body_within(limit: int, why: str = "") -> None:
    """Refuse a request body over `limit` bytes (413) before parsing it."""
    if (request.content_length or 0) > limit or len(request.get_data(cache=True)) > limit:
        raise fail("payload_too_large", f"the request body is over {limit} bytes{why}", 413)


@bp.post("/events/batch")
def publish_events_batch() -> ResponseReturnValue:
    """Publish up to 100 events in one call: all of them stored, or none."""
    per_event = settings().max_payload_bytes
    # Room for MAX_BATCH events of the largest size one POST /events takes: more than the
    # app-wide cap on request bodies, which werkzeug would enforce first.
    request.max_content_length = MAX_BATCH * per_event
    _body_within(MAX_BATCH * per_event, f" ({MAX_BATCH} × WEBHOOK_MAX_PAYLOAD_BYTES)")
    items = _batch_items(json_body(), per_event)
    try:
        published = publishing.publish_batch(db.session, g.workspace_id, items, settings())
    except publishing.BatchConflict as exc:
        raise _batch_conflict(exc, items) from None
    if any(p.created for p in published):
        new_ids = [d for p in published if p.created for d in p.delivery_ids]
        publishing.dispatch(db.session, redis(), settings(), new_ids)
    return {"data": [_published_json(p) for p in published]}, 202


def _published_json(published: publishing.Published) -> dict[str, Any]:
    """What POST /events answers for a published event."""
    return {**envelope_json(published.event), "delivery_count": len(published.delivery_ids)}


BATCH_EVENT_FIELDS = ("type", "data", "idempotency_key")


def _batch_items(payload: dict[str, Any], per_event: int) -> list[publishing.Item]:
    """The events of a batch body, or one error naming every bad event by its index."""
    events = payload.get("events")
    problems = _unknown_fields(payload, ("events",), "")
    if not isinstance(events, list) or not events:
        got = "nothing" if events is None else "an empty list" if events == [] else repr(events)
        problems["events"] = (f"required: a list of 1 to {MAX_BATCH} events, got {got[:40]}", "")
    elif len(events) > MAX_BATCH:
        problems["events"] = (f"at most {MAX_BATCH} events per call, got {len(events)}", "")
    if problems:
        raise _batch_invalid(problems)
    checked = cast(list[Any], events)  # a list, or problems were raised above
    items = [_batch_item(i, event, per_event, problems) for i, event in enumerate(checked)]
    if problems:
        raise _batch_invalid(problems)
    return [item for item in items if item is not None]


def _batch_item(
    index: int, event: Any, per_event: int, problems: dict[str, tuple[str, str]]
) -> publishing.Item | None:
    """One event of a batch checked as POST /events checks its body; problems go to
    `problems` (field -> (message, code)) under `events[<index>]…`."""
    at = f"events[{index}]"
    if not isinstance(event, dict):
        problems[at] = ("must be an object with type and data", "")
        return None
    found = _unknown_fields(event, BATCH_EVENT_FIELDS, at + ".")
    event_type, data = event.get("type"), event.get("data", {})
    key = event.get("idempotency_key")
    if not isinstance(event_type, str) or not event_type:
        found[at + ".type"] = ("required: an event type", "")
    elif event_type not in catalog.BY_TYPE:
        found[at + ".type"] = (f"unknown event type {event_type!r}", "unknown_event_type")
    if not isinstance(data, dict):
        found[at + ".data"] = ("must be an object", "")
    if key is not None and (not isinstance(key, str) or len(key) > 255):
        found[at + ".idempotency_key"] = ("must be a string of at most 255 characters", "")
    if found:
        problems.update(found)
        return None
    event_type = cast(str, event_type)  # a catalog type, or `found` said otherwise
    if _compact_size(event_type, data) > per_event:
        problems[at + ".data"] = (f"over {per_event} bytes as JSON", "payload_too_large")
        return None
    return publishing.Item(event_type, data, key or None)


def _unknown_fields(
    body: dict[str, Any], known: tuple[str, ...], at: str
) -> dict[str, tuple[str, str]]:
    """A problem for each field of `body` that is not `known` (a misspelt idempotency key
    would otherwise publish twice on a retry)."""
    allowed = ", ".join(known)
    return {
        at + name: (f"unknown field (allowed: {allowed})", "") for name in body if name not in known
    }


def _compact_size(event_type: str, data: dict[str, Any]) -> int:
    """The bytes of `{"type", "data"}` as compact JSON: POST /events' body for this event."""
    compact = json.dumps(
        {"type": event_type, "data": data}, separators=(",", ":"), ensure_ascii=False
    )
    return len(compact.encode())


def _batch_invalid(problems: dict[str, tuple[str, str]]) -> Invalid:
    """One error for all of a batch's problems: their code when they share one (e.g.
    `unknown_event_type`, 413 `payload_too_large`), else `validation_error`."""
    codes = {code or "validation_error" for _, code in problems.values()}
    code = codes.pop() if len(codes) == 1 else "validation_error"
    listed = "; ".join(f"{field}: {message}" for field, (message, _) in list(problems.items())[:5])
    more = f" (and {len(problems) - 5} more in fields)" if len(problems) > 5 else ""
    message = f"nothing was published: {listed}{more}"
    fields = {field: text for field, (text, _) in problems.items()}
    return Invalid(code, message, fields, status=413 if code == "payload_too_large" else 400)


def _batch_conflict(exc: publishing.BatchConflict, items: list[publishing.Item]) -> Invalid:
    """409 naming each event whose idempotency key was used before with another body."""
    fields = {}
    for index, earlier in exc.indexes.items():
        key = items[index].idempotency_key
        where = "by an earlier call" if earlier is None else f"by events[{earlier}]"
        fields[f"events[{index}].idempotency_key"] = (
            f"{key!r} was already used {where} with a different body"
        )
    listed = "; ".join(f"{field}: {message}" for field, message in list(fields.items())[:5])
    return Invalid("idempotency_conflict", f"nothing was published: {listed}", fields, status=409)


def listener_or_404(listener_id: str) -> listeners.Listener:
    listener: listeners.Listener = owned_or_404(listeners.Listener, listener_id, "listener")
    return listener


@bp.post("/listeners")
def create_listener() -> ResponseReturnValue:
    """Open a listener for the `listen` command: a webhook whose deliveries go to its stream."""
    payload = json_body(optional=True)
    events = checks.check_events(payload.get("events", ["*"]))
    listener, secret = listeners.create(db.session, g.workspace_id, events)
    stream_url = f"/api/v1/listeners/{listener.id}/stream"
    return schemas.Listener.of(listener, secret=secret, stream_url=stream_url), 201


@bp.get("/listeners/<listener_id>/stream")
def listener_stream(listener_id: str) -> ResponseReturnValue:
    """Server-Sent Events: one `delivery` event per attempt, and a comment line every
    WEBHOOK_LISTENER_HEARTBEAT_SECONDS (10 s) while there is none."""
    listener_or_404(listener_id)
    streams = current_app.extensions.setdefault(
        "listener_streams", listeners.Streams(settings().listener_streams)
    )
    if not streams.take():
        limit = settings().listener_streams
        refused = _invalid(
            fail(
                "unavailable",
                f"this web process already serves {limit} listener streams "
                "(WEBHOOK_LISTENER_STREAMS); retry shortly",
                503,
            )
        )
        # A place frees within a heartbeat of a command leaving. `listen` retries every second;
        # Retry-After asks other clients for the same.
        refused.headers["Retry-After"] = "1"
        return refused
    db.session.rollback()
    return Response(
        stream_with_context(_listener_events(listener_id, streams)),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _listener_events(listener_id: str, streams: listeners.Streams) -> Iterator[str]:
    heartbeat = settings().listener_heartbeat
    conn = listeners.stream_redis(settings().redis_url, heartbeat)
    try:
        yield "retry: 1000\n" + listeners.sse(None, comment="connected")
        while listeners.touch(db.session, listener_id, utcnow()):
            listeners.mark_live(conn, listener_id, heartbeat)
            attempt = listeners.next_attempt(db.session, conn, listener_id, heartbeat)
            if attempt is None:
                yield listeners.sse(None, comment="waiting for deliveries")
            else:
                yield listeners.sse("delivery", attempt)
    finally:
        listeners.mark_gone(conn, listener_id)
        conn.close()
        db.session.remove()
        streams.give_back()


@bp.post("/listeners/<listener_id>/results")
def listener_result(listener_id: str) -> ResponseReturnValue:
    """Record the outcome of an attempt the `listen` command made."""
    listener = listener_or_404(listener_id)
    given = _given(schemas.ListenerResultInput)
    delivery_id, number = given.pop("delivery_id"), given.pop("attempt")
    attempt_id = listeners.attempt_in_flight(db.session, listener, delivery_id, number)
    if attempt_id is None:
        raise fail(
            "not_found",
            f"attempt {number} of {delivery_id!r} is not waiting for a result "
            "(it timed out, or it is not this listener's)",
            404,
        )
    # Every field of the outcome, null where the command reported none.
    outcome = {**dict.fromkeys(schemas.ListenerResultInput.defaults()), **given}
    listeners.report(redis(), attempt_id, outcome, settings())
    return schemas.ListenerResult.of(delivery_id=delivery_id, attempt=number, accepted=True), 202


@bp.delete("/listeners/<listener_id>")
def delete_listener(listener_id: str) -> ResponseReturnValue:
    """Close a listener; its webhook goes with it."""
    listeners.close(db.session, redis(), listener_or_404(listener_id))
    return "", 204


@bp.get("/events/<event_id>")
def get_event(event_id: str) -> ResponseReturnValue:
    """Show an event with its deliveries."""
    event = owned_or_404(Event, event_id, "event")
    deliveries = db.session.scalars(
        select(Delivery)
        .where(Delivery.event_id == event.id)
        .order_by(Delivery.created_at, Delivery.id)
    ).all()
    return {
        **envelope_json(event),
        "delivery_count": len(deliveries),
        "deliveries": [schemas.Delivery.of(d) for d in deliveries],
    }


@bp.get("/deliveries")
def list_deliveries() -> ResponseReturnValue:
    """List deliveries newest first, filtered, with keyset pagination."""
    try:
        limit = int(request.args.get("limit", DEFAULT_PAGE))
    except ValueError:
        raise fail("validation_error", "limit must be a whole number", limit="invalid") from None
    if not 1 <= limit <= MAX_PAGE:
        raise fail(
            "validation_error", f"limit must be 1-{MAX_PAGE}, got {limit}", limit="out of range"
        )
    try:
        filters = logs.LogFilter.from_args(request.args)
        rows, next_cursor = logs.page(
            db.session, g.workspace_id, filters, limit=limit, cursor=request.args.get("cursor")
        )
    except logs.BadFilter as exc:
        raise Invalid("validation_error", str(exc), {exc.field: str(exc)}) from None
    return {"data": [schemas.Delivery.of(d) for d in rows], "next_cursor": next_cursor}


@bp.get("/deliveries/<delivery_id>")
def get_delivery(delivery_id: str) -> ResponseReturnValue:
    """Show a delivery with its event and every attempt."""
    delivery = delivery_or_404(delivery_id)
    return {
        **schemas.Delivery.of(delivery),
        "event": envelope_json(delivery.event),
        "attempts": [schemas.Attempt.of(a) for a in delivery.attempts],
    }


@bp.post("/deliveries/<delivery_id>/redeliver")
def redeliver(delivery_id: str) -> ResponseReturnValue:
    """Send the same event to the same webhook again, as a new delivery."""
    new_id = publishing.redeliver(db.session, redis(), delivery_or_404(delivery_id), settings())
    return schemas.Delivery.of(db.session.get_one(Delivery, new_id)), 202


@bp.get("/egress-ips")
def egress_ips() -> ResponseReturnValue:
    """The addresses deliveries come from, for firewall allowlists."""
    return schemas.EgressIps.of(ips=list(settings().egress_ips))


def _time(payload: dict[str, Any], name: str, *, required: bool = False) -> datetime | None:
    """An ISO 8601 time from the body (no zone means UTC), or None when absent."""
    value = payload.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise fail_field("validation_error", f"{name} is required (ISO 8601)", name, "required")
    try:
        return logs.parse_time(name, value)
    except logs.BadFilter as exc:
        raise Invalid("validation_error", str(exc), {name: str(exc)}) from None


def _bulk(webhook_id: str, kind: str, shape: type[schemas.Shape]) -> ResponseReturnValue:
    webhook = webhook_or_404(webhook_id)
    payload = json_body()
    extra = sorted(set(payload) - set(shape.model_fields))
    if extra:
        raise fail_field("validation_error", f"unknown field {extra[0]!r}", extra[0], "unknown")
    since = cast(datetime, _time(payload, "since", required=True))  # required: never None
    until = _time(payload, "until") if "until" in shape.model_fields else None
    job = bulk.start(db.session, redis(), webhook, kind, since, until, settings())
    capped = {
        "message": f"at most {bulk.MAX_PER_CALL} deliveries per call; once this job is done, "
        "call again for the rest"
    }
    more = capped if job.total >= bulk.MAX_PER_CALL else {}
    return schemas.BulkStarted.of(job_id=job.id, count=job.total, **more), 202


@bp.post("/webhooks/<webhook_id>/recover")
def recover(webhook_id: str) -> ResponseReturnValue:
    """Deliver again each event whose deliveries in a window failed and never got through."""
    return _bulk(webhook_id, bulk.RECOVER, schemas.RecoverInput)


@bp.post("/webhooks/<webhook_id>/replay-missed")
def replay_missed(webhook_id: str) -> ResponseReturnValue:
    """Deliver each event of its types published since a time that it never got."""
    return _bulk(webhook_id, bulk.REPLAY, schemas.ReplayInput)


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> ResponseReturnValue:
    """Show a bulk job's progress."""
    job = owned_or_404(BulkJob, job_id, "job")
    return schemas.BulkJob.of(job)


@bp.get("/notifications")
def get_notifications() -> ResponseReturnValue:
    """Show where the workspace is told about failing webhooks."""
    return notification_settings.load(db.session, g.workspace_id)


@bp.put("/notifications")
def put_notifications() -> ResponseReturnValue:
    """Replace the workspace's e-mail addresses and alert URL."""
    reading = Reading(settings())
    saved = notification_settings.save(db.session, g.workspace_id, json_body(), reading)
    return {**saved, **_warned(reading.warnings)}
