"""Webhook secrets at rest: encrypted with Fernet under a key from the environment."""

from __future__ import annotations

import base64
import functools
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

PREFIX = "fernet:"


def _fernet_key(material: str) -> bytes:
    """A Fernet key: the value itself when it is one, else derived from it with SHA-256."""
    try:
        if len(base64.urlsafe_b64decode(material.encode())) == 32:
            return material.encode()
    except ValueError:
        pass
    digest = hashlib.sha256(b"webhook-secrets:" + material.encode()).digest()
    return base64.urlsafe_b64encode(digest)


class Keyring:
    """Encrypts with the first key and decrypts with any of them (so keys can be rotated)."""

    def __init__(self, materials: list[str]) -> None:
        if not materials:
            raise ValueError("at least one key is needed")
        self._fernet = MultiFernet([Fernet(_fernet_key(m)) for m in materials])
        # Every claim reads its webhooks' secrets; each stored value is decrypted once per
        # process (a Fernet token is unique, so a changed secret is a new entry).
        self.decrypt = functools.lru_cache(maxsize=4096)(self._decrypt)

    def encrypt(self, plain: str) -> str:
        return PREFIX + self._fernet.encrypt(plain.encode()).decode()

    def _decrypt(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored  # written before encryption was on; re-encrypted on rotation
        try:
            return self._fernet.decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise ValueError(
                "a webhook secret cannot be decrypted with WEBHOOK_SECRETS_KEY: "
                "was the key changed without keeping the old one?"
            ) from None

    def rotate(self, stored: str) -> str:
        """The value encrypted under the first key."""
        return self.encrypt(self.decrypt(stored))


_current: list[Keyring] = []


def configure(keyring: Keyring) -> None:
    """Set the keyring that the EncryptedText columns use (once per process, at start-up)."""
    _current[:] = [keyring]


def keyring() -> Keyring:
    if not _current:
        raise RuntimeError("webhook secret encryption is not configured (create_app does it)")
    return _current[0]


class EncryptedText(TypeDecorator[str]):
    """A text column stored encrypted; reads and writes plain text."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else keyring().encrypt(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else keyring().decrypt(value)
