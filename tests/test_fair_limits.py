"""Fair limits: the API's rate counts per workspace, the dashboard's costly actions per user."""

from __future__ import annotations

import pytest

from tests.conftest import Api
from tests.session import signed_in, text
from webhooks import accounts, notifications
from webhooks.models import Delivery, db


@pytest.fixture
def api_limited(config):  # type: ignore[no-untyped-def]
    config["WEBHOOK_API_RATE_LIMIT"] = "4 per minute"
    return config


def test_two_keys_of_one_workspace_share_one_budget(api_limited, app, client, workspace):
    with app.app_context():
        _, second = accounts.create_api_key(db.session, workspace["id"], "second")
        db.session.commit()
        _, other = accounts.create_workspace(db.session, "Other")
    first_key, second_key = Api(client, workspace["key"]), Api(client, second)

    answers = [first_key.get("/webhooks"), first_key.get("/webhooks")]
    answers += [second_key.get("/webhooks"), second_key.get("/webhooks")]
    refused = [first_key.get("/webhooks"), second_key.get("/webhooks")]

    assert [a.status_code for a in answers] == [200, 200, 200, 200]
    assert [r.status_code for r in refused] == [429, 429]
    assert refused[1].json["error"]["code"] == "rate_limited"
    assert int(refused[1].headers["Retry-After"]) > 0
    # Another workspace is not held back by this one's budget.
    assert Api(client, other).get("/webhooks").status_code == 200


@pytest.fixture
def dashboard_limited(config):  # type: ignore[no-untyped-def]
    config.update(
        {
            "WEBHOOK_DASHBOARD_RATE_LIMIT": "2 per minute",
            "WEBHOOK_NOTIFY_TEST_RATE_LIMIT": "1/minute",
        }
    )
    return config


def test_previews_are_limited_per_person_with_the_message_in_place(
    dashboard_limited, app, user, workspace
):
    user.get("/settings/webhooks/new")
    form = {"preview_type": "incident.created", "transform": '{"text": "{{ data.title }}"}'}

    answers = [user.post("/settings/webhooks/preview", data=form, htmx=True) for _ in range(3)]

    assert all('<pre class="code"' in a.text for a in answers[:2])
    assert answers[2].status_code == 200  # so that htmx swaps the message in
    said = text(answers[2].text)
    assert "Too many previews: at most 2 per 1 minute for each person" in said
    assert "Try again in" in said and '<pre class="code"' not in answers[2].text
    other = signed_in(app, "dev@acme.test", workspace["id"])  # a colleague
    other.get("/settings/webhooks/new")
    assert '<pre class="code"' in other.post("/settings/webhooks/preview", data=form).text


def test_test_events_are_limited_per_person(dashboard_limited, user, webhook, receiver, app):
    page = f"/settings/webhooks/{webhook['id']}"
    user.get(page)

    answers = [
        user.post(f"{page}/test", data={"type": "incident.created"}, htmx=True) for _ in range(3)
    ]

    assert ["Sending…" in a.text for a in answers] == [True, True, False]
    assert "Too many test events: at most 2 per 1 minute" in text(answers[2].text)
    with app.app_context():
        assert db.session.query(Delivery).count() == 2


def test_test_notification_goes_only_to_the_saved_settings(dashboard_limited, user, app, workspace):
    user.get("/settings/notifications")
    saved = user.post("/settings/notifications", data={"emails": "ops@acme.test", "alert_url": ""})
    assert saved.status_code == 302
    user.get("/settings/notifications")

    typed = {
        "emails": "ops@acme.test\nvictim@elsewhere.test",
        "alert_url": "https://127.0.0.1:9443/x",
    }
    answer = user.post("/settings/notifications/test", data=typed, htmx=True)
    again = user.post("/settings/notifications/test", data=typed, htmx=True)

    said = text(answer.text)
    assert "Sent to the saved settings only: save your changes first to test them." in said
    with app.app_context():
        sent = notifications.recent(db.session, workspace["id"])
    assert [(n.channel, n.target) for n in sent] == [("email", "ops@acme.test")]
    assert again.status_code == 200
    assert "Too many test notifications: at most 1 per 1 minute" in text(again.text)
    assert "ops@acme.test" in again.text  # the list is still shown under the message
