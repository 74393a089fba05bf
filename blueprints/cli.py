"""The command line: `flask --app app workspace create`, `user create`, `worker`, `scheduler`."""

from __future__ import annotations

import json
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import click
from flask import Blueprint, current_app

from webhooks import accounts, quotas, services
from webhooks.models import Workspace, db

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


@bp.cli.group("api-key")
def api_key() -> None:
    """Manage API keys."""


@api_key.command("create")
@click.option("--workspace", "workspace_id", required=True, help="the workspace id (ws_…)")
@click.option("--name", default="", help="what the key is for, e.g. the system that uses it")
def create_api_key(workspace_id: str, name: str) -> None:
    """Create an API key for the workspace and print it (shown this once) as one JSON line."""
    if db.session.get(Workspace, workspace_id) is None:
        raise click.ClickException(f"no workspace {workspace_id!r}")
    try:
        key, plain = accounts.create_api_key(
            db.session, workspace_id, name, limit=services.settings().max_api_keys
        )
    except quotas.QuotaExceeded as exc:
        raise click.ClickException(exc.message) from None
    click.echo(json.dumps({"key_id": key.id, "api_key": plain, "workspace_id": workspace_id}))


@bp.cli.command("worker")
@click.option("--burst", is_flag=True, help="stop when the queue is empty")
@click.option(
    "--lane",
    type=click.Choice(["normal", "slow", "all"]),
    default="all",
    show_default=True,
    help="normal: healthy targets; slow: targets that recently ran into the timeout",
)
def worker(burst: bool, lane: str) -> None:
    """Run an RQ worker for deliveries (modules and connections loaded once)."""
    from jobs.worker import run

    run(current_app._get_current_object(), burst=burst, lane=lane)  # type: ignore[attr-defined]


@bp.cli.command("scheduler")
def scheduler() -> None:
    """Queue due retries and repair what Redis or a dead worker lost, forever."""
    from jobs.scheduler import run

    run(current_app._get_current_object())  # type: ignore[attr-defined]


@bp.cli.command("demo")
def demo() -> None:
    """Create a demo workspace, user and API key on first run, and print how to use them."""
    path = Path(current_app.instance_path) / "demo.json"
    if path.exists():
        info = json.loads(path.read_text())
    else:
        ws, key = accounts.create_workspace(db.session, "Demo")
        password = secrets.token_urlsafe(9)
        accounts.create_user(db.session, "demo@example.com", password, ws.id)
        info = {
            "workspace_id": ws.id,
            "api_key": key,
            "email": "demo@example.com",
            "password": password,
        }
        path.write_text(json.dumps(info))
        path.chmod(0o600)
    base = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
    click.echo(
        f"""
  Webhook delivery service: open {base}
  Dashboard sign-in: {info["email"]} / {info["password"]}   (workspace {info["workspace_id"]})
  API key: {info["api_key"]}

  Create a webhook (WEBHOOK_ALLOW_HTTP=1 allows http:// targets for local tries):
    curl -s {base}/api/v1/webhooks -H "Authorization: Bearer {info["api_key"]}" \\
      -H "Content-Type: application/json" \\
      -d '{{"name": "My endpoint", "url": "https://example.com/hook", "events": ["*"]}}'
  Publish an event:
    curl -s {base}/api/v1/events -H "Authorization: Bearer {info["api_key"]}" \\
      -H "Content-Type: application/json" \\
      -d '{{"type": "incident.created", "data": {{"id": "inc_1", "title": "API latency"}}}}'
  Watch deliveries:
    curl -s {base}/api/v1/deliveries -H "Authorization: Bearer {info["api_key"]}"

  See signed deliveries arrive on this machine: run this in another terminal, then publish
  the event above (--forward-to http://localhost:3000/hook instead of --print sends them to
  your own app):
    .venv/bin/flask --app app listen --print --server {base} --api-key {info["api_key"]}
"""
    )


@bp.cli.command("listen")
@click.option("--forward-to", metavar="URL", help="POST each delivery here, e.g. your local app")
@click.option(
    "--print", "print_only", is_flag=True, help="print each delivery instead of forwarding it"
)
@click.option("--events", "-e", multiple=True, metavar="PATTERN", help="default: every event")
@click.option("--server", metavar="BASE_URL", help="default: http://127.0.0.1:$PORT")
@click.option("--api-key", envvar="WEBHOOKS_API_KEY", help="default: $WEBHOOKS_API_KEY")
def listen(
    forward_to: str | None,
    print_only: bool,
    events: tuple[str, ...],
    server: str | None,
    api_key: str | None,
) -> None:
    """Receive the workspace's deliveries here, on a machine the service cannot reach."""
    from blueprints.listen import Listen, ListenerGone

    if bool(forward_to) == print_only:
        raise click.UsageError("give either --forward-to URL or --print")
    if not api_key:
        raise click.UsageError("an API key is needed: --api-key KEY or WEBHOOKS_API_KEY")
    server = server or f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
    client = Listen(
        server,
        api_key,
        forward_to,
        list(events) or ["*"],
        timeout=services.settings().timeout * 0.9,
    )
    info = client.open()
    click.echo(f"Listening as {info['id']} (webhook {info['webhook_id']}, named CLI listener).")
    click.echo(f"Signing secret: {info['secret']}   (shown once; deliveries are signed with it)")
    click.echo(f"Forwarding to {forward_to}" if forward_to else "Printing each delivery")
    click.echo("Ctrl-C closes the listener.")
    # A process manager stops it with SIGTERM: close the listener then too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        client.run()
    except KeyboardInterrupt:
        client.close()
        click.echo("Listener closed.")
    except ListenerGone:
        raise click.ClickException("the listener was closed on the server") from None


@bp.cli.command("rotate-secrets-key")
def rotate_secrets_key() -> None:
    """Re-encrypt every webhook secret and credential under the first key of
    WEBHOOK_SECRETS_KEY."""
    from sqlalchemy import select
    from sqlalchemy.orm.attributes import flag_modified

    from webhooks.models import Notification, NotificationSettings, Webhook, WebhookSecret

    count = 0
    for row in db.session.scalars(select(WebhookSecret)):
        flag_modified(row, "secret")  # read with any key, written with the first
        count += 1
    # Credentials: template settings, custom headers, alert URLs (webhooks.credentials).
    tables: tuple[tuple[type[Any], tuple[str, ...]], ...] = (
        (Webhook, ("headers", "template_params")),
        (NotificationSettings, ("alert_url",)),
        (Notification, ("target",)),
    )
    for model, columns in tables:
        for row in db.session.scalars(select(model)):
            for column in columns:
                flag_modified(row, column)
    db.session.commit()
    click.echo(f"re-encrypted {count} webhook secret(s) with the first WEBHOOK_SECRETS_KEY")
