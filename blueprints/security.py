"""Rate limits (counters in Redis through `limits`; Flask-Limiter for the dashboard's routes)
and the dashboard's HTTP security headers."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any, cast

from flask import Flask, Request, Response, abort, current_app, g, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import current_user
from limits import RateLimitItem, parse_many
from werkzeug.exceptions import TooManyRequests

from webhooks import accounts, logthrottle, services
from webhooks.models import db

# Only our own static files may run or style a page; nothing may frame it.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)


# API calls that read the workspace's webhooks before they write: the key's look-up reads them
# too (`accounts.authenticate_publisher`: one query, one round trip on PostgreSQL), and on
# SQLite its read-only transaction stays open for what else they read.
READ_ON = {"api.publish_event"}


def api_workspace_id() -> str | None:
    """The workspace of the request's API key (`Authorization: Bearer …`), or None when the key
    is missing, unknown or revoked; looked up once per request."""
    if "api_workspace_id" not in g:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            key = None
        elif request.endpoint in READ_ON:
            key, g.api_webhooks = accounts.authenticate_publisher(db.session, token.strip())
        else:
            key = accounts.authenticate_key(db.session, token.strip())
        g.api_workspace_id = key.workspace_id if key is not None else None
    return g.api_workspace_id


def api_webhooks() -> list[accounts.WebhookRow] | None:
    """The workspace's active webhooks as read with the request's API key (`READ_ON`
    endpoints), or None when they were not."""
    return g.get("api_webhooks")


def caller() -> str:
    """Rate-limit API calls per workspace (all its keys share one budget, so more keys do not
    buy more rate), anything else per address."""
    workspace_id = api_workspace_id()
    if workspace_id is not None:
        return "ws:" + workspace_id
    return "ip:" + (get_remote_address() or "unknown")


limiter = Limiter(key_func=caller)
# The API's counters, apart from the dashboard's (Flask-Limiter's keys).
API_SCOPE = "api"


@functools.lru_cache(maxsize=8)
def _rates(text: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(text))


def api_limit() -> None:
    """Count this API call against its caller's rate (`WEBHOOK_API_RATE_LIMIT`, per workspace;
    per address without a valid key); over it, a 429 whose Retry-After says when to come back.

    One Redis round trip (`limits` on the limiter's own storage) rather than Flask-Limiter's
    resolution of every limit on every request, which cost a fifth of a publish call's CPU.
    With Redis out of reach the call passes: publishing must go on."""
    config = current_app.config
    where = (config["RATELIMIT_KEY_PREFIX"], API_SCOPE, caller())
    try:
        strategy = limiter.limiter
        for item in _rates(config["WEBHOOK_API_RATE_LIMIT"]):
            if not strategy.hit(item, *where):
                reset = strategy.get_window_stats(item, *where).reset_time
                g.retry_after = max(1, math.ceil(reset - time.time()))
                raise TooManyRequests(str(item))
    except TooManyRequests:
        raise
    except Exception:
        if not config["RATELIMIT_SWALLOW_ERRORS"]:
            raise
        logging.getLogger("flask-limiter").exception("Failed to rate limit. Swallowing error")


def signed_in_user() -> str:
    """Rate-limit the dashboard's costly actions per person, whichever workspace they look at."""
    if current_user.is_authenticated:
        return "user:" + current_user.get_id()
    return "ip:" + (get_remote_address() or "unknown")


def dashboard_limit(setting: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A per-person limit from the `setting` rate, for a dashboard route (a decorator)."""
    return limiter.limit(lambda: current_app.config[setting], key_func=signed_in_user)


def too_many(what: str) -> str:
    """What a person reads when one of their dashboard actions is over its rate."""
    current = limiter.current_limit
    if current is None:
        return f"Too many {what}. Wait a minute and try again."
    return (
        f"Too many {what}: at most {current.limit} for each person. Try again in {retry_after()} s."
    )


def retry_after() -> int:
    """Seconds until the limit that refused this request lets calls through again."""
    if "retry_after" in g:
        return int(g.retry_after)
    current = limiter.current_limit
    if current is None:
        return 1
    return max(1, math.ceil(current.reset_at - time.time()))


@limiter.request_filter
def _is_api_call() -> bool:
    """Flask-Limiter counts nothing for the API (its rate is `api_limit`'s): it stops looking
    for limits of its own there at once, where resolving them cost a call a twentieth of its
    CPU."""
    return request.path.startswith("/api/")


def _limiter_hooks_skip_api_calls(app: Flask) -> None:
    """Flask-Limiter's hooks before, after and at the end of every request (`init_app`) leave
    API calls alone: `_is_api_call` makes them count nothing there, yet their bookkeeping
    still cost a publish call 4.3 % of its instructions. A hook of another owner, or one this
    does not recognise, stays as it is."""

    def owned(hook: Any) -> bool:
        if isinstance(hook, functools.partial):
            return any(arg is limiter for arg in hook.args)
        return getattr(hook, "__self__", None) is limiter

    def before(original: Callable[[], Any]) -> Callable[[], Any]:
        return lambda: None if _is_api_call() else original()

    def after(original: Callable[[Response], Response]) -> Callable[[Response], Response]:
        return lambda response: response if _is_api_call() else original(response)

    def teardown(original: Callable[[Any], None]) -> Callable[[Any], None]:
        return lambda exc: None if _is_api_call() else original(exc)

    registries: list[tuple[dict[Any, list[Any]], Callable[[Any], Any]]] = [
        (cast(dict[Any, list[Any]], app.before_request_funcs), before),
        (cast(dict[Any, list[Any]], app.after_request_funcs), after),
        (cast(dict[Any, list[Any]], app.teardown_request_funcs), teardown),
    ]
    for hooks, wrap in registries:
        for scope, funcs in hooks.items():
            hooks[scope] = [wrap(f) if owned(f) else f for f in funcs]


def has_nul(req: Request) -> bool:
    """A NUL character in the path or a query value: no id or filter holds one, and PostgreSQL
    refuses it in any text parameter (the query would fail rather than find nothing)."""
    return "\x00" in req.path or any("\x00" in v for v in req.args.values())


def install(app: Flask) -> None:
    # `limits` hands the whole URL to redis-py's from_url, so rediss:// with ssl_ca_certs= or
    # ssl_cert_reqs= holds here as in every other client; the timeouts are the app client's,
    # so a Redis that stops answering lets requests pass within seconds instead of hanging.
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.config["REDIS_URL"])
    app.config.setdefault(
        "RATELIMIT_STORAGE_OPTIONS",
        {"socket_timeout": 5, "socket_connect_timeout": 2, "health_check_interval": 30},
    )
    app.config.setdefault("RATELIMIT_KEY_PREFIX", "webhooks-limiter")
    # No X-RateLimit-* headers on every answer: they cost two more Redis round trips per API
    # call (the window's count and expiry, read after the hit). A refused call still says
    # when to come back (Retry-After, `retry_after`).
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", False)
    # With Redis down, requests pass unlimited rather than fail: publishing must go on.
    app.config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    limiter.init_app(app)
    _limiter_hooks_skip_api_calls(app)
    # While Redis is down every request would log a traceback; once per outage is enough.
    logthrottle.install("flask-limiter", "Failed to rate limit")

    @app.before_request
    def _no_nul() -> None:
        if not request.path.startswith("/api/") and has_nul(request):
            abort(400, "The address must not contain NUL characters.")

    @app.after_request
    def _security_headers(response: Response) -> Response:
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "same-origin")
        if not request.path.startswith("/api/"):
            headers.setdefault("Content-Security-Policy", CSP)
            headers.setdefault("X-Frame-Options", "DENY")
        if request.is_secure or services.of(app).settings.force_https:
            headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        return response
