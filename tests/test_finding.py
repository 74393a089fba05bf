"""Finding a delivery: by its id, its event's id, words of the event's title, or as retrying."""

from __future__ import annotations

from typing import Any

import pytest


def publish(api, title: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Publish a security finding with this title."""
    return api.publish("finding.created", {"title": title})


@pytest.fixture
def three_findings(api, webhook) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return [
        publish(api, "Public S3 bucket in prod-eu"),
        publish(api, "IAM user without MFA"),
        publish(api, "Public snapshot of the billing database"),
    ]


def test_an_event_id_or_a_delivery_id_finds_exactly_its_deliveries(api, three_findings) -> None:  # type: ignore[no-untyped-def]
    event = three_findings[1]
    found = api.deliveries(q=event["id"])
    assert [d["event_id"] for d in found] == [event["id"]]
    assert [d["id"] for d in api.deliveries(q=found[0]["id"])] == [found[0]["id"]]
    assert api.deliveries(q="dlv_00000000000000000000000000") == []


def test_words_find_events_whose_title_has_every_one_of_them(api, three_findings) -> None:  # type: ignore[no-untyped-def]
    by_title = {e["data"]["title"]: e["id"] for e in three_findings}
    assert {d["event_id"] for d in api.deliveries(q="public")} == {
        by_title["Public S3 bucket in prod-eu"],
        by_title["Public snapshot of the billing database"],
    }
    assert [d["event_id"] for d in api.deliveries(q="BILLING public")] == [
        by_title["Public snapshot of the billing database"]
    ]
    assert api.deliveries(q="public kubernetes") == []
    assert api.deliveries(q="  ") != []  # blank: no search at all


def test_title_search_stays_inside_the_workspace_and_ignores_titles_that_are_not_text(  # type: ignore[no-untyped-def]
    app, client, api, webhook, three_findings
) -> None:
    from tests.conftest import Api
    from webhooks import accounts
    from webhooks.models import db

    with app.app_context():
        _, other_key = accounts.create_workspace(db.session, "Other")
    other = Api(client, other_key)
    other.create_webhook(webhook["url"], name="x")
    publish(other, "Public bucket elsewhere")
    publish(api, {"nested": "public"})
    assert len(api.deliveries(q="public")) == 2
    assert len(other.deliveries(q="public")) == 1


def test_search_is_validated(api) -> None:  # type: ignore[no-untyped-def]
    response = api.get("/deliveries?q=" + "x" * 201)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "validation_error"


def test_retrying_lists_pending_deliveries_that_failed_at_least_once(  # type: ignore[no-untyped-def]
    api, service, receivers, receiver, webhook
) -> None:
    failing = receivers(503)
    bad = api.create_webhook(failing.url(), name="Down")
    publish(api, "Disk full")
    service.run_until(lambda: failing.requests and receiver.requests)
    retrying = api.deliveries(q="", status="retrying")
    assert [d["webhook_id"] for d in retrying] == [bad["id"]]
    assert retrying[0]["status"] == "pending" and retrying[0]["last_status_code"] == 503
    assert api.deliveries(q="", status="failed") == []


def test_the_logs_page_searches_shows_titles_and_filters_retrying(
    user, api, three_findings
) -> None:  # type: ignore[no-untyped-def]
    page = user.get("/settings/webhooks/logs").text
    assert "IAM user without MFA" in page and "Public S3 bucket in prod-eu" in page
    assert 'value="retrying"' in page and ">Retrying<" in page

    found = user.get("/settings/webhooks/logs?q=mfa").text
    assert "IAM user without MFA" in found and "Public S3 bucket" not in found
    assert 'value="mfa"' in found  # the search stays in its box


@pytest.mark.parametrize("few", [0, 1, 500])
def test_a_search_pages_newest_first_however_many_events_it_matches(  # type: ignore[no-untyped-def]
    api, webhook, monkeypatch, few
) -> None:
    from webhooks import logs

    monkeypatch.setattr(logs, "FEW_EVENTS", few)  # found by key, or by the newest-first scan
    published = [publish(api, f"Public bucket number {i}")["id"] for i in range(5)]
    publish(api, "Something else")
    first = api.get("/deliveries?q=public+bucket&limit=2").json
    second = api.get(f"/deliveries?q=public+bucket&limit=2&cursor={first['next_cursor']}").json
    third = api.get(f"/deliveries?q=public+bucket&limit=2&cursor={second['next_cursor']}").json
    pages = [d["event_id"] for d in first["data"] + second["data"] + third["data"]]
    assert pages == published[::-1]
    assert third["next_cursor"] is None
