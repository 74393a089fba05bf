"""Rate limits on the API and on sign-in, and the dashboard's security headers."""

from __future__ import annotations

import pytest

from app import create_app
from tests.session import Session
from webhooks import accounts
from webhooks.models import db


@pytest.fixture
def limited(config):  # type: ignore[no-untyped-def]
    config.update(
        {"WEBHOOK_API_RATE_LIMIT": "3 per minute", "WEBHOOK_LOGIN_RATE_LIMIT": "2 per minute"}
    )
    return config


def test_api_key_over_its_rate_gets_429_with_retry_after(limited, api, client, app):
    answers = [api.get("/webhooks") for _ in range(4)]

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert refused.json["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 0
    # Another workspace's key has its own budget.
    with app.app_context():
        _, other = accounts.create_workspace(db.session, "Other")
    assert (
        client.get("/api/v1/webhooks", headers={"Authorization": f"Bearer {other}"}).status_code
        == 200
    )


def test_sign_in_attempts_are_limited(limited, app):
    session = Session(app.test_client())
    session.get("/login")
    answers = [session.login("x@acme.test", "guess") for _ in range(3)]

    assert [a.status_code for a in answers] == [401, 401, 429]
    assert "Too many sign-in attempts" in answers[-1].text
    assert int(answers[-1].headers["Retry-After"]) > 0


def test_the_api_answers_when_the_limiter_cannot_reach_redis(config, workspace, app):
    config["RATELIMIT_STORAGE_URI"] = "redis://127.0.0.1:1/0"
    broken = create_app(dict(config))

    response = broken.test_client().get(
        "/api/v1/event-types", headers={"Authorization": f"Bearer {workspace['key']}"}
    )

    assert response.status_code == 200 and len(response.json["data"]) == 20


def test_dashboard_pages_carry_security_headers(client):
    page = client.get("/login")
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "Strict-Transport-Security" not in page.headers
    secure = client.get("/login", base_url="https://webhooks.example.com")
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")
