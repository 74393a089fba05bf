"""The application factory."""

from __future__ import annotations

import logging
import os
import ssl
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
from flask import Flask, Request, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from redis import Redis
from redis.exceptions import RedisError

from webhooks import config as settings_module
from webhooks import crypto, liveness, pgwire, renderpool, services, sqlite
from webhooks.models import db

MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")
# gunicorn's "the app failed to load": its master stops too, instead of booting workers that
# fail the same way again and again.
CONFIG_ERROR_EXIT = 4


class _SessionInterface(SecureCookieSessionInterface):
    """The session cookie is `Secure` whenever the page was served over HTTPS. The API has none:
    it authenticates by key, and reading the cookie cost every API call a signer."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if request.path.startswith("/api/"):
            return None  # Flask's null session: nothing read, nothing written
        return super().open_session(app, request)


class _MigrationCommands(click.Group):
    """Flask-Migrate's `flask db` commands, loaded when used: Alembic would cost every web,
    worker and scheduler process 12 MB of memory for commands only a release runs."""

    def __init__(self, app: Flask) -> None:
        super().__init__("db", help="Database migrations (Flask-Migrate).")
        self._app = app

    def _group(self) -> click.Group:
        from flask_migrate import Migrate
        from flask_migrate.cli import db as group

        if "migrate" not in self._app.extensions:
            Migrate(self._app, db, directory=MIGRATIONS, render_as_batch=True)
        return group

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        # From here on, Flask-Migrate's own group parses and runs the command.
        return self._group().make_context(info_name, args, parent, **extra)


def _engine_options(url: str, busy_timeout: float) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": busy_timeout, "factory": sqlite.Connection}}
    # No `pool_pre_ping`: a connection is pinged only when it may be stale (`liveness`).
    return {"pool_size": 10, "max_overflow": 20, "connect_args": pgwire.CONNECT_ARGS}


def secrets_keys(config: dict[str, Any]) -> list[str]:
    """The keys for webhook secrets at rest, newest first."""
    listed = [k.strip() for k in config["WEBHOOK_SECRETS_KEY"].split(",") if k.strip()]
    return listed or [config["SECRET_KEY"]]


def _install_web(app: Flask) -> None:
    """The dashboard, the API and their guards (a worker or the scheduler leaves them out)."""
    from flask_htmx import HTMX
    from flask_wtf import CSRFProtect

    from blueprints import api, auth, dashboard, health, logs, openapi, security, settings, ui

    csrf = CSRFProtect(app)
    HTMX(app)
    auth.install(app)
    ui.install(app)
    security.install(app)
    csrf.exempt(api.bp)  # the API authenticates each request by key, not by cookie
    for blueprint in (api.bp, openapi.bp, auth.bp, dashboard.bp, logs.bp, settings.bp, health.bp):
        app.register_blueprint(blueprint)
    if not app.testing:
        _compile_templates(app)


def _compile_templates(app: Flask) -> None:
    """Compile every template now, while the web process starts: the first render of a page
    in a new process compiled its templates, 55 ms of the logs page's first 95 (12 ms after).
    All of them take 0.2-0.3 s and 2 MB, once."""
    for name in app.jinja_env.list_templates():
        app.jinja_env.get_template(name)


def _redis_tls_problem(exc: BaseException, url: str) -> str | None:
    """Why Redis did not answer, when it is TLS and not an outage: a certificate we refuse,
    a handshake it refuses, or a plain connection that a TLS-only server resets."""
    tls = url.startswith("rediss://")
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return (
                f"Redis's TLS certificate did not verify ({seen.verify_message}); for a "
                "provider's own CA add ?ssl_ca_certs=<its CA file>, for a self-signed "
                "certificate ?ssl_cert_reqs=none"
            )
        if isinstance(seen, ssl.SSLError):
            return f"the TLS handshake with Redis failed ({seen.reason or seen})"
        if isinstance(seen, FileNotFoundError) and tls:
            return f"a TLS file it names cannot be read ({seen})"
        if tls and isinstance(seen, TimeoutError) and "handshake" in str(seen):
            return "Redis did not complete a TLS handshake: does it speak TLS? (redis:// if not)"
        if not tls and isinstance(seen, ConnectionResetError | BrokenPipeError):
            return "Redis reset the connection: if it accepts only TLS, use rediss://"
        seen = seen.__cause__ or seen.__context__
    return None


def redis_url(url: str, params: str) -> str:
    """REDIS_URL with REDIS_URL_PARAMS added to its query."""
    params = params.strip().lstrip("?&")
    if not params:
        return url
    return f"{url}{'&' if '?' in url else '?'}{params}"


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def check_redis(app: Flask) -> None:
    """Stop at start-up, naming REDIS_URL, when TLS keeps Redis from answering (a bad
    certificate would otherwise show only as a failing health check). An outage is not this:
    every process waits for Redis to come back."""
    url = app.config["REDIS_URL"]
    try:
        services.of(app).redis.ping()
    except RedisError as exc:
        problem = _redis_tls_problem(exc, url)
        if problem is not None:
            print(
                f"configuration error: REDIS_URL: {problem}, got {_masked(url)!r}", file=sys.stderr
            )
            # 3 is gunicorn's "worker failed to boot": the web process stops instead of
            # booting worker after worker into the same error.
            raise SystemExit(3) from None


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: configuration from the environment, extensions, blueprints, commands."""
    app = Flask(__name__, instance_path=os.environ.get("INSTANCE_PATH") or None)
    os.makedirs(app.instance_path, exist_ok=True)
    _configure(app, test_config)
    crypto.configure(crypto.Keyring(secrets_keys(app.config)))
    renderpool.configure(
        renderpool.Limits(
            processes=app.config["WEBHOOK_RENDER_PROCESSES"],
            memory=app.config["WEBHOOK_RENDER_MEMORY_MB"] * renderpool.MiB,
            cpu=app.config["WEBHOOK_RENDER_CPU_SECONDS"],
        )
    )
    app.session_interface = _SessionInterface()

    db.init_app(app)
    with app.app_context():
        sqlite.install(db.engine)  # WAL, foreign keys, and write transactions that queue
        liveness.install(db.engine)  # PostgreSQL: a ping before use when stale
    if os.environ.get("WEBHOOK_COUNT_STATEMENTS"):  # the benchmark's statement counts
        from webhooks import stmtcount

        stmtcount.install(os.environ["WEBHOOK_COUNT_STATEMENTS"])
    app.cli.add_command(_MigrationCommands(app))
    # Every Redis client of every process reads this one URL: RQ, the scheduler, the
    # health check, metrics and the rate limiter.
    services.install(
        app,
        Redis.from_url(
            app.config["REDIS_URL"],
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=30,
        ),
    )
    if not app.testing:
        check_redis(app)

    from blueprints import cli

    app.register_blueprint(cli.bp)
    if app.config["WEBHOOK_WEB"]:
        _install_web(app)

    if not app.debug and not app.testing:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    return app


def _configure(app: Flask, test_config: dict[str, Any] | None) -> None:
    """The configuration: every variable from the environment (or `test_config`), and what
    Flask and its extensions derive from them; a bad value stops the process, naming it."""
    try:
        values = settings_module.load(os.environ, test_config)
        settings_module.require_secret_key(values)
    except settings_module.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(CONFIG_ERROR_EXIT) from None
    app.config.update(values)
    app.config["SECRET_KEY"] = app.config["SECRET_KEY"] or settings_module.instance_secret_key(
        app.instance_path
    )
    url = settings_module.database_url(app.config["DATABASE_URL"], app.instance_path)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config.setdefault(
        "SQLALCHEMY_ENGINE_OPTIONS",
        _engine_options(url, app.config["WEBHOOK_SQLITE_BUSY_TIMEOUT"]),
    )
    app.config["MAX_CONTENT_LENGTH"] = max(app.config["WEBHOOK_MAX_PAYLOAD_BYTES"], 1 << 20)
    app.config["JSON_SORT_KEYS"] = False
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    # Behind a proxy that ends TLS the request looks like plain HTTP: a setting says it is not.
    force_https = app.config["WEBHOOK_FORCE_HTTPS"]
    app.config["SESSION_COOKIE_SECURE"] = bool(app.config["SESSION_COOKIE_SECURE"] or force_https)
    app.config["REMEMBER_COOKIE_SECURE"] = bool(
        app.config.get("REMEMBER_COOKIE_SECURE") or force_https
    )
    app.config["WTF_CSRF_TIME_LIMIT"] = None  # valid for the session's lifetime
    app.config["REDIS_URL"] = redis_url(app.config["REDIS_URL"], app.config["REDIS_URL_PARAMS"])
