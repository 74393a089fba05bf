"""Configuration checked at start-up, the command line, and migrations matching the models."""

from __future__ import annotations

import json
import os

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from redis import Redis

from tests.processes import ROOT, flask
from webhooks import retry, services
from webhooks.config import ConfigError, load
from webhooks.models import db


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("WEBHOOK_RETRY_SCHEDULE", "abc", "comma-separated seconds"),
        ("WEBHOOK_RETRY_SCHEDULE", "0,-5", ">= 0"),
        ("WEBHOOK_TIMEOUT_SECONDS", "soon", "must be a number"),
        ("WEBHOOK_ALLOW_HTTP", "maybe", "1 or 0"),
        ("WEBHOOK_ALLOWED_PRIVATE_NETWORKS", "10.0.0.0/33", "CIDRs"),
        ("WEBHOOK_MAX_PAYLOAD_BYTES", "1.5", "whole number"),
        ("WEBHOOK_CA_BUNDLE", "/nonexistent/ca.pem", "readable file"),
        ("SMTP_URL", "mail.example.com", "smtp"),
    ],
)
def test_a_bad_value_names_the_variable(name, value, says):
    with pytest.raises(ConfigError) as caught:
        load({name: value})
    assert name in str(caught.value) and says in str(caught.value)


def test_the_process_stops_with_one_clear_line(tmp_path):
    env = {**os.environ, "WEBHOOK_RETRY_SCHEDULE": "abc", "INSTANCE_PATH": str(tmp_path)}
    result = flask("db", "upgrade", env=env, timeout=60)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "configuration error: WEBHOOK_RETRY_SCHEDULE must be comma-separated seconds "
        "like 0,60,300, got 'abc'"
    ]


def test_defaults_follow_the_contract():
    values = load({})
    assert values["WEBHOOK_RETRY_SCHEDULE"] == (0, 60, 300, 1800, 7200, 28800)
    assert values["WEBHOOK_TIMEOUT_SECONDS"] == 30
    assert values["WEBHOOK_MAX_PAYLOAD_BYTES"] == 262144
    assert values["WEBHOOK_ALLOW_HTTP"] is False
    assert values["REDIS_URL"] == "redis://127.0.0.1:6379/0"


def test_retry_policy_follows_the_schedule_and_retry_after():
    schedule = (0, 60, 300, 1800, 7200, 28800)
    assert [retry.next_delay(n, schedule) for n in range(1, 7)] == [
        60,
        300,
        1800,
        7200,
        28800,
        None,
    ]
    assert retry.next_delay(1, schedule, status_code=429, retry_after=90) == 90
    assert retry.next_delay(1, schedule, status_code=503, retry_after=500) == 120
    assert retry.next_delay(1, schedule, status_code=500, retry_after=500) == 60
    assert retry.next_delay(1, schedule, status_code=429, retry_after=10) == 60
    assert retry.next_delay(1, schedule, status_code=410) is None
    assert retry.next_delay(1, schedule, retryable=False) is None


def test_cli_creates_a_workspace_and_a_user(app):
    runner = app.test_cli_runner()

    made = runner.invoke(args=["workspace", "create", "Acme Ops"])
    info = json.loads(made.output)
    user = runner.invoke(
        args=[
            "user",
            "create",
            "Ops@Example.com",
            "--password",
            "hunter2hunter2",
            "--workspace",
            info["workspace_id"],
        ]
    )
    bad = runner.invoke(
        args=["user", "create", "x@example.com", "--password", "pw", "--workspace", "ws_nope"]
    )

    assert info["workspace_id"].startswith("ws_") and info["api_key"].startswith("whk_")
    assert json.loads(user.output)["email"] == "ops@example.com"
    assert bad.exit_code != 0 and "at least 8 characters" in bad.output
    client = app.test_client()
    listed = client.get("/api/v1/webhooks", headers={"Authorization": f"Bearer {info['api_key']}"})
    assert listed.status_code == 200 and listed.json == {"data": []}


@pytest.mark.filterwarnings("ignore:autogenerate skipping")
def test_migrations_build_exactly_the_models(app, tmp_path):
    """`flask db upgrade` on an empty database gives the schema the models describe."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    if url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'migrated.db'}"
        env_url = url
    else:
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql("DROP DATABASE IF EXISTS webhooks_migration_check WITH (FORCE)")
            conn.exec_driver_sql("CREATE DATABASE webhooks_migration_check")
        engine.dispose()
        env_url = (
            sa.engine.make_url(url)
            .set(database="webhooks_migration_check")
            .render_as_string(hide_password=False)
        )
    env = {
        **os.environ,
        "DATABASE_URL": env_url,
        "INSTANCE_PATH": str(tmp_path / "i"),
        "SECRET_KEY": "test-secret-key",  # required with PostgreSQL
    }
    result = flask("db", "upgrade", env=env)
    assert result.returncode == 0, result.stderr
    engine = sa.create_engine(env_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        # The title search is DDL that autogenerate cannot compare: SQLite's FTS5 table (and its
        # shadow tables), PostgreSQL's expression index.
        searching = ("events_title", "ix_events_title_search")
        context = MigrationContext.configure(
            conn,
            opts={
                "include_name": lambda name, *_: not str(name).startswith(searching),
                "include_object": lambda _, name, *__: not str(name).startswith(searching),
            },
        )
        diff = compare_metadata(context, db.metadata)
    engine.dispose()
    if not env_url.startswith("sqlite"):
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("DROP DATABASE IF EXISTS webhooks_migration_check WITH (FORCE)")
        admin.dispose()
    assert diff == []


def test_healthz_reports_database_and_redis(client, app):
    ok = client.get("/healthz")
    assert ok.status_code == 200 and ok.json == {"database": "ok", "redis": "ok"}

    services.install(app, Redis.from_url("redis://127.0.0.1:1/0"))
    down = client.get("/healthz")
    assert down.status_code == 503
    assert down.json["database"] == "ok" and down.json["redis"] != "ok"


def test_a_worker_process_leaves_the_web_out(config, tmp_path, monkeypatch):
    from app import create_app

    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "instance"))
    worker = create_app({**config, "WEBHOOK_WEB": "0"})
    web = create_app(dict(config))

    def routes(app):  # type: ignore[no-untyped-def]
        return {rule.rule for rule in app.url_map.iter_rules()}

    assert "/api/v1/events" in routes(web) and "/api/v1/events" not in routes(worker)
    assert {"worker", "scheduler", "db"} <= set(worker.cli.list_commands(None))
    with worker.app_context():
        db.engine.dispose()
    with web.app_context():
        db.engine.dispose()


def test_a_web_process_compiles_its_templates_as_it_starts(config, tmp_path, monkeypatch):
    """So that the first view of a page in a new process does not wait for it (tests, which
    make an app each, leave it to the first render)."""
    from app import create_app

    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "instance"))
    web = create_app({**config, "TESTING": False})
    worker = create_app({**config, "TESTING": False, "WEBHOOK_WEB": "0"})
    compiled = {name for _, name in web.jinja_env.cache or {}}
    assert {"logs/index.html", "logs/_redeliver_all.html", "base.html"} <= compiled
    assert compiled == set(web.jinja_env.list_templates())
    assert not worker.jinja_env.cache
    for app in (web, worker):
        with app.app_context():
            db.engine.dispose()


def test_procfile_runs_workers_and_the_scheduler_without_the_web():
    lines = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line
    )
    for name in ("worker", "worker_slow", "scheduler"):
        assert "WEBHOOK_WEB=0 flask --app app" in lines[name]
    assert "WEBHOOK_WEB" not in lines["web"]
