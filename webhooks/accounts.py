"""Workspaces, dashboard users and API keys."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Text, and_, bindparam, cast, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from webhooks import fastsql, quotas, sqlite
from webhooks.models import (
    API_KEYS,
    WEBHOOKS,
    ApiKey,
    Invitation,
    Session,
    User,
    Workspace,
    changed,
    memberships,
    utcnow,
)

KEY_PREFIX = "whk_"
MIN_PASSWORD = 8
# Hashing is slow on purpose; a megabyte of password would make it slower still.
MAX_PASSWORD = 1024
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
    session.commit()
    return key, plain


def revoke_api_key(session: Session, key: ApiKey) -> None:
    """Refuse requests with this key from now on (revoking twice keeps the first time)."""
    key.revoked_at = key.revoked_at or utcnow()
    session.commit()


# Built once: this runs on every API call.
_KEY_COLUMNS = (
    API_KEYS.c.id,
    API_KEYS.c.workspace_id,
    API_KEYS.c.key_hash,
    API_KEYS.c.last_used_at,
)
_LIVE_KEY = (API_KEYS.c.key_hash == bindparam("digest"), API_KEYS.c.revoked_at.is_(None))
_KEY_BY_DIGEST = select(*_KEY_COLUMNS).where(*_LIVE_KEY).limit(1)
# The same key, on each of its workspace's active webhooks (one row without one when it has
# none): `authenticate_publisher`.
_KEY_WITH_WEBHOOKS = (
    select(
        *_KEY_COLUMNS,
        WEBHOOKS.c.id.label("webhook_id"),
        cast(WEBHOOKS.c.events, Text).label("events"),
        WEBHOOKS.c.ordering_key,
    )
    .select_from(
        API_KEYS.outerjoin(
            WEBHOOKS,
            and_(WEBHOOKS.c.workspace_id == API_KEYS.c.workspace_id, WEBHOOKS.c.active.is_(True)),
        )
    )
    .where(*_LIVE_KEY)
)
_KEY_USED = (
    update(API_KEYS)
    .where(API_KEYS.c.id == bindparam("key_id"))
    .values(last_used_at=bindparam("now"))
)


def authenticate_key(session: Session, plain: str, *, keep_reading: bool = False) -> Any | None:
    """The live key matching `plain` (its `id` and `workspace_id`), or None.

    On SQLite the look-up is a transaction of its own that only reads (it waits for no
    writer), ended before this returns unless `keep_reading` (the caller reads more in it,
    then ends it: `sqlite.reading_now`). The key's `last_used_at` is written at most once a
    minute."""
    key, _ = _authenticate(session, plain, _KEY_BY_DIGEST, keep_reading=keep_reading)
    return key


# (webhook id, its event patterns as JSON text, its ordering key): a `publishing.Subscriber`
# before its patterns are parsed.
WebhookRow = tuple[str, str, str | None]


def authenticate_publisher(session: Session, plain: str) -> tuple[Any | None, list[WebhookRow]]:
    """`authenticate_key` for a publish call, which goes on reading (`keep_reading`): the
    live key or None, and its workspace's active webhooks, read in the same query. A publish
    needs both, and on PostgreSQL each query is a round trip."""
    key, rows = _authenticate(session, plain, _KEY_WITH_WEBHOOKS, keep_reading=True)
    if key is None:
        return None, []
    return key, [(r.webhook_id, r.events, r.ordering_key) for r in rows if r.webhook_id]


def _authenticate(
    session: Session, plain: str, query: Any, *, keep_reading: bool
) -> tuple[Any | None, list[Any]]:
    """The live key matching `plain` by `query` (its first row), or None, and every row."""
    if not plain.startswith(KEY_PREFIX) or len(plain) > 200:
        return None, []
    digest = _digest(plain)
    read_only = sqlite.reading(session)
    found = fastsql.rows(session, query, {"digest": digest})
    key = found[0] if found else None
    if key is None or not hmac.compare_digest(key.key_hash, digest):
        if read_only:
            session.rollback()
        return None, []
    now = utcnow()
    stale = key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION
    if read_only and (stale or not keep_reading):
        session.rollback()
    if stale:
        session.execute(_KEY_USED, {"key_id": key.id, "now": now})
        session.commit()
    return key, found


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
    if (problem := password_problem(password)) is not None:
        raise AccountError(problem[0].lower() + problem[1:].rstrip("."))
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


def sign_out(session: Session, user: User) -> None:
    """End every session of the user, this one included."""
    end_sessions(user)
    session.commit()


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


def password_problem(password: str) -> str | None:
    """What is wrong with a new password, in words, or None. The CLI and the dashboard agree."""
    if len(password) < MIN_PASSWORD:
        return f"The password must have at least {MIN_PASSWORD} characters."
    if len(password) > MAX_PASSWORD:
        return f"The password must have at most {MAX_PASSWORD} characters."
    return None


# One address: a name, an @ and a domain with a dot; nothing that separates addresses in a list.
_EMAIL = re.compile(r"^[^@\s,;<>\"]+@[^@\s,;<>\"]+\.[^@\s,;<>\".]+$")
MAX_EMAIL = 254  # RFC 5321's limit for a path


def is_email(text: str) -> bool:
    """Whether `text` reads as one e-mail address (users, and notification recipients)."""
    return len(text) <= MAX_EMAIL and _EMAIL.fullmatch(text) is not None


def email_problem(email: str) -> str | None:
    if not is_email(email):
        return "Enter an e-mail address, like name@example.com."
    return None


def workspace_users(session: Session, workspace_id: str) -> list[tuple[User, str | None]]:
    """The workspace's users, oldest first, each with "Invited" while their invitation link
    is unused, "Invitation expired" once it can no longer be, else None."""
    unused: tuple[ColumnElement[bool], ...] = (
        Invitation.user_id == User.id,
        Invitation.workspace_id == workspace_id,
        Invitation.used_at.is_(None),
    )
    invited = select(Invitation.id).where(*unused).exists()
    live = select(Invitation.id).where(*unused, Invitation.expires_at > utcnow()).exists()
    rows = session.execute(
        select(User, invited, live)
        .join(memberships, memberships.c.user_id == User.id)
        .where(memberships.c.workspace_id == workspace_id)
        .order_by(User.created_at, User.email)
    )
    return [
        (user, None if not pending else "Invited" if usable else "Invitation expired")
        for user, pending, usable in rows
    ]


def member(session: Session, workspace_id: str, user_id: str) -> User | None:
    """The user, if they belong to the workspace: another workspace's users are not found."""
    return session.scalars(
        select(User)
        .join(memberships, memberships.c.user_id == User.id)
        .where(User.id == user_id, memberships.c.workspace_id == workspace_id)
    ).first()


def invite_user(
    session: Session, workspace_id: str, email: str, lifetime: timedelta
) -> tuple[User, str]:
    """A new user of the workspace and the one-time token that lets them choose a password.

    Until then the user's password is random and known to nobody. The token is returned in
    plain once; only its digest is stored. Commits.
    """
    email = email.strip().lower()
    if (problem := email_problem(email)) is not None:
        raise AccountError(problem)
    existing = session.scalars(select(User).where(User.email == email)).first()
    if existing is not None:
        raise AccountError(_already(session, existing, workspace_id))
    workspace = session.get(Workspace, workspace_id)
    if workspace is None:
        raise AccountError(f"no workspace {workspace_id!r}")
    user = User(email=email, password_hash=generate_password_hash(secrets.token_urlsafe(32)))
    user.workspaces.append(workspace)
    session.add(user)
    plain = secrets.token_urlsafe(32)
    try:
        session.flush()
        session.add(
            Invitation(
                workspace_id=workspace_id,
                user_id=user.id,
                token_hash=_digest(plain),
                expires_at=utcnow() + lifetime,
            )
        )
        session.commit()
    except IntegrityError:  # the same address invited at the same moment
        session.rollback()
        raise AccountError("This e-mail address already has an account.") from None
    return user, plain


def _already(session: Session, user: User, workspace_id: str) -> str:
    if member(session, workspace_id, user.id) is not None:
        return f"{user.email} is already a user of this workspace."
    return "This e-mail address already has an account."


def invitation(session: Session, plain: str) -> Invitation | None:
    """The unused, unexpired invitation whose token this is, or None."""
    if not plain or len(plain) > 200:
        return None
    digest = _digest(plain)
    found = session.scalars(select(Invitation).where(Invitation.token_hash == digest)).first()
    if (
        found is None
        or found.used_at is not None
        or found.expires_at <= utcnow()
        or not hmac.compare_digest(found.token_hash, digest)
    ):
        return None
    return found


def accept_invitation(session: Session, plain: str, password: str) -> User | None:
    """Use the invitation once: the user's password becomes `password`. None when the link is
    unknown, used or expired. The caller has checked the password (password_problem). Commits.
    """
    found = invitation(session, plain)
    if found is None:
        return None
    now = utcnow()
    # The compare-and-set makes the link work once even when two requests race.
    taken = changed(
        session,
        update(Invitation)
        .where(Invitation.id == found.id, Invitation.used_at.is_(None), Invitation.expires_at > now)
        .values(used_at=now)
        .execution_options(synchronize_session=False),
    )
    user = session.get(User, found.user_id)
    if taken != 1 or user is None:
        session.rollback()
        return None
    user.password_hash = generate_password_hash(password)
    end_sessions(user)
    session.commit()
    return user


def change_password(
    session: Session, user: User, current: str, new: str, confirm: str
) -> dict[str, str]:
    """Set a new password, ending the user's sessions; the problems by field, or {} when done.

    The caller signs the present session in again with the new session token. Commits.
    """
    errors: dict[str, str] = {}
    if not check_password_hash(user.password_hash, current):
        errors["current_password"] = "That is not your current password."
    if (problem := password_problem(new)) is not None:
        errors["new_password"] = problem
    if new != confirm:
        errors["confirm_password"] = "The two new passwords differ. Type the same one twice."
    if errors:
        return errors
    user.password_hash = generate_password_hash(new)
    end_sessions(user)
    session.commit()
    return {}


def remove_user(session: Session, workspace_id: str, user_id: str, acting_user_id: str) -> bool:
    """Take the user out of the workspace and end their sessions at once; a user left in no
    workspace is deleted. False when no such user is in the workspace (another workspace's users
    look exactly like missing ones). AccountError for yourself or the last user. Commits.
    """
    # One removal per workspace at a time, so that two people removing each other at once
    # cannot leave it empty (SQLite's transactions are serialized anyway).
    session.execute(select(Workspace.id).where(Workspace.id == workspace_id).with_for_update())
    user = member(session, workspace_id, user_id)
    if user is None:
        session.rollback()
        return False
    if user.id == acting_user_id:
        session.rollback()
        raise AccountError("You cannot remove yourself. Ask another user of the workspace.")
    count = session.scalar(
        select(func.count())
        .select_from(memberships)
        .where(memberships.c.workspace_id == workspace_id)
    )
    if (count or 0) <= 1:
        session.rollback()
        raise AccountError("The last user of a workspace cannot be removed.")
    if member(session, workspace_id, acting_user_id) is None:  # removed a moment ago
        session.rollback()
        return False
    session.execute(
        delete(Invitation).where(
            Invitation.user_id == user.id, Invitation.workspace_id == workspace_id
        )
    )
    user.workspaces = [w for w in user.workspaces if w.id != workspace_id]
    end_sessions(user)
    session.flush()
    if not user.workspaces:
        session.delete(user)
    session.commit()
    return True
