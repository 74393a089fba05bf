"""Input fields checked one at a time: each check takes what was sent and returns what to keep,
or raises Invalid with the API's error code and a message for a person.

The API's shapes (webhooks.schemas) name the check of each field; what needs more than one
field (a template and its settings, masked credentials sent back) is management's.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from webhooks import accounts, catalog, egress, flow, renderpool, signing, transforms
from webhooks.config import Settings
from webhooks.errors import Invalid
from webhooks.outgoing import RESERVED_HEADERS

MAX_NAME = 200
MAX_URL_LENGTH = 2048
MAX_HEADERS = 20
MAX_HEADER_VALUE = 4096
MAX_EMAILS = 20
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 7230 token

# Refusals no setting of the private-address block lifts (the port's message names its own).
_NOT_ALLOWABLE = ("scheme", "port", "scoped")


def check_url(url: Any, settings: Settings, warnings: list[str] | None = None) -> str:
    """The URL to save, or Invalid: `invalid_url` for its form, `target_not_allowed` when the
    egress guard refuses its address. A name that does not resolve yet is accepted; the warning
    saying so is appended to `warnings` when given (its addresses are checked at send time)."""
    if not isinstance(url, str) or not url.strip():
        raise Invalid("invalid_url", "url is required", {"url": "URL is required"})
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        msg = f"URL must be at most {MAX_URL_LENGTH} characters, got {len(url)}"
        raise Invalid("invalid_url", msg, {"url": msg})
    try:
        if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
            raise ValueError("whitespace or control character")
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise Invalid(
            "invalid_url", f"not a valid URL: {url!r}", {"url": "Not a valid URL"}
        ) from None
    allowed = ("https", "http") if settings.allow_http else ("https",)
    if parts.scheme.lower() not in allowed:
        msg = "URL must use https:// (WEBHOOK_ALLOW_HTTP=1 allows http:// for development)"
        raise Invalid("invalid_url", f"URL must use https://, got {url!r}", {"url": msg})
    if not parts.hostname:
        raise Invalid("invalid_url", f"URL has no host: {url!r}", {"url": "URL has no host"})
    if parts.username or parts.password:
        msg = "URL must not carry a user name or password; use a header instead"
        raise Invalid("invalid_url", msg, {"url": msg})
    try:
        warning = egress.check_url(url, settings)
    except egress.TargetNotAllowed as exc:
        msg = exc.message
        if exc.reason not in _NOT_ALLOWABLE:
            msg += " (WEBHOOK_ALLOWED_PRIVATE_NETWORKS can allow it, for local testing)"
        raise Invalid("target_not_allowed", msg, {"url": msg}) from None
    except ValueError:
        raise Invalid(
            "invalid_url", f"not a valid URL: {url!r}", {"url": "Not a valid URL"}
        ) from None
    if warning and warnings is not None:
        warnings.append(warning)
    return url


def check_events(events: Any) -> list[str]:
    if not isinstance(events, list) or not events:
        msg = "choose at least one event type"
        raise Invalid("validation_error", f"events: {msg}", {"events": msg})
    cleaned: list[str] = []
    for pattern in events:
        if not isinstance(pattern, str) or not catalog.is_valid_pattern(pattern):
            msg = f"unknown event type {pattern!r}"
            raise Invalid("unknown_event_type", msg, {"events": msg})
        if pattern not in cleaned:
            cleaned.append(pattern)
    return cleaned


def check_headers(headers: Any) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        msg = "headers must be an object of names to values"
        raise Invalid("invalid_headers", msg, {"headers": msg})
    if len(headers) > MAX_HEADERS:
        msg = f"at most {MAX_HEADERS} custom headers, got {len(headers)}"
        raise Invalid("invalid_headers", msg, {"headers": msg})
    seen: set[str] = set()
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            msg = f"header name {name!r} is not a valid HTTP token"
            raise Invalid("invalid_headers", msg, {"headers": msg})
        if name.lower() in RESERVED_HEADERS:
            msg = f"header {name!r} is set by the service and cannot be replaced"
            raise Invalid("invalid_headers", msg, {"headers": msg})
        if name.lower() in seen:
            msg = f"header {name!r} is given twice"
            raise Invalid("invalid_headers", msg, {"headers": msg})
        seen.add(name.lower())
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            msg = f"header {name!r} must be text without line breaks or NUL"
            raise Invalid("invalid_headers", msg, {"headers": msg})
        if len(value) > MAX_HEADER_VALUE:
            msg = f"header {name!r} is longer than {MAX_HEADER_VALUE} characters"
            raise Invalid("invalid_headers", msg, {"headers": msg})
    return dict(headers)


def check_secret(secret: Any) -> str | None:
    if secret is None:
        return None
    problem = signing.secret_problem(secret)
    if problem:
        raise Invalid("invalid_secret", problem, {"secret": problem})
    return secret


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise Invalid("validation_error", "name is required", {"name": "Name is required"})
    if len(name.strip()) > MAX_NAME:
        msg = f"Name must be at most {MAX_NAME} characters"
        raise Invalid("validation_error", msg, {"name": msg})
    return name.strip()


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        msg = f"{name} must be true or false"
        raise Invalid("validation_error", msg, {name: msg})
    return value


def check_transform(transform: Any) -> dict[str, Any] | None:
    """A transform that compiles in the sandbox, or None; refused with the line and message."""
    if transform is None:
        return None
    try:
        renderpool.check(transform)
    except transforms.TransformError as exc:
        raise Invalid("invalid_transform", str(exc), {"transform": str(exc)}) from None
    return transform


def check_rate_limit(value: Any) -> float | None:
    """A rate limit as flow control takes it (API.md section 8), or `invalid_rate_limit`."""
    try:
        return flow.check_rate_limit(value)
    except flow.FlowError as exc:
        raise Invalid(exc.code, exc.message, {"rate_limit": exc.message}) from None


def check_ordering_key(value: Any) -> str | None:
    """An ordering key that compiles (API.md section 8), or `invalid_ordering_key`."""
    try:
        return flow.check_ordering_key(value)
    except flow.FlowError as exc:
        raise Invalid(exc.code, exc.message, {"ordering_key": exc.message}) from None


def check_emails(emails: Any) -> list[str]:
    """Notification recipients: e-mail addresses, blanks and repeats left out, at most 20."""
    if emails is None:
        return []
    if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
        msg = "emails must be a list of e-mail addresses"
        raise Invalid("validation_error", msg, {"emails": msg})
    cleaned: list[str] = []
    for email in (e.strip() for e in emails):
        if not email:
            continue
        if not accounts.is_email(email):
            msg = f"not an e-mail address: {email!r}"
            raise Invalid("validation_error", msg, {"emails": msg})
        if email.lower() not in (c.lower() for c in cleaned):
            cleaned.append(email)
    if len(cleaned) > MAX_EMAILS:
        msg = f"at most {MAX_EMAILS} e-mail addresses, got {len(cleaned)}"
        raise Invalid("validation_error", msg, {"emails": msg})
    return cleaned
