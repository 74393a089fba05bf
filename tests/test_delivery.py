"""Delivering: signed POSTs, the retry schedule, pause, test events and redelivery."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook

from tests.receivers import Reply


def verify_signature(payload: str, signature: str, secret: str) -> bool:
    """The product documentation's verifier, word for word."""
    expected = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"sha256={expected}", signature)


def test_event_arrives_signed_both_ways(api, webhook, receiver, service):
    event = api.publish(data={"id": "inc_42", "title": "Disk full", "note": "naïve ✓"})
    assert event["delivery_count"] == 1

    service.run_until(lambda: receiver.requests)
    got = receiver.requests[0]
    secret = api.get(f"/webhooks/{webhook['id']}/secret").json["secret"]
    assert secret == webhook["secret"] and secret.startswith("whsec_")
    assert got.json() == {
        "id": event["id"],
        "type": "incident.created",
        "timestamp": event["timestamp"],
        "workspace_id": event["workspace_id"],
        "data": {"id": "inc_42", "title": "Disk full", "note": "naïve ✓"},
    }
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"].startswith("CloudThinker-Webhooks/")
    assert got.headers["X-CloudThinker-Event"] == "incident.created"
    assert got.headers["X-CloudThinker-Delivery"].startswith("dlv_")
    assert got.headers["webhook-id"] == event["id"]
    assert verify_signature(got.body.decode(), got.headers["X-CloudThinker-Signature"], secret)
    verified = StandardWebhook(secret).verify(got.body, got.headers)
    assert verified["id"] == event["id"]

    [delivery] = service.run_until(api.ended(event["id"]))
    assert delivery["status"] == "succeeded"
    assert delivery["attempt_count"] == 1 and delivery["next_attempt_at"] is None
    attempt = delivery["attempts"][0]
    assert attempt["response"]["status_code"] == 200 and attempt["response"]["body"] == "ok"
    assert attempt["request"]["body"] == got.body.decode()
    assert attempt["request"]["headers"]["webhook-id"] == event["id"]


def test_failing_six_times_makes_six_attempts_then_failed(api, webhook, receiver, service):
    receiver.answer(500)
    event = api.publish()

    [delivery] = service.run_until(api.ended(event["id"]), timeout=30)

    assert delivery["status"] == "failed"
    assert [a["number"] for a in delivery["attempts"]] == [1, 2, 3, 4, 5, 6]
    assert len(receiver.requests) == 6
    assert {r.headers["X-CloudThinker-Delivery"] for r in receiver.requests} == {delivery["id"]}
    assert {r.headers["webhook-id"] for r in receiver.requests} == {event["id"]}
    assert delivery["last_status_code"] == 500 and delivery["last_error"] == "HTTP 500"
    times = [r.at for r in receiver.requests]
    # WEBHOOK_RETRY_SCHEDULE=0,1,1,1,1,1: each retry waits at least its second.
    assert all(b - a >= 0.9 for a, b in zip(times, times[1:], strict=False))


def test_failing_twice_then_ok_succeeds_with_three_attempts(api, webhook, receiver, service):
    receiver.answer(503, 502, 200)
    event = api.publish()

    [delivery] = service.run_until(api.ended(event["id"]), timeout=20)

    assert delivery["status"] == "succeeded"
    assert [a["response"]["status_code"] for a in delivery["attempts"]] == [503, 502, 200]
    assert len(receiver.requests) == 3
    # The envelope is built once: every retry carries the same body.
    assert len({r.body for r in receiver.requests}) == 1


def test_no_content_is_success(api, webhook, receiver, service):
    receiver.answer(Reply(status=204, body=b""))
    event = api.publish()
    [delivery] = service.run_until(api.ended(event["id"]))
    assert delivery["status"] == "succeeded"


def test_redirect_is_a_failure_and_not_followed(api, webhook, receiver, service, config):
    receiver.answer(Reply(status=302, headers={"Location": receiver.url("/elsewhere")}), 200)
    event = api.publish()

    delivery = service.run_until(lambda: (d := api.delivery_of(event["id"]))["attempts"] and d)

    first = delivery["attempts"][0]
    assert first["response"]["status_code"] == 302
    assert "redirect" in first["error"] and "not followed" in first["error"]
    assert [r.path for r in receiver.requests] == ["/hook"]


@pytest.mark.parametrize("scenario", ["timeout"])
def test_slow_target_times_out_as_a_failure(api, webhook, receiver, service, scenario):
    receiver.answer(Reply(status=200, delay=3.5), 200)
    event = api.publish()

    delivery = service.run_until(
        lambda: (d := api.delivery_of(event["id"]))["attempts"] and d, timeout=20
    )

    first = delivery["attempts"][0]
    assert first["response"] is None
    assert "timed out after 2 s" in first["error"]
    assert 1900 <= first["duration_ms"] < 3000


def test_paused_webhook_gets_nothing(api, webhook, receiver, service):
    assert api.patch(f"/webhooks/{webhook['id']}", {"active": False}).json["active"] is False

    event = api.publish()

    assert event["delivery_count"] == 0
    service.tick()
    assert receiver.requests == []
    assert api.get(f"/events/{event['id']}").json["deliveries"] == []
    assert api.get("/deliveries").json["data"] == []


def test_retry_due_while_paused_is_not_sent(api, webhook, receiver, service):
    receiver.answer(500)
    event = api.publish()
    service.run_until(lambda: receiver.requests)
    api.patch(f"/webhooks/{webhook['id']}", {"active": False})

    [delivery] = service.run_until(api.ended(event["id"]), timeout=10)

    assert delivery["status"] == "failed"
    assert "inactive" in delivery["last_error"]
    assert len(receiver.requests) == 1


def test_test_event_goes_to_that_webhook_alone_once(api, webhook, receiver, tls_context, service):
    api.create_webhook(receiver.url("/other"), name="Other")
    api.patch(f"/webhooks/{webhook['id']}", {"active": False})
    receiver.answer(500)

    sent = api.post(f"/webhooks/{webhook['id']}/test", {"type": "finding.created"})

    assert sent.status_code == 202
    assert sent.json["event"]["type"] == "finding.created"
    delivery = service.run_until(api.delivery_ended(sent.json["delivery_id"]))
    assert delivery["status"] == "failed" and delivery["attempt_count"] == 1
    assert [r.path for r in receiver.requests] == ["/hook"]
    assert receiver.requests[0].json()["data"]["severity"]
    assert api.get(f"/events/{sent.json['event']['id']}").json["delivery_count"] == 1


def test_unknown_test_event_type_is_refused(api, webhook):
    response = api.post(f"/webhooks/{webhook['id']}/test", {"type": "nope.nothing"})
    assert response.status_code == 400
    assert response.json["error"]["code"] == "unknown_event_type"


def test_redeliver_sends_the_same_event_again(api, webhook, receiver, service):
    event = api.publish()
    [first] = service.run_until(api.ended(event["id"]))

    again = api.post(f"/deliveries/{first['id']}/redeliver")

    assert again.status_code == 202 and again.json["id"] != first["id"]
    service.run_until(lambda: len(receiver.requests) >= 2)
    a, b = receiver.requests
    assert a.headers["webhook-id"] == b.headers["webhook-id"] == event["id"]
    assert a.headers["X-CloudThinker-Delivery"] != b.headers["X-CloudThinker-Delivery"]
    assert json.loads(a.body) == json.loads(b.body)


def test_rotation_signs_with_both_secrets_for_a_day(api, webhook, receiver, service):
    old = webhook["secret"]
    new = api.post(f"/webhooks/{webhook['id']}/rotate-secret").json["secret"]
    assert new != old and new.startswith("whsec_")

    api.publish()
    service.run_until(lambda: receiver.requests)

    got = receiver.requests[0]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    StandardWebhook(old).verify(got.body, got.headers)
    StandardWebhook(new).verify(got.body, got.headers)
    assert verify_signature(got.body.decode(), got.headers["X-CloudThinker-Signature"], new)


def test_unsigned_webhook_sends_no_signature(api, receiver, service):
    hook = api.create_webhook(receiver.url(), name="Open", events=["task.*"], secret=None)
    assert hook["has_secret"] is False and hook["secret"] is None

    api.publish("task.failed")
    service.run_until(lambda: receiver.requests)

    assert "X-CloudThinker-Signature" not in receiver.requests[0].headers
    assert "webhook-signature" not in receiver.requests[0].headers
    assert receiver.requests[0].headers["webhook-id"].startswith("evt_")


def test_custom_headers_are_sent_and_masked_in_the_log(api, receiver, service):
    api.create_webhook(
        receiver.url(),
        name="Jira",
        events=["incident.*"],
        headers={"Authorization": "Basic c2VjcmV0", "X-Team": "ops"},
    )
    event = api.publish()
    [delivery] = service.run_until(api.ended(event["id"]))

    got = receiver.requests[0]
    assert got.headers["Authorization"] == "Basic c2VjcmV0" and got.headers["X-Team"] == "ops"
    logged = delivery["attempts"][0]["request"]["headers"]
    assert logged["X-Team"] == "ops" and "c2VjcmV0" not in json.dumps(logged)


def test_gone_disables_the_webhook(api, webhook, receiver, service):
    receiver.answer(410)
    event = api.publish()

    [delivery] = service.run_until(api.ended(event["id"]))

    assert delivery["status"] == "failed" and delivery["attempt_count"] == 1
    shown = api.get(f"/webhooks/{webhook['id']}").json
    assert shown["active"] is False and "410 Gone" in shown["disabled_reason"]


def test_retry_after_is_honoured_up_to_twice_the_delay(api, webhook, receiver, service):
    receiver.answer(Reply(status=429, headers={"Retry-After": "60"}), 200)
    event = api.publish()

    service.run_until(lambda: receiver.requests)
    delivery = service.run_until(
        lambda: (d := api.delivery_of(event["id"]))["attempts"][0]["outcome"] != "in_flight" and d
    )

    # Scheduled delay 1 s; Retry-After asks 60 s; honoured up to 2 s.
    assert delivery["status"] == "pending"
    service.run_until(lambda: len(receiver.requests) == 2, timeout=10)
    gap = receiver.requests[1].at - receiver.requests[0].at
    assert 1.8 <= gap < 10
