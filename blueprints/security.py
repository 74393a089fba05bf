"""Rate limits (Flask-Limiter on Redis) and the dashboard's HTTP security headers."""

from __future__ import annotations

import hashlib

from flask import Flask, Request, abort, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from webhooks import logthrottle

# Only our own static files may run or style a page; nothing may frame it.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def caller() -> str:
    """Rate-limit API calls per key (hashed: keys never reach Redis), others per address."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return "key:" + hashlib.sha256(header[7:].strip().encode()).hexdigest()[:32]
    return "ip:" + (get_remote_address() or "unknown")


limiter = Limiter(key_func=caller)


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
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    # With Redis down, requests pass unlimited rather than fail: publishing must go on.
    app.config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    limiter.init_app(app)
    # While Redis is down every request would log a traceback; once per outage is enough.
    logthrottle.install("flask-limiter", "Failed to rate limit")

    @app.before_request
    def _no_nul() -> None:
        if not request.path.startswith("/api/") and has_nul(request):
            abort(400, "The address must not contain NUL characters.")

    @app.after_request
    def _security_headers(response):  # type: ignore[no-untyped-def]
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "same-origin")
        if not request.path.startswith("/api/"):
            headers.setdefault("Content-Security-Policy", CSP)
            headers.setdefault("X-Frame-Options", "DENY")
        if request.is_secure:
            headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        return response
