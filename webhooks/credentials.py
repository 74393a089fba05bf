"""Credentials other than the signing secret: which values are credentials, how they are
stored (encrypted, like secrets) and how they are shown (masked) (docs/API.md section 4).

A credential is a `template_params` value named in `PARAMS`, or the value of a custom header
whose name says it carries one (`is_credential_header`). Both are encrypted in their JSON
column by `SealedParams` / `SealedHeaders`, decrypted when read, and built into the request at
send time. Everything a person or a log sees shows `mask(value)`; a masked value sent back
unchanged keeps the stored one (`unmask`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import JSON, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from webhooks import crypto

DOTS = "••••"
# Template parameters that are credentials.
PARAMS = frozenset({"api_token", "token", "routing_key"})
_HEADER_NAMES = frozenset({"authorization", "proxy-authorization", "cookie"})
_HEADER_WORDS = ("token", "secret", "key", "auth", "password")
# Fewer characters than this and even the last 4 would give too much away.
_SHOW_TAIL_FROM = 12
# `"routing_key":"…"` in a compact JSON body (a PagerDuty event), at any depth.
_ROUTING_KEY = re.compile(r'("routing_key"\s*:\s*")((?:[^"\\]|\\.)*)(")')


def mask(value: Any) -> str:
    """`••••` plus at most the value's last 4 characters (none for a short value)."""
    text = "" if value is None else str(value)
    return DOTS + (text[-4:] if len(text) >= _SHOW_TAIL_FROM else "")


def is_masked(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(DOTS)


@functools.lru_cache(maxsize=512)
def is_credential_header(name: str) -> bool:
    """`Authorization`, `Proxy-Authorization`, `Cookie`, or a name that contains token, secret,
    key, auth or password (in any case). Remembered: every logged attempt asks it of the same
    few names."""
    lower = name.lower()
    return lower in _HEADER_NAMES or any(word in lower for word in _HEADER_WORDS)


def mask_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Headers as people and logs see them: credential values masked."""
    return {
        name: mask(value) if is_credential_header(name) and not is_masked(value) else value
        for name, value in (headers or {}).items()
    }


def mask_params(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Template parameters as people see them: credentials masked."""
    if params is None:
        return None
    return {
        name: mask(value) if name in PARAMS and value and not is_masked(value) else value
        for name, value in params.items()
    }


def mask_body(text: str) -> str:
    """A logged request body with any `routing_key` value masked, the other bytes unchanged."""
    if '"routing_key"' not in text:
        return text
    return _ROUTING_KEY.sub(lambda m: m[1] + (m[2] if is_masked(m[2]) else mask(m[2])) + m[3], text)


def mask_url(url: str | None) -> str | None:
    """An alert URL as people see it: scheme and host, the path (its secret) masked."""
    if not url:
        return url
    parts = urlsplit(url)
    rest = url[len(f"{parts.scheme}://{parts.netloc}") :]
    return f"{parts.scheme}://{parts.netloc}/{mask(rest)}"


def unmask(given: Any, stored: Any) -> Any:
    """The value to save: the stored one when `given` is exactly how it is shown."""
    if stored is not None and is_masked(given) and given in (mask(stored), mask_url(stored)):
        return stored
    return given


def looks_masked(value: Any) -> bool:
    """A value that is a mask, not a credential (one shown for another value, say)."""
    return isinstance(value, str) and DOTS in value


# --------------------------------------------------------------------------- at rest


class _SealedJSON(TypeDecorator[dict[str, Any]]):
    """A JSON object column whose credential values are stored encrypted."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(JSONB() if dialect.name == "postgresql" else JSON())

    def _secret(self, name: str) -> bool:
        raise NotImplementedError

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if not isinstance(value, dict):
            return value
        ring = crypto.keyring()
        return {
            k: ring.encrypt(v) if isinstance(v, str) and self._secret(k) else v
            for k, v in value.items()
        }

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if not isinstance(value, dict):
            return value
        ring = crypto.keyring()
        return {
            k: ring.decrypt(v) if isinstance(v, str) and self._secret(k) else v
            for k, v in value.items()
        }


class SealedHeaders(_SealedJSON):
    """Custom headers: the values of credential headers are encrypted."""

    cache_ok = True

    def _secret(self, name: str) -> bool:
        return is_credential_header(name)


class SealedParams(_SealedJSON):
    """Template parameters: credentials (`PARAMS`) are encrypted."""

    cache_ok = True

    def _secret(self, name: str) -> bool:
        return name in PARAMS


class LoggedHeaders(TypeDecorator[dict[str, Any]]):
    """A logged request's headers: credential values are masked before they are written."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(JSONB() if dialect.name == "postgresql" else JSON())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return mask_headers(value) if isinstance(value, dict) else value


class LoggedBody(TypeDecorator[str]):
    """A logged request body: a PagerDuty `routing_key` in it is masked before it is written."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return mask_body(value) if isinstance(value, str) else value
