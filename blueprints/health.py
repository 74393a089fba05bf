"""For operators: liveness (the database and Redis answer) and Prometheus metrics."""

from __future__ import annotations

import hmac

from flask import Blueprint, abort, redirect, request, url_for
from flask.typing import ResponseReturnValue
from prometheus_client.exposition import choose_encoder
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from webhooks import services
from webhooks.metrics import Collector
from webhooks.models import db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Say whether the database and Redis answer."""
    status = {"database": "ok", "redis": "ok"}
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
    except SQLAlchemyError as exc:
        status["database"] = str(exc.__cause__ or exc).splitlines()[0]
    try:
        services.redis().ping()
    except RedisError as exc:
        status["redis"] = str(exc)
    healthy = all(v == "ok" for v in status.values())
    return status, 200 if healthy else 503, {"Cache-Control": "no-store"}


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    """Count the work of every process: attempts, deliveries, latencies, queue and backlog."""
    settings = services.settings()
    if not settings.metrics_enabled:
        abort(404)
    token = settings.metrics_token
    if token and not _bearer_matches(token):
        return "a bearer token is required\n", 401, {"WWW-Authenticate": 'Bearer realm="metrics"'}
    collector = Collector(db.session, services.redis(), settings.queue)
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return encode(collector), 200, {"Content-Type": content_type, "Cache-Control": "no-store"}


def _bearer_matches(token: str) -> bool:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip(), token)


@bp.get("/")
def index() -> ResponseReturnValue:
    """The dashboard's home is Settings › Webhooks."""
    return redirect(url_for("dashboard.webhooks"))
