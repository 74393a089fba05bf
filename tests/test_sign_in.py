"""Sign-in: throttles per address and per account, sessions a sign-out ends, cookies, start-up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def start_without_secret_key(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    env.update(
        {"DATABASE_URL": "postgres://app@db.internal:5432/webhooks", "INSTANCE_PATH": str(tmp_path)}
    )
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", [["db", "upgrade"], ["worker", "--burst"], ["scheduler"]])
def test_without_secret_key_on_postgresql_a_command_stops_with_one_line(command, tmp_path):
    flask = [sys.executable, "-m", "flask", "--app", "app", *command]
    result = start_without_secret_key(flask, tmp_path)

    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "configuration error: SECRET_KEY must be set when DATABASE_URL is not SQLite "
        "(every host needs the same key)"
    ]
    assert not (tmp_path / "secret_key").exists()


def test_without_secret_key_on_postgresql_the_web_server_stops_at_once(tmp_path):
    gunicorn = [str(Path(sys.executable).parent / "gunicorn"), "--bind", "127.0.0.1:0"]
    started = time.monotonic()
    result = start_without_secret_key([*gunicorn, "app:create_app()"], tmp_path)

    assert result.returncode != 0 and time.monotonic() - started < 30
    assert "configuration error: SECRET_KEY must be set" in result.stderr
