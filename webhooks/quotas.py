"""Per-workspace quotas: how many webhooks and unrevoked API keys one workspace may hold.

Each check counts inside the transaction that then inserts, with the workspace's row locked
(`SELECT … FOR UPDATE` on PostgreSQL; on SQLite every transaction already holds the one write
lock), so that concurrent creates are counted one after another and never overshoot.
"""

from __future__ import annotations

from sqlalchemy import func, select

from webhooks.models import ApiKey, Session, Webhook, Workspace


class QuotaExceeded(Exception):
    """The workspace already holds as many of something as its quota allows."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def lock_workspace(session: Session, workspace_id: str) -> None:
    """Hold the workspace's row until the transaction ends."""
    session.execute(select(Workspace.id).where(Workspace.id == workspace_id).with_for_update())


def _check(count: int, limit: int, what: str, setting: str, remedy: str) -> None:
    if limit and count >= limit:
        raise QuotaExceeded(
            f"this workspace already has {count} {what}, the most allowed "
            f"({setting}={limit}); {remedy}, or ask the operator to raise {setting}"
        )


def check_webhooks(session: Session, workspace_id: str, limit: int) -> None:
    """Room for one more webhook, or QuotaExceeded; `limit` 0 means no limit."""
    if not limit:
        return
    lock_workspace(session, workspace_id)
    count = session.scalar(
        select(func.count()).select_from(Webhook).where(Webhook.workspace_id == workspace_id)
    )
    _check(count or 0, limit, "webhooks", "WEBHOOK_MAX_WEBHOOKS", "delete one first")


def check_api_keys(session: Session, workspace_id: str, limit: int) -> None:
    """Room for one more unrevoked API key, or QuotaExceeded; `limit` 0 means no limit."""
    if not limit:
        return
    lock_workspace(session, workspace_id)
    count = session.scalar(
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.workspace_id == workspace_id, ApiKey.revoked_at.is_(None))
    )
    _check(count or 0, limit, "API keys", "WEBHOOK_MAX_API_KEYS", "revoke one first")
