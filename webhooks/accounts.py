"""Workspaces, dashboard users and API keys."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from webhooks import quotas
from webhooks.models import ApiKey, User, Workspace, utcnow

KEY_PREFIX = "whk_"
# last_used_at is written at most this often, so that reads stay reads.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(
    session: Session, workspace_id: str, name: str = "", *, limit: int = 0
) -> tuple[ApiKey, str]:
    """A new key for the workspace; the plain key is returned once and stored only hashed.

    With a `limit` (WEBHOOK_MAX_API_KEYS), a workspace holding that many unrevoked keys gets
    quotas.QuotaExceeded instead.
    """
    quotas.check_api_keys(session, workspace_id, limit)
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(workspace_id=workspace_id, name=name, prefix=plain[:12], key_hash=_digest(plain))
    session.add(key)
    session.flush()
    return key, plain


def authenticate_key(session: Session, plain: str) -> Any | None:
    """The live key matching `plain` (its `id` and `workspace_id`), or None. A Core query:
    this runs on every API call."""
    if not plain.startswith(KEY_PREFIX) or len(plain) > 200:
        return None
    digest = _digest(plain)
    keys = ApiKey.__table__.c
    key = session.execute(
        select(keys.id, keys.workspace_id, keys.key_hash, keys.last_used_at, keys.revoked_at)
        .where(keys.key_hash == digest)
        .limit(1)
    ).first()
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.key_hash, digest):
        return None
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        session.execute(update(ApiKey.__table__).where(keys.id == key.id).values(last_used_at=now))
        session.commit()
    return key


def create_workspace(session: Session, name: str) -> tuple[Workspace, str]:
    """A workspace with its first API key (returned in plain, once)."""
    workspace = Workspace(name=name)
    session.add(workspace)
    session.flush()
    _, plain = create_api_key(session, workspace.id, name="default")
    session.commit()
    return workspace, plain


class AccountError(ValueError):
    """A user cannot be created as asked."""


def create_user(session: Session, email: str, password: str, workspace_id: str) -> User:
    """A dashboard user in the workspace (an existing user is added to it)."""
    email = email.strip().lower()
    if "@" not in email or len(email) > 320:
        raise AccountError(f"not an e-mail address: {email!r}")
    if len(password) < 8:
        raise AccountError("the password must have at least 8 characters")
    workspace = session.get(Workspace, workspace_id)
    if workspace is None:
        raise AccountError(f"no workspace {workspace_id!r}")
    user = session.scalars(select(User).where(User.email == email)).first()
    if user is None:
        user = User(email=email, password_hash=generate_password_hash(password))
        session.add(user)
    elif not check_password_hash(user.password_hash, password):
        user.password_hash = generate_password_hash(password)
        end_sessions(user)
    if workspace not in user.workspaces:
        user.workspaces.append(workspace)
    session.commit()
    return user


def end_sessions(user: User) -> None:
    """Void every session cookie of the user (they carry the token this replaces)."""
    user.session_token = secrets.token_urlsafe(24)


@functools.cache
def _stand_in_hash() -> str:
    # Hashed with today's method and cost, like any new password.
    return generate_password_hash(secrets.token_urlsafe(16))


def check_login(session: Session, email: str, password: str) -> User | None:
    """The user whose e-mail and password these are, or None.

    An unknown e-mail costs the same password hash as a known one, so that the time of the
    answer does not tell which addresses have an account.
    """
    user = session.scalars(select(User).where(User.email == email.strip().lower())).first()
    stored = user.password_hash if user is not None else _stand_in_hash()
    if not check_password_hash(stored, password) or user is None:
        return None
    return user


def session_user(session: Session, user_id: str) -> User | None:
    """The user a session cookie names, if the cookie's token is still the user's."""
    uid, _, token = user_id.partition(":")
    user = session.get(User, uid)
    if user is None or not token or not hmac.compare_digest(user.session_token, token):
        return None
    return user
