"""Sign-in: throttles per address and per account, sessions a sign-out ends, cookies, start-up."""

from __future__ import annotations

import ipaddress
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.session import Session
from webhooks import accounts
from webhooks.models import db
from webhooks.throttle import client_address

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = "/settings/webhooks"


@pytest.fixture
def ops(app, workspace) -> str:  # type: ignore[no-untyped-def]
    """A dashboard user's e-mail (password `correct horse`)."""
    with app.app_context():
        accounts.create_user(db.session, "ops@acme.test", "correct horse", workspace["id"])
    return "ops@acme.test"


def sign_in(app, email, password, address="127.0.0.1", path="/login", headers=None):  # type: ignore[no-untyped-def]
    """One attempt from a fresh browser at `address`."""
    session = Session(app.test_client())
    environ = {"REMOTE_ADDR": address}
    session.get("/login", environ_base=environ, headers=headers)
    data = {"email": email, "password": password, "csrf_token": session.token}
    return session.client.post(path, data=data, environ_base=environ, headers=headers)


@pytest.fixture
def account_limited(config):  # type: ignore[no-untyped-def]
    config.update(
        {"WEBHOOK_LOGIN_RATE_LIMIT": "100/minute", "WEBHOOK_LOGIN_ACCOUNT_RATE_LIMIT": "3/minute"}
    )


def test_wrong_passwords_from_many_addresses_lock_the_account(account_limited, app, ops, workspace):
    with app.app_context():
        accounts.create_user(db.session, "dev@acme.test", "correct horse", workspace["id"])

    wrong = [sign_in(app, ops, "guess", f"203.0.113.{n}") for n in range(1, 4)]
    right = sign_in(app, ops, "correct horse", "203.0.113.99")

    assert [r.status_code for r in wrong] == [401, 401, 401]
    assert right.status_code == 429 and "Too many sign-in attempts" in right.text
    assert int(right.headers["Retry-After"]) > 0
    # Another account is not held back by it.
    assert sign_in(app, "dev@acme.test", "correct horse", "203.0.113.99").status_code == 302


@pytest.fixture
def behind_proxy(config):  # type: ignore[no-untyped-def]
    config.update(
        {"WEBHOOK_LOGIN_RATE_LIMIT": "2 per minute", "WEBHOOK_TRUSTED_PROXIES": "10.0.0.0/8"}
    )


def test_behind_a_trusted_proxy_each_client_has_its_own_budget(behind_proxy, app, ops):
    def via_proxy(forwarded_for: str):  # type: ignore[no-untyped-def]
        return sign_in(app, ops, "guess", "10.0.0.5", headers={"X-Forwarded-For": forwarded_for})

    first = [via_proxy("198.51.100.1") for _ in range(2)]
    # Writing an address of its own in front does not give a client a fresh budget.
    spoofed = via_proxy("192.0.2.77, 198.51.100.1")
    other_client = via_proxy("198.51.100.2")

    assert [r.status_code for r in first] == [401, 401]
    assert spoofed.status_code == 429
    assert other_client.status_code == 401 and "Invalid email or password" in other_client.text


@pytest.fixture
def two_per_minute(config):  # type: ignore[no-untyped-def]
    config["WEBHOOK_LOGIN_RATE_LIMIT"] = "2 per minute"


def test_without_trusted_proxies_the_forwarded_header_is_ignored(two_per_minute, app, ops):
    answers = [
        sign_in(app, ops, "guess", "10.0.0.5", headers={"X-Forwarded-For": f"198.51.100.{n}"})
        for n in range(3)
    ]
    assert [r.status_code for r in answers] == [401, 401, 429]


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("198.51.100.9", ["1.2.3.4"], "198.51.100.9"),  # not a proxy: the header is the client's
        ("10.0.0.5", ["1.2.3.4, 198.51.100.9"], "198.51.100.9"),
        ("10.0.0.5", ["1.2.3.4", "198.51.100.9, 10.0.0.6"], "198.51.100.9"),  # two proxies
        ("10.0.0.5", ["not-an-address, 10.0.0.6"], "10.0.0.6"),
        ("10.0.0.5", [], "10.0.0.5"),
        ("::ffff:10.0.0.5", ["2001:db8::1"], "2001:db8::1"),
    ],
)
def test_client_address_reads_through_trusted_proxies_only(peer, forwarded, client):
    assert client_address(peer, forwarded, [ipaddress.ip_network("10.0.0.0/8")]) == client


def test_sign_in_stays_limited_while_redis_is_down(config, app, ops):
    config.update(
        {"RATELIMIT_STORAGE_URI": "redis://127.0.0.1:1/0", "WEBHOOK_LOGIN_RATE_LIMIT": "2/minute"}
    )
    from app import create_app

    down = create_app(dict(config))

    answers = [sign_in(down, ops, "guess") for _ in range(3)]

    assert [r.status_code for r in answers] == [401, 401, 429]
    assert "Too many sign-in attempts" in answers[-1].text


@pytest.fixture
def unlimited(config):  # type: ignore[no-untyped-def]
    config.update(
        {
            "WEBHOOK_LOGIN_RATE_LIMIT": "1000/minute",
            "WEBHOOK_LOGIN_ACCOUNT_RATE_LIMIT": "1000/minute",
        }
    )


def test_unknown_and_known_emails_take_the_same_time(unlimited, app, ops):
    session = Session(app.test_client())
    session.get("/login")

    def timed(email: str) -> float:
        data = {"email": email, "password": "wrong guess", "csrf_token": session.token}
        started = time.perf_counter()
        assert session.client.post("/login", data=data).status_code == 401
        return time.perf_counter() - started

    known, unknown = [], []
    for _ in range(7):
        known.append(timed(ops))
        unknown.append(timed("nobody@acme.test"))

    # Before, an unknown address answered ~40 times faster (no password hash at all).
    assert statistics.median(unknown) > 0.5 * statistics.median(known), (known, unknown)


def test_force_https_marks_cookies_secure_and_sends_hsts(config, app, client, workspace):
    config["WEBHOOK_FORCE_HTTPS"] = "1"
    from app import create_app

    forced = create_app(dict(config)).test_client()

    page = forced.get("/login")  # plain HTTP, as behind a proxy that ends TLS
    api = forced.get("/api/v1/event-types", headers={"Authorization": f"Bearer {workspace['key']}"})

    assert "; Secure" in page.headers["Set-Cookie"]
    assert forced.application.config["REMEMBER_COOKIE_SECURE"] is True
    for answer in (page, api, forced.get("/healthz")):
        assert answer.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    # Off by default: plain HTTP gets neither.
    default = client.get("/login")
    assert "Secure" not in default.headers["Set-Cookie"]
    assert "Strict-Transport-Security" not in default.headers


def copy_of_cookie(user: Session, app) -> Session:  # type: ignore[no-untyped-def]
    """Another browser holding a copy of the signed-in user's session cookie."""
    copy = Session(app.test_client())
    copy.client.set_cookie("session", user.client.get_cookie("session").value)
    return copy


def test_a_cookie_copied_before_sign_out_is_refused_after_it(user, app):
    copy = copy_of_cookie(user, app)
    assert copy.get(DASHBOARD).status_code == 200

    user.get(DASHBOARD)
    signed_out = user.post("/logout")

    assert signed_out.status_code == 302
    refused = copy.get(DASHBOARD)
    assert refused.status_code == 302 and refused.headers["Location"].startswith("/login")


def test_a_new_password_ends_the_users_sessions(user, app, workspace):
    runner = app.test_cli_runner()
    # Adding the user to another workspace with the same password keeps them signed in.
    other = runner.invoke(args=["workspace", "create", "Other"]).output
    other_id = other.split('"workspace_id": "')[1].split('"')[0]
    same = ["user", "create", "ops@acme.test", "--password", "correct horse"]
    assert runner.invoke(args=[*same, "--workspace", other_id]).exit_code == 0
    assert user.get(DASHBOARD).status_code == 200

    changed = ["user", "create", "ops@acme.test", "--password", "a new password"]
    assert runner.invoke(args=[*changed, "--workspace", workspace["id"]]).exit_code == 0

    refused = user.get(DASHBOARD)
    assert refused.status_code == 302 and refused.headers["Location"].startswith("/login")
    assert sign_in(app, "ops@acme.test", "a new password").status_code == 302


@pytest.mark.parametrize(
    "target",
    [
        "/\\evil.example",
        "/\\/evil.example",
        "/%5Cevil.example",
        "/%09/evil.example",
        "//evil.example",
    ],
)
def test_next_that_could_leave_the_site_goes_to_the_dashboard(app, ops, target):
    answer = sign_in(app, ops, "correct horse", path=f"/login?next={target}")

    assert answer.status_code == 302 and answer.headers["Location"] == DASHBOARD


def test_next_within_the_site_is_followed(app, ops):
    target = "/settings/webhooks/logs?status=failed"
    answer = sign_in(app, ops, "correct horse", path=f"/login?next={quote(target)}")

    assert answer.headers["Location"] == target


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
