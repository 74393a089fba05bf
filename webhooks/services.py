"""What the app factory builds once for every view, job and command: settings and Redis.

`create_app` makes one `Services` and keeps it in the app; code that runs in an app context
reads it with `current()`, code that holds the app with `of(app)`. Nothing else builds
`Settings` or a Redis client of its own (the listener streams keep their own connections, with
their own timeouts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app
from redis import Redis

from webhooks.config import Settings

_KEY = "webhooks"


@dataclass(frozen=True)
class Services:
    settings: Settings
    redis: Redis


def install(app: Flask, redis: Redis) -> Services:
    """Build the app's settings from its configuration, once, beside its Redis client."""
    services = Services(settings=Settings.from_config(app.config), redis=redis)
    app.extensions[_KEY] = services
    return services


def reconfigure(app: Flask, **values: Any) -> Services:
    """Change configuration values of a running app and build its settings again (tests)."""
    app.config.update(values)
    return install(app, of(app).redis)


def of(app: Flask) -> Services:
    services: Services = app.extensions[_KEY]
    return services


def current() -> Services:
    services: Services = current_app.extensions[_KEY]
    return services


def settings() -> Settings:
    """The current app's settings."""
    return current().settings


def redis() -> Redis:
    """The current app's Redis client (RQ, wake-ups, rate limits, metrics)."""
    return current().redis
