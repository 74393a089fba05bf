"""When deliveries fail: notifications, auto-disable, recover, replay-missed, retention."""

from __future__ import annotations

import time
from datetime import UTC, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.mailbox import free_port
from webhooks import notifications, reconciler, retention, services
from webhooks.config import Settings
from webhooks.models import (
    Attempt,
    BulkJob,
    Delivery,
    Event,
    Notification,
    Webhook,
    db,
    utcnow,
)

PUBLIC = "https://hooks.acme.test"


@pytest.fixture
def knobs(request) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Configuration a test sets with `@pytest.mark.parametrize("knobs", [{…}], indirect=True)`."""
    return getattr(request, "param", {})


@pytest.fixture
def config(config, mailbox, knobs):  # type: ignore[no-untyped-def]
    """Retries in a fraction of a second, a real SMTP server, and the test's own knobs."""
    config.update(
        {
            "WEBHOOK_RETRY_SCHEDULE": "0,0.2",
            "SMTP_URL": mailbox.url,
            "NOTIFY_FROM": "webhooks@acme.test",
            "PUBLIC_URL": PUBLIC,
            **knobs,
        }
    )
    return config


@pytest.fixture
def alerts(receivers) -> Any:  # type: ignore[no-untyped-def]
    """The alert URL's receiver (a Slack incoming webhook, as far as we are concerned)."""
    return receivers()


@pytest.fixture
def notify(api, alerts) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The workspace is told by e-mail and at the alert URL."""
    body = {"emails": ["ops@acme.test", "oncall@acme.test"], "alert_url": alerts.url("/T0/B0/x")}
    response = api.put("/notifications", body)
    assert response.status_code == 200, response.json
    return response.json


def rows(app, model, *where):  # type: ignore[no-untyped-def]
    with app.app_context():
        found = db.session.scalars(select(model).where(*where)).all()
        db.session.expunge_all()
        return found


def sent(app) -> list[Notification]:  # type: ignore[no-untyped-def]
    return rows(app, Notification, Notification.status != notifications.HELD)


def normal(text: str) -> str:
    return " ".join(text.split())


# -- notifications ------------------------------------------------------------------------------


def test_exhausted_delivery_sends_one_email_and_one_alert_naming_the_webhook(
    app, api, webhook, receiver, notify, mailbox, alerts, service
):
    receiver.answer(500)
    event = api.publish()

    service.run_until(lambda: mailbox.messages and alerts.requests)

    [mail] = mailbox.messages
    assert mail.sender == "webhooks@acme.test"
    assert sorted(mail.recipients) == ["oncall@acme.test", "ops@acme.test"]
    link = f"{PUBLIC}/settings/webhooks/logs?webhook_id={webhook['id']}&status=failed"
    assert "Ops" in mail.subject
    body = normal(mail.body)
    assert f"“Ops” ({webhook['id']})" in body and "failed after 2 attempts: HTTP 500" in body
    assert event["id"] in body and link in body
    [alert] = alerts.requests
    assert alert.path == "/T0/B0/x" and alert.headers["Content-Type"] == "application/json"
    text = alert.json()["text"]
    assert set(alert.json()) == {"text"}
    assert webhook["id"] in text and "Ops" in text and link.replace("&", "&amp;") in text
    # The delivery itself is as it would have been without any notification.
    [delivery] = api.deliveries()
    assert delivery["status"] == "failed" and delivery["attempt_count"] == 2
    assert {n.status for n in sent(app)} == {"sent"} and len(sent(app)) == 2


@pytest.mark.parametrize("knobs", [{"WEBHOOK_NOTIFY_INTERVAL_SECONDS": "4"}], indirect=True)
def test_later_exhaustions_within_the_interval_become_one_summary(
    app, api, webhook, receiver, notify, mailbox, alerts, service
):
    receiver.answer(500)
    first = api.publish(data={"id": "inc_1"})
    service.run_until(lambda: mailbox.messages and alerts.requests)
    told_at = mailbox.messages[0].at
    [hook] = rows(app, Webhook, Webhook.id == webhook["id"])
    quiet_from = hook.exhausted_notified_at.replace(tzinfo=UTC).timestamp()

    # Two more exhaustions inside the quiet time: nothing goes out at once.
    later = [api.publish(data={"id": f"inc_{n}"}) for n in (2, 3)]
    service.run_until(api.ended(*[e["id"] for e in later]))
    service.tick()
    assert time.time() - told_at < 4, "too slow to test the quiet time"
    assert len(mailbox.messages) == 1 and len(alerts.requests) == 1
    assert len(rows(app, Notification, Notification.status == notifications.HELD)) == 2

    # Once it has passed, the scheduler's pass sends one summary of both.
    service.run_until(lambda: len(mailbox.messages) == 2 and len(alerts.requests) == 2)
    summary = mailbox.messages[1]
    assert summary.at - quiet_from >= 3.9  # the quiet time began when the first was told
    assert summary.subject == "Webhook “Ops”: 2 more deliveries failed"
    assert webhook["id"] in summary.body and f"webhook_id={webhook['id']}" in summary.body
    assert "2 more deliveries" in alerts.requests[1].json()["text"]
    assert not rows(app, Notification, Notification.status == notifications.HELD)
    assert first["id"] in mailbox.messages[0].body


def test_test_deliveries_neither_notify_nor_count(
    app, api, webhook, receiver, notify, mailbox, service
):
    receiver.answer(500)
    test = api.post(f"/webhooks/{webhook['id']}/test", {"type": "incident.created"}).json
    service.run_until(api.delivery_ended(test["delivery_id"]))
    service.tick()

    assert not mailbox.messages and not sent(app)
    [hook] = rows(app, Webhook, Webhook.id == webhook["id"])
    assert hook.failing_since is None


def test_a_success_ends_the_failing_streak(app, api, webhook, receiver, service):
    receiver.answer(500)
    failed = api.publish(data={"id": "inc_1"})
    service.run_until(api.ended(failed["id"]))
    assert rows(app, Webhook)[0].failing_since is not None

    receiver.answer(200)
    ok = api.publish(data={"id": "inc_2"})
    service.run_until(api.ended(ok["id"]))

    assert rows(app, Webhook)[0].failing_since is None


def test_410_disables_the_webhook_and_says_so(
    app, api, webhook, receiver, notify, mailbox, alerts, service
):
    receiver.answer(410)
    api.publish()

    service.run_until(lambda: mailbox.messages and alerts.requests)

    hook = api.get(f"/webhooks/{webhook['id']}").json
    assert hook["active"] is False and "410 Gone" in hook["disabled_reason"]
    [mail] = mailbox.messages
    assert mail.subject == "Webhook “Ops” was disabled"
    assert "410 Gone" in mail.body and f"{PUBLIC}/settings/webhooks/{webhook['id']}" in mail.body
    assert "was disabled" in alerts.requests[0].json()["text"]


@pytest.mark.parametrize(
    "knobs",
    [{"SMTP_URL": f"smtp://127.0.0.1:{free_port()}", "WEBHOOK_NOTIFY_RESEND_SECONDS": "1"}],
    indirect=True,
)
def test_smtp_down_is_recorded_as_failed_and_never_touches_the_delivery(
    app, api, webhook, receiver, notify, alerts, service
):
    receiver.answer(500)
    api.publish()

    def email_given_up() -> Notification | None:
        found = rows(app, Notification, Notification.channel == "email")
        return found[0] if found and found[0].attempts == notifications.MAX_TRIES else None

    # Tried at once, then again by the scheduler's pass, 3 tries in all.
    email = service.run_until(email_given_up)
    service.tick()
    [email] = rows(app, Notification, Notification.channel == "email")
    assert email.status == "failed" and email.attempts == 3
    assert "Connection refused" in email.error
    [alert] = rows(app, Notification, Notification.channel == "alert_url")
    assert alert.status == "sent" and len(alerts.requests) == 1
    [delivery] = api.deliveries()
    assert delivery["status"] == "failed" and delivery["last_error"] == "HTTP 500"
    assert delivery["attempt_count"] == 2


def test_notification_settings_are_checked(api, workspace, app):
    assert api.get("/notifications").json == {"emails": [], "alert_url": None}

    bad = api.put("/notifications", {"emails": ["ops@acme.test", "not an address"]})
    assert bad.status_code == 400 and bad.json["error"]["code"] == "validation_error"
    assert "not an address" in bad.json["error"]["message"]
    many = api.put("/notifications", {"emails": [f"u{n}@acme.test" for n in range(21)]})
    assert many.status_code == 400 and "at most 20" in many.json["error"]["message"]
    private = api.put("/notifications", {"alert_url": "https://10.0.0.1/hook"})
    assert private.status_code == 400
    assert private.json["error"]["code"] == "target_not_allowed"
    assert "10.0.0.1 is a private address" in private.json["error"]["fields"]["alert_url"]
    plain = api.put("/notifications", {"alert_url": "http://example.com/hook"})
    assert plain.json["error"]["code"] == "invalid_url"
    assert api.get("/notifications").json == {"emails": [], "alert_url": None}

    saved = api.put("/notifications", {"emails": ["Ops@acme.test", "ops@acme.test"]})
    assert saved.status_code == 200 and saved.json == {
        "emails": ["Ops@acme.test"],
        "alert_url": None,
    }
    assert api.get("/notifications").json["emails"] == ["Ops@acme.test"]


# -- auto-disable, recover ------------------------------------------------------------------------


@pytest.mark.parametrize("knobs", [{"WEBHOOK_DISABLE_AFTER_HOURS": "0.0003"}], indirect=True)
def test_failing_for_the_window_disables_then_recover_delivers_each_failed_event_once(
    app, api, webhook, receiver, notify, mailbox, service
):
    began = utcnow().isoformat() + "Z"
    receiver.answer(500)
    failed_events = []
    deadline = time.monotonic() + 20
    while api.get(f"/webhooks/{webhook['id']}").json["active"]:
        assert time.monotonic() < deadline, "never disabled"
        event = api.publish(data={"id": f"inc_{len(failed_events)}"})
        failed_events.append(event["id"])
        service.run_until(api.ended(event["id"]))  # the window is about a second (0.0003 h)

    hook = api.get(f"/webhooks/{webhook['id']}").json
    assert hook["disabled_reason"].startswith("Disabled on ")
    assert "deliveries kept failing for" in hook["disabled_reason"]
    assert len(failed_events) >= 2
    service.run_until(lambda: any("disabled" in m.subject for m in mailbox.messages))
    disabled_mail = [m for m in mailbox.messages if "disabled" in m.subject][0]
    assert normal(hook["disabled_reason"]) in normal(disabled_mail.body)
    assert f"webhook_id={webhook['id']}&status=failed" in disabled_mail.body

    # Disabled: no bulk action until it is turned on again.
    refused = api.post(f"/webhooks/{webhook['id']}/recover", {"since": began})
    assert refused.status_code == 409 and refused.json["error"]["code"] == "webhook_inactive"

    receiver.answer(200)
    before = len(receiver.requests)
    assert api.patch(f"/webhooks/{webhook['id']}", {"active": True}).json["active"] is True
    started = api.post(f"/webhooks/{webhook['id']}/recover", {"since": began})
    assert started.status_code == 202, started.json
    assert started.json["count"] == len(failed_events)

    job = service.run_until(api.job_done(started.json["job_id"]))
    assert job["status"] == "done" and job["done"] == job["total"] == len(failed_events)
    assert job["kind"] == "recover" and job["webhook_id"] == webhook["id"]
    service.run_until(lambda: len(receiver.requests) - before >= len(failed_events))
    service.tick()
    recovered = receiver.requests[before:]
    assert sorted(r.headers["webhook-id"] for r in recovered) == sorted(failed_events)
    kinds = [d["kind"] for d in api.deliveries(status="succeeded")]
    assert kinds == ["recover"] * len(failed_events)

    again = api.post(f"/webhooks/{webhook['id']}/recover", {"since": began})
    assert again.status_code == 202 and again.json["count"] == 0
    assert api.get(f"/jobs/{again.json['job_id']}").json["status"] == "done"
    service.tick()
    assert len(receiver.requests) - before == len(failed_events)


def test_two_recovers_at_once_never_double_a_delivery(app, api, webhook, receiver, service):
    receiver.answer(500)
    event = api.publish()
    service.run_until(api.ended(event["id"]))
    since = (utcnow() - timedelta(minutes=5)).isoformat()

    # Both are asked before either runs; the second finds the first one's delivery pending.
    first = api.post(f"/webhooks/{webhook['id']}/recover", {"since": since}).json
    second = api.post(f"/webhooks/{webhook['id']}/recover", {"since": since}).json
    assert first["count"] == second["count"] == 1
    service.run_until(api.job_done(first["job_id"]))
    done = service.run_until(api.job_done(second["job_id"]))

    assert done["status"] == "done" and done["done"] == done["total"] == 0
    [recovered] = rows(app, Delivery, Delivery.kind == "recover")
    assert recovered.event_id == event["id"]


def test_recover_window_and_input_are_checked(api, webhook):
    path = f"/webhooks/{webhook['id']}/recover"
    assert api.post(path, {}).json["error"]["code"] == "validation_error"
    assert api.post(path, {"since": "yesterday"}).json["error"]["code"] == "validation_error"
    backwards = api.post(path, {"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"})
    assert backwards.status_code == 400 and "until" in backwards.json["error"]["fields"]
    assert (
        api.post("/webhooks/wh_missing/recover", {"since": "2030-01-01T00:00:00Z"}).status_code
        == 404
    )


# -- replay-missed --------------------------------------------------------------------------------


def test_replay_missed_after_a_pause_delivers_exactly_what_was_published_meanwhile(
    app, api, receiver, service
):
    hook = api.post(
        "/webhooks", {"name": "Incidents", "url": receiver.url(), "events": ["incident.*"]}
    ).json
    since = utcnow().isoformat() + "Z"
    before = api.publish(data={"id": "inc_before"})
    service.run_until(api.ended(before["id"]))
    api.patch(f"/webhooks/{hook['id']}", {"active": False})

    missed = [api.publish(data={"id": f"inc_paused_{n}"}) for n in range(3)]
    assert all(e["delivery_count"] == 0 for e in missed)
    other_type = api.publish("task.started", {"id": "t1"})
    test = api.post(f"/webhooks/{hook['id']}/test", {"type": "incident.created"}).json
    service.run_until(api.ended(test["event"]["id"]))
    refused = api.post(f"/webhooks/{hook['id']}/replay-missed", {"since": since})
    assert refused.status_code == 409 and refused.json["error"]["code"] == "webhook_inactive"

    api.patch(f"/webhooks/{hook['id']}", {"active": True})
    after = api.publish(data={"id": "inc_after"})
    service.run_until(api.ended(after["id"]))
    count_before = len(receiver.requests)
    started = api.post(f"/webhooks/{hook['id']}/replay-missed", {"since": since})
    assert started.status_code == 202 and started.json["count"] == 3

    job = service.run_until(api.job_done(started.json["job_id"]))
    assert job["done"] == job["total"] == 3 and job["kind"] == "replay"
    service.run_until(lambda: len(receiver.requests) >= count_before + 3)
    service.tick()
    replayed = receiver.requests[count_before:]
    assert sorted(r.headers["webhook-id"] for r in replayed) == sorted(e["id"] for e in missed)
    assert other_type["id"] not in {r.headers["webhook-id"] for r in receiver.requests}
    assert {d["kind"] for d in api.deliveries(webhook_id=hook["id"])} == {
        "event",
        "test",
        "replay",
    }
    again = api.post(f"/webhooks/{hook['id']}/replay-missed", {"since": since}).json
    assert again["count"] == 0


def test_replay_starts_no_earlier_than_the_webhooks_creation(api, receiver, service):
    early = api.publish(data={"id": "inc_before_the_webhook"})
    hook = api.create_webhook(receiver.url(), name="Late")
    started = api.post(f"/webhooks/{hook['id']}/replay-missed", {"since": "2000-01-01T00:00:00Z"})
    assert started.status_code == 202 and started.json["count"] == 0
    assert early["delivery_count"] == 0


def test_jobs_are_scoped_to_the_workspace(app, api, client, webhook, receiver, service):
    from tests.conftest import Api
    from webhooks import accounts

    receiver.answer(500)
    event = api.publish()
    service.run_until(api.ended(event["id"]))
    job_id = api.post(f"/webhooks/{webhook['id']}/recover", {"since": "2000-01-01T00:00:00Z"}).json[
        "job_id"
    ]
    with app.app_context():
        _, other_key = accounts.create_workspace(db.session, "Other")
    other = Api(client, other_key)

    assert api.get(f"/jobs/{job_id}").status_code == 200
    assert other.get(f"/jobs/{job_id}").status_code == 404
    assert other.get(f"/jobs/{job_id}").json["error"]["code"] == "not_found"
    assert (
        other.post(
            f"/webhooks/{webhook['id']}/recover", {"since": "2000-01-01T00:00:00Z"}
        ).status_code
        == 404
    )


# -- retention ------------------------------------------------------------------------------------


def _age(app, days: float, *, deliveries=(), events=(), notes=()) -> None:  # type: ignore[no-untyped-def]
    then = utcnow() - timedelta(days=days)
    with app.app_context():
        if deliveries:
            db.session.execute(
                update(Delivery).where(Delivery.id.in_(deliveries)).values(created_at=then)
            )
            db.session.execute(
                update(Attempt).where(Attempt.delivery_id.in_(deliveries)).values(started_at=then)
            )
        if events:
            db.session.execute(update(Event).where(Event.id.in_(events)).values(created_at=then))
        if notes:
            db.session.execute(
                update(Notification).where(Notification.id.in_(notes)).values(created_at=then)
            )
        db.session.commit()


@pytest.mark.parametrize("knobs", [{"WEBHOOK_RETENTION_DAYS": "30"}], indirect=True)
def test_retention_purges_exactly_what_is_older_than_the_window(
    app, api, webhook, receiver, service, monkeypatch
):
    monkeypatch.setattr(retention, "BATCH", 2)  # several batches, each its own transaction
    old = [api.publish(data={"id": f"inc_old_{n}"}) for n in range(5)]
    kept_pending = api.publish(data={"id": "inc_pending"})
    recent = api.publish(data={"id": "inc_recent"})
    for e in (*old, kept_pending, recent):
        service.run_until(api.ended(e["id"]))
    api.patch(f"/webhooks/{webhook['id']}", {"active": False})
    lonely = api.publish("approval.requested", {"id": "a1"})  # published while paused: no delivery
    assert lonely["delivery_count"] == 0
    api.patch(f"/webhooks/{webhook['id']}", {"active": True})

    ids = {
        e["id"]: api.get(f"/events/{e['id']}").json["deliveries"][0]["id"]
        for e in (*old, kept_pending, recent)
    }
    with app.app_context():  # a delivery still waiting for its next retry, however old
        db.session.execute(
            update(Delivery)
            .where(Delivery.id == ids[kept_pending["id"]])
            .values(status="pending", next_attempt_at=utcnow() + timedelta(hours=1))
        )
        db.session.commit()
    old_ids = [e["id"] for e in old]
    _age(app, 31, deliveries=[ids[e] for e in old_ids] + [ids[kept_pending["id"]]])
    _age(app, 31, events=[*old_ids, kept_pending["id"], lonely["id"]])
    _age(app, 29, deliveries=[ids[recent["id"]]], events=[recent["id"]])

    with app.app_context():
        purged = retention.purge(db.session, Settings.from_config(app.config))

    assert purged.finished and purged.deliveries == 5 and purged.attempts == 5
    assert purged.events == 6  # the five old ones and the one nobody got
    remaining = {d.id for d in rows(app, Delivery)}
    assert remaining == {ids[kept_pending["id"]], ids[recent["id"]]}
    assert {e.id for e in rows(app, Event)} == {kept_pending["id"], recent["id"]}
    assert {a.delivery_id for a in rows(app, Attempt)} == remaining


@pytest.mark.parametrize(
    "knobs", [{"WEBHOOK_RETENTION_DAYS": "1", "WEBHOOK_RETENTION_INTERVAL": "60"}], indirect=True
)
def test_the_scheduler_runs_retention_at_most_once_per_interval(app, api, webhook, service):
    first = api.publish(data={"id": "inc_1"})
    service.run_until(api.ended(first["id"]))
    delivery_id = api.get(f"/events/{first['id']}").json["deliveries"][0]["id"]
    _age(app, 2, deliveries=[delivery_id], events=[first["id"]])

    services.of(app).redis.delete(retention.GATE_KEY)  # as if the interval had passed
    service.tick()  # a full pass purges
    assert not rows(app, Delivery) and not rows(app, Event)

    second = api.publish(data={"id": "inc_2"})
    service.run_until(api.ended(second["id"]))
    delivery_id = api.get(f"/events/{second['id']}").json["deliveries"][0]["id"]
    _age(app, 2, deliveries=[delivery_id], events=[second["id"]])
    service.tick()  # within the interval: nothing more
    assert len(rows(app, Delivery)) == 1


def test_bulk_jobs_survive_a_lost_hand_off(app, api, webhook, receiver, service):
    receiver.answer(500)
    event = api.publish()
    service.run_until(api.ended(event["id"]))
    receiver.answer(200)
    started = api.post(f"/webhooks/{webhook['id']}/recover", {"since": "2000-01-01T00:00:00Z"}).json
    services.of(app).redis.flushdb()  # the queued job is lost
    with app.app_context():
        db.session.execute(update(BulkJob).values(updated_at=utcnow() - timedelta(minutes=5)))
        db.session.commit()

    job = service.run_until(api.job_done(started["job_id"]))
    assert job["status"] == "done" and job["done"] == 1


def test_a_delivery_given_up_after_lost_workers_counts_as_exhausted(
    app, api, webhook, receiver, notify, mailbox, service
):
    receiver.answer(500)
    event = api.publish()
    delivery_id = api.get(f"/events/{event['id']}").json["deliveries"][0]["id"]
    with app.app_context():  # as if workers died mid-attempt twice already, and now again
        number = db.session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id)
            .values(
                lost_count=2,
                lease_token="dead",
                lease_expires_at=utcnow() - timedelta(seconds=1),
                attempt_count=Delivery.attempt_count + 1,
            )
            .returning(Delivery.attempt_count)
        ).scalar_one()
        db.session.add(  # a lease comes with its attempt in flight, as a claim writes them
            Attempt(
                delivery_id=delivery_id,
                number=number,
                request_url=webhook["url"],
                request_headers={},
                request_body="",
            )
        )
        db.session.commit()
        reconciler.expire_leases(
            db.session, Settings.from_config(app.config), services.of(app).redis
        )

    service.run_until(lambda: mailbox.messages)
    assert api.get(f"/deliveries/{delivery_id}").json["status"] == "failed"
    assert "worker lost" in mailbox.messages[0].body


def test_answers_match_the_openapi_description(client, api, webhook, receiver, service):
    from tests.test_openapi import check

    spec = client.get("/api/v1/openapi.json").json
    receiver.answer(500)
    event = api.publish()
    service.run_until(api.ended(event["id"]))
    path = f"/webhooks/{webhook['id']}"

    started = api.post(f"{path}/recover", {"since": "2000-01-01T00:00:00Z"})
    check(spec, "/webhooks/{webhook_id}/recover", "post", started)
    service.run_until(api.job_done(started.json["job_id"]))
    check(spec, "/jobs/{job_id}", "get", api.get(f"/jobs/{started.json['job_id']}"))
    check(spec, "/jobs/{job_id}", "get", api.get("/jobs/job_missing"))
    replay = api.post(f"{path}/replay-missed", {"since": "2000-01-01T00:00:00Z"})
    check(spec, "/webhooks/{webhook_id}/replay-missed", "post", replay)
    check(spec, "/notifications", "put", api.put("/notifications", {"emails": ["a@acme.test"]}))
    check(spec, "/notifications", "put", api.put("/notifications", {"emails": ["nope"]}))
    check(spec, "/notifications", "get", api.get("/notifications"))
    api.patch(path, {"active": False})
    inactive = api.post(f"{path}/replay-missed", {"since": "2000-01-01T00:00:00Z"})
    assert inactive.status_code == 409
    check(spec, "/webhooks/{webhook_id}/replay-missed", "post", inactive)
    [delivery] = [d for d in api.deliveries() if d["kind"] == "recover"]
    check(spec, "/deliveries/{delivery_id}", "get", api.get(f"/deliveries/{delivery['id']}"))
