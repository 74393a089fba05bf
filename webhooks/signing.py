"""Signatures a receiver checks: `X-CloudThinker-Signature` and Standard Webhooks' `webhook-*`."""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets as _secrets

SECRET_PREFIX = "whsec_"


def generate_secret() -> str:
    """A new `whsec_` secret: base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(24)).decode()


def secret_problem(secret: str) -> str | None:
    """Why `secret` cannot be used, or None when it can."""
    if not isinstance(secret, str):
        return "secret must be a string or null"
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            return "a whsec_ secret must be whsec_ followed by base64"
        if not 24 <= len(key) <= 64:
            return f"a whsec_ secret must decode to 24-64 bytes, got {len(key)}"
        return None
    if not 16 <= len(secret) <= 256:
        return f"secret must be 16-256 characters, got {len(secret)}"
    return None


def standard_key(secret: str) -> bytes:
    """The Standard Webhooks key: the decoded part of a whsec_ secret, else the UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret[len(SECRET_PREFIX) :])
    return secret.encode()


def cloudthinker_signature(body: bytes, secret: str) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of the raw body keyed by the secret's UTF-8 bytes."""
    return "sha256=" + hmac.digest(secret.encode(), body, "sha256").hex()


def standard_signature(msg_id: str, timestamp: int, body: bytes, secrets: list[str]) -> str:
    """`v1,<base64>` for each secret, space-separated (several during a rotation)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(standard_key(s), signed, "sha256")).decode()
        for s in secrets
    )


def signature_headers(
    *, event_id: str, timestamp: int, body: bytes, secrets: list[str]
) -> dict[str, str]:
    """The signature headers for one attempt; `secrets` newest first, empty when unsigned."""
    headers = {"webhook-id": event_id, "webhook-timestamp": str(timestamp)}
    if secrets:
        headers["X-CloudThinker-Signature"] = cloudthinker_signature(body, secrets[0])
        headers["webhook-signature"] = standard_signature(event_id, timestamp, body, secrets)
    return headers
