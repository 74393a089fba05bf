"""Liveness for load balancers and `make run`: the database and Redis both answer."""

from __future__ import annotations

from flask import Blueprint, current_app, redirect, url_for
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from webhooks.models import db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    """Say whether the database and Redis answer."""
    status = {"database": "ok", "redis": "ok"}
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
    except SQLAlchemyError as exc:
        status["database"] = str(exc.__cause__ or exc).splitlines()[0]
    try:
        current_app.extensions["redis"].ping()
    except RedisError as exc:
        status["redis"] = str(exc)
    healthy = all(v == "ok" for v in status.values())
    return status, 200 if healthy else 503, {"Cache-Control": "no-store"}


@bp.get("/")
def index():  # type: ignore[no-untyped-def]
    """The dashboard's home is Settings › Webhooks."""
    return redirect(url_for("dashboard.webhooks"))
