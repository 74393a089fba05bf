"""Templates and transforms end to end: the body the receiver gets is the rendered one, signed."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jsonschema
from standardwebhooks.webhooks import Webhook as StandardWebhook

from tests.test_delivery import verify_signature

SCHEMAS = Path(__file__).parent / "schemas"


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.json").read_text())


def test_slack_template_sends_a_signed_slack_message(api, receiver, service):
    hook = api.create_webhook(receiver.url(), template="slack")
    assert hook["events"] == ["recommendation.created", "incident.created", "finding.created"]
    assert hook["transform"]["text"]

    api.publish(
        "recommendation.created",
        {"title": "Right-size i-0abc", "potential_savings": 150, "url": "https://app.example/r/1"},
    )
    service.run_until(lambda: receiver.requests)
    got = receiver.requests[0]

    body = got.json()
    jsonschema.validate(body, schema("slack"))
    assert "Right-size i-0abc" in body["text"]
    assert verify_signature(
        got.body.decode(), got.headers["X-CloudThinker-Signature"], hook["secret"]
    )
    StandardWebhook(hook["secret"]).verify(got.body, got.headers)


def test_jira_template_sends_basic_auth_and_a_create_issue_body(api, receiver, service):
    hook = api.create_webhook(
        receiver.url(),
        template="jira",
        template_params={"project_key": "OPS", "email": "bot@acme.test", "api_token": "tok-123"},
    )
    assert hook["template_params"]["api_token"] == "••••"
    assert "tok-123" not in json.dumps(api.get(f"/webhooks/{hook['id']}").json["template_params"])

    api.publish("recommendation.created", {"id": "rec_1", "title": "Delete idle volume"})
    service.run_until(lambda: receiver.requests)

    got = receiver.requests[0]
    jsonschema.validate(got.json(), schema("jira"))
    assert got.json()["fields"]["project"]["key"] == "OPS"
    expected = base64.b64encode(b"bot@acme.test:tok-123").decode()
    assert got.headers["Authorization"] == f"Basic {expected}"


def test_pagerduty_resolve_closes_what_trigger_opened(api, receiver, service):
    api.create_webhook(
        receiver.url(), template="pagerduty", template_params={"routing_key": "R" * 32}
    )

    api.publish("incident.created", {"id": "inc_9", "title": "API down", "severity": "critical"})
    api.publish("incident.resolved", {"id": "inc_9", "title": "API down", "severity": "critical"})
    service.run_until(lambda: len(receiver.requests) >= 2)

    bodies = {r.json()["event_action"]: r.json() for r in receiver.requests}
    for body in bodies.values():
        jsonschema.validate(body, schema("pagerduty"))
    assert bodies["trigger"]["dedup_key"] == bodies["resolve"]["dedup_key"]
    assert bodies["trigger"]["payload"]["severity"] == "critical"


def test_github_template_dispatches_with_bearer_token(api, receiver, service):
    api.create_webhook(receiver.url(), template="github", template_params={"token": "ghp_example"})

    api.publish("recommendation.created", {f"k{i}": i for i in range(15)})
    service.run_until(lambda: receiver.requests)

    got = receiver.requests[0]
    jsonschema.validate(got.json(), schema("github"))
    assert got.json()["event_type"] == "recommendation-created"
    assert len(got.json()["client_payload"]) <= 10
    assert got.headers["Authorization"] == "Bearer ghp_example"
    assert got.headers["Accept"] == "application/vnd.github+json"


def test_custom_transform_keeps_json_types(api, receiver, service):
    api.create_webhook(
        receiver.url(),
        events=["task.*"],
        transform={
            "kind": "{{ type }}",
            "payload": "{{ data }}",
            "n": "{{ data.n }}",
            "s": "n={{ data.n }}",
        },
    )
    api.publish("task.failed", {"n": 3, "error": "boom"})
    service.run_until(lambda: receiver.requests)
    assert receiver.requests[0].json() == {
        "kind": "task.failed",
        "payload": {"n": 3, "error": "boom"},
        "n": 3,
        "s": "n=3",
    }


def test_broken_transform_is_refused_at_save_with_the_line(api, receiver):
    answer = api.post(
        "/webhooks",
        {
            "name": "Bad",
            "url": receiver.url(),
            "events": ["*"],
            "transform": {"text": "{{ data.title "},
        },
    )
    assert answer.status_code == 400
    assert answer.json["error"]["code"] == "invalid_transform"
    assert (
        "line 1" in answer.json["error"]["message"]
        and "transform" in answer.json["error"]["fields"]
    )
    assert api.get("/webhooks").json["data"] == []


def test_render_error_fails_the_attempt_once_without_retry(api, receiver, service):
    api.create_webhook(receiver.url(), events=["task.*"], transform={"x": "{{ data.n / 0 }}"})
    event = api.publish("task.failed", {"n": 1})

    [delivery] = service.run_until(api.ended(event["id"]))
    assert delivery["status"] == "failed" and delivery["attempt_count"] == 1
    assert delivery["last_error"].startswith("transform failed:")
    assert receiver.requests == []


def test_unknown_template_and_missing_params_are_refused(api, receiver):
    unknown = api.post("/webhooks", {"name": "x", "url": receiver.url(), "template": "teams"})
    missing = api.post("/webhooks", {"name": "x", "url": receiver.url(), "template": "jira"})
    assert unknown.status_code == 400 and "teams" in unknown.json["error"]["message"]
    assert missing.status_code == 400 and "project_key" in missing.json["error"]["message"]
