"""The command line: `flask --app app workspace create`, `user create`, `worker`, `scheduler`."""

from __future__ import annotations

import json

import click
from flask import Blueprint, current_app

from webhooks import accounts
from webhooks.models import db

bp = Blueprint("cli", __name__, cli_group=None)


@bp.cli.group("workspace")
def workspace() -> None:
    """Manage workspaces."""


@workspace.command("create")
@click.argument("name")
def create_workspace(name: str) -> None:
    """Create a workspace and print its id and first API key as one JSON line."""
    ws, key = accounts.create_workspace(db.session, name)
    click.echo(json.dumps({"workspace_id": ws.id, "api_key": key}))


@bp.cli.group("user")
def user() -> None:
    """Manage dashboard users."""


@user.command("create")
@click.argument("email")
@click.option("--password", required=True, help="at least 8 characters")
@click.option("--workspace", "workspace_id", required=True, help="the workspace id (ws_…)")
def create_user(email: str, password: str, workspace_id: str) -> None:
    """Create a dashboard user who belongs to the workspace."""
    try:
        created = accounts.create_user(db.session, email, password, workspace_id)
    except accounts.AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        json.dumps({"user_id": created.id, "email": created.email, "workspace_id": workspace_id})
    )


@bp.cli.command("worker")
@click.option("--burst", is_flag=True, help="stop when the queue is empty")
def worker(burst: bool) -> None:
    """Run an RQ worker for deliveries (modules and connections loaded once)."""
    from jobs.worker import run

    run(current_app._get_current_object(), burst=burst)


@bp.cli.command("scheduler")
def scheduler() -> None:
    """Queue due retries and repair what Redis or a dead worker lost, forever."""
    from jobs.scheduler import run

    run(current_app._get_current_object())
