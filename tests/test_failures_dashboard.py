"""Settings › Notifications, and recover / replay from a webhook's page, through the test client."""

from __future__ import annotations

import re

import pytest

from tests.receivers import Receiver
from tests.session import Session, make_user, text


@pytest.fixture
def config(config, mailbox):  # type: ignore[no-untyped-def]
    config.update({"WEBHOOK_RETRY_SCHEDULE": "0,0.2", "SMTP_URL": mailbox.url})
    return config


@pytest.fixture
def alerts(receivers) -> Receiver:  # type: ignore[no-untyped-def]
    return receivers()


def failed_event(api, receiver, service, status: int = 500) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    """A webhook at the receiver, and an event whose delivery to it failed for good."""
    hook = api.create_webhook(receiver.url())
    receiver.answer(status)
    event = api.publish()
    ended = service.run_until(api.ended(event["id"]))
    assert all(d["status"] == "failed" for d in ended)
    receiver.answer(200)
    return hook, event


def test_notifications_page_saves_and_shows_errors_next_to_fields(user, api):
    page = user.get("/settings/notifications")
    assert page.status_code == 200
    assert re.search(
        r'<a href="/settings/notifications" aria-current="page">Notifications</a>', page.text
    )
    for label in ("E-mail addresses", "Alert URL", "Save", "Send test notification"):
        assert label in page.text
    assert "Nothing sent yet" in text(page.text)

    bad = user.post(
        "/settings/notifications", data={"emails": "ops@acme.test\nnot-an-address", "alert_url": ""}
    )
    assert bad.status_code == 422
    assert "not an e-mail address: &#39;not-an-address&#39;" in bad.text
    assert 'id="notify-emails" name="emails"' in bad.text and 'aria-invalid="true"' in bad.text
    private = user.post(
        "/settings/notifications", data={"emails": "", "alert_url": "https://10.0.0.1/hook"}
    )
    assert private.status_code == 422 and "10.0.0.1 is a private address" in private.text
    assert api.get("/notifications").json == {"emails": [], "alert_url": None}

    saved = user.post(
        "/settings/notifications",
        data={"emails": "ops@acme.test, dev@acme.test", "alert_url": "https://127.0.0.1/hook"},
    )
    assert saved.status_code == 302
    assert "Notification settings saved." in user.get("/settings/notifications").text
    assert api.get("/notifications").json == {
        "emails": ["ops@acme.test", "dev@acme.test"],
        "alert_url": "https://127.0.0.1/••••",  # its path is a credential
    }


def test_send_test_notification_shows_what_was_sent_and_what_failed(
    user, api, mailbox, alerts, service
):
    alerts.answer(500)
    user.get("/settings/notifications")
    user.post(
        "/settings/notifications",
        data={"emails": "ops@acme.test", "alert_url": alerts.url("/T0/B0/secret")},
    )

    sending = user.post("/settings/notifications/test", htmx=True)
    assert sending.status_code == 200 and "Sending…" in sending.text
    assert 'hx-get="/settings/notifications/recent"' in sending.text  # polls while sending

    service.run_until(lambda: mailbox.messages and alerts.requests)
    done = user.get("/settings/notifications/recent", headers={"HX-Request": "true"})
    assert "hx-get" not in done.text  # nothing pending: polling stops
    shown = text(done.text)
    assert "Sent" in shown and "Failed" in shown and "HTTP 500" in shown
    assert f"https://127.0.0.1:{alerts.port}/…" in shown and "secret" not in done.text
    assert mailbox.messages[0].subject == "Test notification from CloudThinker Webhooks"
    assert "Test notification" in alerts.requests[0].json()["text"]
    assert "HTTP 500" in text(user.get("/settings/notifications").text)


def test_send_test_notification_without_settings_says_what_to_do(user):
    user.get("/settings/notifications")
    answer = user.post("/settings/notifications/test", htmx=True)
    assert "Add an e-mail address or an alert URL" in answer.text


def test_recover_and_replay_forms_show_progress_until_done(user, api, receiver, service):
    hook, event = failed_event(api, receiver, service)
    page = user.get(f"/settings/webhooks/{hook['id']}")
    assert "Recover failed" in page.text and "Replay missed" in page.text
    assert page.text.count('type="datetime-local"') == 3

    started = user.post(
        f"/settings/webhooks/{hook['id']}/recover", data={"since": "2000-01-01T00:00"}, htmx=True
    )
    assert "<progress" in started.text and "Queued" in started.text
    job_url = re.search(r'hx-get="(/settings/webhooks/jobs/job_[^"]+)"', started.text).group(1)
    service.run_until(lambda: "Done" in user.get(job_url).text)
    finished = user.get(job_url)
    assert "1 of 1 deliveries created" in text(finished.text) and "hx-get" not in finished.text
    assert 'value="1"' in finished.text
    service.run_until(lambda: len(receiver.requests) >= 3)
    assert receiver.requests[-1].headers["webhook-id"] == event["id"]

    replay = user.post(
        f"/settings/webhooks/{hook['id']}/replay", data={"since": "2000-01-01T00:00"}, htmx=True
    )
    assert "nothing to deliver" in text(replay.text) and "Done" in replay.text

    user.post(f"/settings/webhooks/{hook['id']}/active", data={}, htmx=True)  # pause
    refused = user.post(
        f"/settings/webhooks/{hook['id']}/recover", data={"since": "2000-01-01T00:00"}, htmx=True
    )
    assert "is paused; turn it on" in refused.text and "<progress" not in refused.text
    missing = user.post(f"/settings/webhooks/{hook['id']}/replay", data={"since": ""}, htmx=True)
    assert "Choose the since time" in missing.text


def test_turning_a_disabled_webhook_on_offers_recover_since_then(user, api, receiver, service):
    hook, event = failed_event(api, receiver, service, status=410)
    page = text(user.get(f"/settings/webhooks/{hook['id']}").text)
    assert "Disabled" in page and "the endpoint answered 410 Gone" in page

    resumed = user.post(f"/settings/webhooks/{hook['id']}/active", data={"active": "on"}, htmx=True)
    assert "Active" in resumed.text and "Recover failed since then" in resumed.text
    assert "1 failed delivery since" in text(resumed.text)
    since = re.search(r'name="since" value="([^"]+)"', resumed.text).group(1)

    started = user.post(
        f"/settings/webhooks/{hook['id']}/recover", data={"since": since}, htmx=True
    )
    assert "<progress" in started.text
    service.run_until(lambda: len(receiver.requests) >= 2)
    assert receiver.requests[-1].headers["webhook-id"] == event["id"]


def test_resuming_a_paused_webhook_with_nothing_failed_offers_nothing(user, api, receiver):
    hook = api.create_webhook(receiver.url())
    user.get(f"/settings/webhooks/{hook['id']}")
    user.post(f"/settings/webhooks/{hook['id']}/active", data={}, htmx=True)
    resumed = user.post(f"/settings/webhooks/{hook['id']}/active", data={"active": "on"}, htmx=True)
    assert "Active" in resumed.text and "Recover failed since then" not in resumed.text


def test_turning_a_paused_webhook_on_offers_to_replay_what_it_missed(user, api, receiver, service):  # type: ignore[no-untyped-def]
    hook = api.create_webhook(receiver.url(), events=["incident.*"])
    user.post(f"/settings/webhooks/{hook['id']}/active", data={}, htmx=True)  # pause
    missed = [api.publish(data={"id": f"inc_{n}"})["id"] for n in range(2)]
    api.publish("task.started", {"id": "t_1"})  # not its type: not missed

    resumed = user.post(f"/settings/webhooks/{hook['id']}/active", data={"active": "on"}, htmx=True)
    assert "2 events published while it was off" in text(resumed.text)
    assert "Replay missed since then" in resumed.text
    assert "Recover failed since then" not in resumed.text  # nothing failed
    form = re.search(r'hx-post="([^"]+/replay)".*?name="since" value="([^"]+)"', resumed.text, re.S)
    started = user.post(form.group(1), data={"since": form.group(2)}, htmx=True)
    assert "<progress" in started.text
    service.run_until(lambda: len(receiver.requests) >= 2)
    assert sorted(r.headers["webhook-id"] for r in receiver.requests) == sorted(missed)

    user.post(f"/settings/webhooks/{hook['id']}/active", data={}, htmx=True)
    again = user.post(f"/settings/webhooks/{hook['id']}/active", data={"active": "on"}, htmx=True)
    assert "published while it was off" not in text(again.text)  # nothing missed this time


def test_another_workspaces_job_is_404(app, user, api, receiver, service):
    hook, _ = failed_event(api, receiver, service)
    job_id = api.post(f"/webhooks/{hook['id']}/recover", {"since": "2000-01-01T00:00:00Z"}).json[
        "job_id"
    ]
    assert user.get(f"/settings/webhooks/jobs/{job_id}").status_code == 200
    make_user(app, "other@acme.test", "Other")
    other = Session(app.test_client())
    other.login("other@acme.test", "correct horse")
    assert other.get(f"/settings/webhooks/jobs/{job_id}").status_code == 404
    assert other.get("/settings/notifications").status_code == 200
