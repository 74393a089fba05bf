"""Migration 0004: template copies become live, credentials are sealed, past logs are masked."""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.processes import flask
from webhooks import crypto, templates

KEY = "migration-test-key"
JIRA = {"project_key": "OPS", "email": "bot@acme.test", "api_token": "atl-token-0123456789"}
BASIC = "Basic " + base64.b64encode(b"bot@acme.test:atl-token-0123456789").decode()
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefWXYZ"


def upgrade(url: str, tmp_path: Path, revision: str) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "INSTANCE_PATH": str(tmp_path / "i"),
        "WEBHOOK_SECRETS_KEY": KEY,
    }
    result = flask("db", "upgrade", revision, env=env)
    assert result.returncode == 0, result.stderr


def webhook_row(id_: str, template: str | None, params, transform, headers) -> dict:  # type: ignore[no-untyped-def]
    now = datetime(2026, 1, 1)
    return {
        "id": id_,
        "workspace_id": "ws_1",
        "name": id_,
        "url": "https://example.com/hook",
        "events": json.dumps(["*"]),
        "headers": json.dumps(headers),
        "active": True,
        "template": template,
        "template_params": json.dumps(params) if params is not None else None,
        "transform": json.dumps(transform) if transform is not None else None,
        "created_at": now,
        "updated_at": now,
    }


def test_copies_become_live_credentials_sealed_and_logs_masked(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, tmp_path, "0003")
    engine = sa.create_engine(url)
    jira = templates.apply("jira", JIRA)
    edited = {**jira["transform"], "fields": {**jira["transform"]["fields"], "summary": "{{ id }}"}}
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO workspaces (id, name, created_at) VALUES ('ws_1', 'W', '2026-01-01')"
            )
        )
        store_webhooks_as_0003_did(conn, jira, edited)
        store_an_attempt_logged_in_clear(conn)
        conn.execute(
            sa.text(
                "INSERT INTO notification_settings (workspace_id, emails, alert_url, updated_at)"
                " VALUES ('ws_1', '[]', :u, '2026-01-01')"
            ),
            {"u": "https://hooks.example.com/services/T0/B0/secretpath"},
        )

    upgrade(url, tmp_path, "head")

    ring = crypto.Keyring([KEY])
    rows, attempt, alert = stored_now(engine)
    engine.dispose()
    everything = json.dumps([list(r) for r in rows.values()]) + str(list(attempt)) + alert
    assert "atl-token-0123456789" not in everything and ROUTING_KEY not in everything
    assert "k3y-in-clear-123" not in everything and "secretpath" not in everything
    # The copy is live now: only the settings are kept, the token sealed.
    copied = rows["wh_copied"]
    assert copied.transform is None and json.loads(copied.headers) == {"X-Team": "ops"}
    assert ring.decrypt(json.loads(copied.template_params)["api_token"]) == JIRA["api_token"]
    # What was changed by hand is kept (customised), its credential header sealed.
    edited_row = rows["wh_edited"]
    assert json.loads(edited_row.transform) == edited
    assert ring.decrypt(json.loads(edited_row.headers)["Authorization"]) == "Basic b3RoZXI="
    assert rows["wh_pd"].transform is None
    assert ring.decrypt(json.loads(rows["wh_key"].headers)["X-Api-Key"]) == "k3y-in-clear-123"
    assert ring.decrypt(alert) == "https://hooks.example.com/services/T0/B0/secretpath"
    assert json.loads(attempt.request_headers)["X-Secret-Thing"] == "••••alue"
    assert json.loads(attempt.request_body)["routing_key"] == "••••WXYZ"


def store_webhooks_as_0003_did(conn, jira: dict, edited: dict) -> None:  # type: ignore[no-untyped-def]
    """A Jira copy as the template made it, one changed by hand, a PagerDuty copy, and a custom
    credential header: every credential in clear."""
    pagerduty = templates.apply("pagerduty", {"routing_key": ROUTING_KEY})
    columns = ", ".join(webhook_row("x", None, None, None, {}))
    values = ", ".join(f":{c}" for c in webhook_row("x", None, None, None, {}))
    insert = sa.text(f"INSERT INTO webhooks ({columns}) VALUES ({values})")
    copied_headers = {**jira["headers"], "X-Team": "ops"}
    conn.execute(insert, webhook_row("wh_copied", "jira", JIRA, jira["transform"], copied_headers))
    conn.execute(
        insert, webhook_row("wh_edited", "jira", JIRA, edited, {"Authorization": "Basic b3RoZXI="})
    )
    conn.execute(
        insert,
        webhook_row("wh_pd", "pagerduty", {"routing_key": ROUTING_KEY}, pagerduty["transform"], {}),
    )
    conn.execute(insert, webhook_row("wh_key", None, None, None, {"X-Api-Key": "k3y-in-clear-123"}))


def store_an_attempt_logged_in_clear(conn) -> None:  # type: ignore[no-untyped-def]
    """A delivery to the PagerDuty webhook whose attempt logged a header and the routing key."""
    conn.execute(
        sa.text(
            "INSERT INTO events (id, workspace_id, type, data, occurred_at, created_at,"
            " is_test) VALUES ('evt_1', 'ws_1', 'incident.created', '{}', :t, :t, false)"
        ),
        {"t": datetime(2026, 1, 1)},
    )
    conn.execute(
        sa.text(
            "INSERT INTO deliveries (id, workspace_id, event_id, webhook_id, event_type, kind,"
            " status, attempt_count, lost_count, max_attempts, ignores_pause, created_at,"
            " updated_at) VALUES ('dlv_1', 'ws_1', 'evt_1', 'wh_pd', 'incident.created',"
            " 'event', 'succeeded', 1, 0, 6, false, :t, :t)"
        ),
        {"t": datetime(2026, 1, 1)},
    )
    conn.execute(
        sa.text(
            "INSERT INTO attempts (delivery_id, number, outcome, started_at, request_url, "
            "request_headers, request_body) VALUES ('dlv_1', 1, 'success', '2026-01-01', "
            "'https://example.com', :headers, :body)"
        ),
        {
            "headers": json.dumps({"X-Api-Key": "••••••", "X-Secret-Thing": "clear-secret-value"}),
            "body": json.dumps(
                {"routing_key": ROUTING_KEY, "event_action": "trigger"}, separators=(",", ":")
            ),
        },
    )


def stored_now(engine: sa.Engine) -> tuple[dict[str, Any], Any, str]:
    """The webhooks by id, the one attempt and the alert URL, as the database holds them."""
    with engine.connect() as conn:
        rows = {
            r.id: r
            for r in conn.execute(
                sa.text("SELECT id, template_params, transform, headers FROM webhooks")
            )
        }
        attempt = conn.execute(sa.text("SELECT request_headers, request_body FROM attempts")).one()
        alert = conn.execute(sa.text("SELECT alert_url FROM notification_settings")).scalar_one()
    return rows, attempt, alert
