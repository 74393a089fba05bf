"""Flow control in the dashboard and the metrics: the two fields, what waits and why."""

from __future__ import annotations

import re

from tests.session import text
from tests.test_dashboard import create_webhook
from tests.test_metrics import scrape, value


def test_templates_fill_the_flow_fields(user):
    slack = user.get("/settings/webhooks/new?template=slack").text
    assert re.search(r'id="rate_limit"[^>]*value="1"', slack)
    pagerduty = user.get("/settings/webhooks/new?template=pagerduty").text
    field = re.search(r'id="ordering_key"[^>]*value="([^"]*)"', pagerduty)
    assert field and "dedup" not in field.group(1) and "data.id" in field.group(1)
    plain = text(user.get("/settings/webhooks/new").text)
    assert "Rate limit" in plain and "Ordering key" in plain
    assert "one at a time, in the order their events were published" in plain


def test_a_bad_rate_limit_is_shown_at_its_field_and_the_values_are_kept(user, api):
    response = create_webhook(user, rate_limit="fast", ordering_key="{{ data.id }}")
    assert response.status_code == 422
    assert re.search(r'id="rate_limit-error"[^>]*>rate_limit must be a number', response.text)
    assert 'aria-invalid="true"' in response.text
    assert re.search(r'id="ordering_key"[^>]*value="{{ data.id }}"', response.text)
    assert re.search(r'id="rate_limit"[^>]*value="fast"', response.text)
    assert api.get("/webhooks").json["data"] == []

    broken = create_webhook(user, ordering_key="{{ data.id ")
    assert broken.status_code == 422 and 'id="ordering_key-error"' in broken.text


def test_saved_values_show_on_the_page_and_in_the_edit_form(user, api):
    response = create_webhook(user, rate_limit="2.5", ordering_key="{{ data.id }}")
    assert response.status_code == 302
    (created,) = api.get("/webhooks").json["data"]
    assert created["rate_limit"] == 2.5 and created["ordering_key"] == "{{ data.id }}"
    page = text(user.get(response.headers["Location"]).text)
    assert "at most 2.5 per second" in page and "ordered by {{ data.id }}" in page
    form = user.get(f"/settings/webhooks/{created['id']}/edit").text
    assert re.search(r'id="rate_limit"[^>]*value="2.5"', form)
    edited = user.post(
        f"/settings/webhooks/{created['id']}/edit",
        data={
            "name": "Ops",
            "url": created["url"],
            "events": created["events"],
            "secret": "",
            "secret_was": "",
            "active": "on",
            "rate_limit": "",
            "ordering_key": "",
        },
    )
    assert edited.status_code == 302, edited.text
    cleared = api.get(f"/webhooks/{created['id']}").json
    assert cleared["rate_limit"] is None and cleared["ordering_key"] is None


def test_the_pages_and_metrics_say_what_waits_and_why(user, api, client):
    hook = api.create_webhook("https://hooks.example.com/in", name="Lines", ordering_key="all")
    events = [api.publish("task.completed", {"n": n})["id"] for n in range(3)]
    deliveries = {d["event_id"]: d["id"] for d in api.deliveries(webhook_id=hook["id"])}
    first, second, third = (deliveries[e] for e in events)

    page = text(user.get(f"/settings/webhooks/{hook['id']}").text)
    assert "2 waiting for their turn" in page
    shown = user.get(f"/settings/webhooks/logs/{third}").text
    assert "Waiting for its turn" in text(shown)
    assert f'href="/settings/webhooks/logs/{second}"' in shown
    head = text(user.get(f"/settings/webhooks/logs/{first}").text)
    assert "Waiting for its turn" not in head

    samples = scrape(client)
    assert value(samples, "webhook_deliveries_waiting", reason="order") == 2
    assert value(samples, "webhook_deliveries_waiting", reason="rate_limit") == 0
    assert value(samples, "webhook_retries_scheduled") == 0
