"""Credentials never come back out, and templates are live (docs/API.md section 4).

A Jira API token, a GitHub token, a PagerDuty routing key, credential-like custom headers and
the alert URL reach the receiver in clear, and nowhere else: every API answer, dashboard page
and logged attempt shows them masked, and the database holds them encrypted.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import sqlalchemy as sa

from app import create_app
from webhooks.models import Webhook, db

TOKEN = "atl-token-7Qx9-KEEP-OUT"
BASIC = base64.b64encode(f"bot@acme.test:{TOKEN}".encode()).decode()
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefWXYZ"
API_KEY_HEADER = "k3y-0f-th3-X-Api-Key-header"
JIRA = {"project_key": "OPS", "email": "bot@acme.test", "api_token": TOKEN}


def deliver(api, receiver, service, event_type: str = "recommendation.created") -> Any:  # type: ignore[no-untyped-def]
    """Publish one event and return the request the receiver got for it."""
    before = len(receiver.requests)
    api.publish(event_type, {"id": "rec_1", "title": "Idle volume"})
    service.run_until(lambda: len(receiver.requests) > before)
    return receiver.requests[-1]


def raw_row(app, sql: str, **params: Any) -> str:  # type: ignore[no-untyped-def]
    """A row as the database stores it, as text."""
    with app.app_context():
        return json.dumps([list(r) for r in db.session.execute(sa.text(sql), params)], default=str)


def everything_shown(api, user, hook_id: str) -> str:  # type: ignore[no-untyped-def]
    """Every answer and page that shows the webhook or its deliveries, as raw text."""
    deliveries = api.deliveries(webhook_id=hook_id)
    shown = [
        api.get(f"/webhooks/{hook_id}").text,
        api.get("/webhooks").text,
        api.get(f"/deliveries?webhook_id={hook_id}").text,
        user.get(f"/settings/webhooks/{hook_id}").text,
        user.get(f"/settings/webhooks/{hook_id}/edit").text,
        user.get("/settings/webhooks").text,
        user.get("/settings/webhooks/logs").text,
    ]
    for delivery in deliveries:
        shown.append(api.get(f"/deliveries/{delivery['id']}").text)
        shown.append(api.get(f"/events/{delivery['event_id']}").text)
        shown.append(user.get(f"/settings/webhooks/logs/{delivery['id']}").text)
        shown.append(user.get(f"/settings/webhooks/logs/{delivery['id']}/attempts").text)
    return "\n".join(shown)


def test_jira_token_reaches_the_receiver_and_nothing_else(app, api, user, receiver, service):
    hook = api.create_webhook(receiver.url(), template="jira", template_params=JIRA)

    got = deliver(api, receiver, service)

    assert got.headers["Authorization"] == f"Basic {BASIC}"
    shown = "\n".join([json.dumps(hook), everything_shown(api, user, hook["id"])])
    assert TOKEN not in shown and BASIC not in shown
    assert hook["template_params"]["api_token"] == "••••-OUT"
    assert hook["template_headers"] == {"Authorization": "••••" + BASIC[-4:]}
    attempt = api.get(f"/deliveries/{api.get('/deliveries').json['data'][0]['id']}").json
    assert attempt["attempts"][0]["request"]["headers"]["Authorization"] == "••••" + BASIC[-4:]
    stored = raw_row(app, "SELECT headers, template_params, transform FROM webhooks")
    logged = raw_row(app, "SELECT request_headers, request_body FROM attempts")
    assert TOKEN not in stored + logged and BASIC not in stored + logged
    assert "fernet:" in stored


def test_pagerduty_routing_key_is_masked_in_the_logged_body(app, api, user, receiver, service):
    hook = api.create_webhook(
        receiver.url(), template="pagerduty", template_params={"routing_key": ROUTING_KEY}
    )

    got = deliver(api, receiver, service, "incident.created")

    assert got.json()["routing_key"] == ROUTING_KEY
    shown = "\n".join([json.dumps(hook), everything_shown(api, user, hook["id"])])
    assert ROUTING_KEY not in shown
    [delivery] = api.get("/deliveries").json["data"]
    body = api.get(f"/deliveries/{delivery['id']}").json["attempts"][0]["request"]["body"]
    assert json.loads(body)["routing_key"] == "••••WXYZ"
    # Everything else in the logged body is byte for byte what was sent.
    assert body == got.body.decode().replace(ROUTING_KEY, "••••WXYZ")
    stored = raw_row(app, "SELECT template_params, transform FROM webhooks")
    logged = raw_row(app, "SELECT request_body FROM attempts")
    assert ROUTING_KEY not in stored + logged and "fernet:" in stored


def test_credential_headers_are_encrypted_masked_and_sent(app, api, user, receiver, service):
    hook = api.create_webhook(
        receiver.url(),
        events=["*"],
        headers={"X-Api-Key": API_KEY_HEADER, "X-Team": "ops", "Proxy-Authorization": "Basic pw"},
    )

    got = deliver(api, receiver, service)

    assert got.headers["X-Api-Key"] == API_KEY_HEADER and got.headers["X-Team"] == "ops"
    assert hook["headers"] == {
        "X-Api-Key": "••••ader",
        "X-Team": "ops",
        "Proxy-Authorization": "••••",
    }
    shown = everything_shown(api, user, hook["id"])
    assert API_KEY_HEADER not in shown and "Basic pw" not in shown
    stored = raw_row(app, "SELECT headers FROM webhooks")
    assert API_KEY_HEADER not in stored and "Basic pw" not in stored and "X-Team" in stored


def test_masked_values_sent_back_keep_the_stored_credentials(api, receiver, service):
    hook = api.create_webhook(
        receiver.url(), template="jira", template_params=JIRA, headers={"X-Api-Key": API_KEY_HEADER}
    )
    shown = api.get(f"/webhooks/{hook['id']}").json

    answer = api.patch(
        f"/webhooks/{hook['id']}",
        {
            "name": "Renamed",
            "headers": shown["headers"],
            "template_params": shown["template_params"],
        },
    )

    assert answer.status_code == 200, answer.json
    got = deliver(api, receiver, service)
    assert got.headers["Authorization"] == f"Basic {BASIC}"
    assert got.headers["X-Api-Key"] == API_KEY_HEADER
    # A masked value that is not the stored one's is refused, not saved.
    wrong = api.patch(f"/webhooks/{hook['id']}", {"headers": {"X-Api-Key": "••••nope"}})
    assert wrong.status_code == 400 and wrong.json["error"]["code"] == "invalid_headers"
    assert "'••••nope'" in wrong.json["error"]["message"]


def test_patching_template_params_changes_the_next_delivery(api, receiver, service):
    hook = api.create_webhook(receiver.url(), template="jira", template_params=JIRA)
    assert deliver(api, receiver, service).json()["fields"]["project"]["key"] == "OPS"

    answer = api.patch(
        f"/webhooks/{hook['id']}",
        {"template_params": {"project_key": "NEWKEY", "api_token": "brand-new-token"}},
    )

    assert answer.status_code == 200, answer.json
    assert answer.json["template_params"]["email"] == "bot@acme.test"  # the others are kept
    got = deliver(api, receiver, service)
    assert got.json()["fields"]["project"]["key"] == "NEWKEY"
    expected = base64.b64encode(b"bot@acme.test:brand-new-token").decode()
    assert got.headers["Authorization"] == f"Basic {expected}"


def test_a_transform_of_its_own_detaches_the_body_and_null_follows_again(api, receiver, service):
    hook = api.create_webhook(receiver.url(), template="jira", template_params=JIRA)
    assert hook["transform_source"] == "template"
    assert hook["transform"]["fields"]["project"]["key"] == "OPS"

    # Sending back the template's own transform (as GET shows it) changes nothing.
    same = api.patch(f"/webhooks/{hook['id']}", {"transform": hook["transform"]}).json
    assert same["transform_source"] == "template"
    custom = {"fields": {"project": {"key": "OPS"}, "summary": "{{ data.title }}"}}
    detached = api.patch(f"/webhooks/{hook['id']}", {"transform": custom}).json
    assert detached["transform_source"] == "custom" and detached["transform"] == custom
    api.patch(f"/webhooks/{hook['id']}", {"template_params": {"project_key": "NEWKEY"}})

    got = deliver(api, receiver, service)
    assert got.json() == {"fields": {"project": {"key": "OPS"}, "summary": "Idle volume"}}
    assert got.headers["Authorization"] == f"Basic {BASIC}"  # credentials still follow

    live = api.patch(f"/webhooks/{hook['id']}", {"transform": None}).json
    assert live["transform_source"] == "template"
    assert deliver(api, receiver, service).json()["fields"]["project"]["key"] == "NEWKEY"


def test_a_customised_pagerduty_body_still_gets_its_routing_key(app, api, receiver, service):
    hook = api.create_webhook(
        receiver.url(), template="pagerduty", template_params={"routing_key": ROUTING_KEY}
    )
    assert "routing_key" not in hook["transform"]
    custom = {**hook["transform"], "client": "Acme", "routing_key": ROUTING_KEY}

    answer = api.patch(f"/webhooks/{hook['id']}", {"transform": custom}).json

    assert answer["transform_source"] == "custom" and "routing_key" not in answer["transform"]
    assert ROUTING_KEY not in raw_row(app, "SELECT transform FROM webhooks")
    body = deliver(api, receiver, service, "incident.created").json()
    assert body["client"] == "Acme" and body["routing_key"] == ROUTING_KEY


def test_alert_url_is_encrypted_and_masked(app, api, receiver):
    url = receiver.url("/services/T000/B000/XXXXsecretXXXX")
    assert api.put("/notifications", {"emails": [], "alert_url": url}).status_code == 200

    shown = api.get("/notifications").json["alert_url"]

    assert shown.endswith("/••••XXXX") and "secret" not in shown
    assert "secret" not in raw_row(app, "SELECT alert_url FROM notification_settings")
    # Sent back as shown, it is kept.
    assert (
        api._call(
            "put", "/notifications", {"emails": ["a@acme.test"], "alert_url": shown}
        ).status_code
        == 200
    )
    with app.app_context():
        assert db.session.execute(sa.text("SELECT 1")).scalar()
        from webhooks.models import NotificationSettings

        assert db.session.scalars(sa.select(NotificationSettings)).one().alert_url == url


def test_rotating_the_key_re_encrypts_credentials(config, api, receiver):
    api.create_webhook(
        receiver.url(), template="jira", template_params=JIRA, headers={"X-Api-Key": API_KEY_HEADER}
    )
    config["WEBHOOK_SECRETS_KEY"] = "new-key-2026,test-secret-key"
    rotated = create_app(dict(config))

    assert "re-encrypted" in rotated.test_cli_runner().invoke(args=["rotate-secrets-key"]).output

    config["WEBHOOK_SECRETS_KEY"] = "new-key-2026"  # the old key is gone
    with create_app(dict(config)).app_context():
        hook = db.session.scalars(sa.select(Webhook)).one()
        assert hook.template_params["api_token"] == TOKEN
        assert hook.headers["X-Api-Key"] == API_KEY_HEADER


def test_saving_the_edit_form_as_shown_keeps_every_credential(api, user, receiver, service):
    hook = api.create_webhook(
        receiver.url(), template="jira", template_params=JIRA, headers={"X-Api-Key": API_KEY_HEADER}
    )
    form = user.get(f"/settings/webhooks/{hook['id']}/edit").text
    assert TOKEN not in form and API_KEY_HEADER not in form

    saved = user.post(
        f"/settings/webhooks/{hook['id']}/edit",
        data={
            "name": "Jira OPS",
            "url": receiver.url(),
            "events": ["recommendation.created"],
            "template": "jira",
            "param_project_key": "OPS",
            "param_issue_type": "Task",
            "param_email": "bot@acme.test",
            "param_api_token": "••••-OUT",
            "header_name": ["X-Api-Key"],
            "header_value": ["••••ader"],
            "transform": "",
            "active": "on",
        },
    )

    assert saved.status_code == 302, saved.text
    got = deliver(api, receiver, service)
    assert got.headers["Authorization"] == f"Basic {BASIC}"
    assert got.headers["X-Api-Key"] == API_KEY_HEADER
    assert api.get(f"/webhooks/{hook['id']}").json["name"] == "Jira OPS"
