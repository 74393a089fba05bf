"""The scheduler process: due retries, lost jobs and expired leases, from the database;
SQLite's checkpoints; and, on every full pass, the periodic work (notification summaries and
re-sends, stalled bulk jobs, retention every WEBHOOK_RETENTION_INTERVAL). One loop in one
process kind: nothing else runs on a timer."""

from __future__ import annotations

import logging
import signal
import time

from flask import Flask
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from webhooks import reconciler, services, sqlite
from webhooks.models import db

log = logging.getLogger(__name__)


class _Outage:
    """Logs a dependency going away once, and its return once, not on every pass."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.down_since: float | None = None

    def failed(self, exc: Exception) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.error("%s unavailable: %s (retrying quietly)", self.name, exc)

    def ok(self) -> None:
        if self.down_since is not None:
            log.warning("%s is back after %.0f s", self.name, time.monotonic() - self.down_since)
            self.down_since = None


def run(app: Flask, *, stop_after: float | None = None) -> None:
    """Loop until SIGTERM/SIGINT (or `stop_after` seconds, for tests)."""
    stopping = []
    if stop_after is None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.append(True))
    settings = services.of(app).settings
    interval = app.config["WEBHOOK_SCHEDULER_INTERVAL"]
    full_every = min(app.config["WEBHOOK_RECONCILE_INTERVAL"], 30.0)
    redis = services.of(app).redis
    outages = {"redis": _Outage("Redis"), "db": _Outage("database")}
    started = time.monotonic()
    last_full = 0.0
    log.info(
        "scheduler running: due scan every %ss; reconcile, notifications and bulk jobs every "
        "%ss; retention every %ss",
        interval,
        full_every,
        settings.retention_interval,
    )
    while not stopping and (stop_after is None or time.monotonic() - started < stop_after):
        now = time.monotonic()
        full = now - last_full >= full_every
        with app.app_context():
            try:
                reconciler.tick(db.session, redis, settings, full=full)
                # On SQLite, the write-ahead log goes back into the database here rather than
                # in a request's or a worker's commit, under the write lock.
                sqlite.checkpoint(db.engine)
                outages["redis"].ok()
                outages["db"].ok()
                if full:
                    last_full = now
            except RedisError as exc:
                outages["redis"].failed(exc)
            except SQLAlchemyError as exc:
                outages["db"].failed(exc)
            finally:
                db.session.remove()
        time.sleep(interval)
