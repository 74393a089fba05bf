"""Logs › Redeliver all matching: one bulk job over the failed deliveries a filter shows."""

from __future__ import annotations

import html
import re
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.conftest import Api
from tests.receivers import Receiver
from tests.session import Session, make_user, text
from tests.test_openapi import check
from webhooks import bulk, services
from webhooks.config import Settings
from webhooks.models import BulkJob, Delivery, db, utcnow

LOGS = "/settings/webhooks/logs"


@pytest.fixture
def config(config):  # type: ignore[no-untyped-def]
    config.update({"WEBHOOK_RETRY_SCHEDULE": "0,0.2"})  # two attempts, then failed
    return config


@pytest.fixture
def other_receiver(receivers) -> Receiver:  # type: ignore[no-untyped-def]
    return receivers()


def publish(api: Api, event_type: str, n: int) -> dict[str, Any]:
    return api.publish(event_type, {"id": f"x_{n}", "title": "t"})


def sent_ids(receiver: Receiver, since: int = 0) -> Counter:
    """How many requests arrived per event (webhook-id), from the `since`-th one on."""
    return Counter(r.headers["webhook-id"] for r in receiver.requests[since:])


def job_url(html: str) -> str:
    found = re.search(r'hx-get="(/settings/webhooks/jobs/(job_[^"]+))"', html)
    assert found, html
    return found.group(1)


def offer_url(page: str) -> str | None:
    """Where the logs page fetches its "Redeliver all matching" offer from, once shown."""
    found = re.search(r'<div id="redeliver-all" hx-get="([^"]+)" hx-trigger="load"', page)
    return html.unescape(found.group(1)) if found else None


def offer(user: Session, query: str) -> str:
    """The logs page for `query`, then the offer it fetches (as htmx does): the offer's HTML."""
    page = user.get(f"{LOGS}{query}")
    assert page.status_code == 200, query
    assert not re.search(r"Redeliver all \d|More than", page.text), query  # not counted yet
    url = offer_url(page.text)
    if url is None:
        return ""
    fragment = user.get(url, headers={"HX-Request": "true"})
    assert fragment.status_code == 200, url
    return fragment.text


@pytest.fixture
def failing(app, api, user, receiver, other_receiver, service) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Webhook X with 3 failed deliveries, Y with 2, and another workspace with 1."""
    receiver.answer(500)
    other_receiver.answer(500)
    x = api.create_webhook(receiver.url("/x"), name="X")
    y = api.create_webhook(other_receiver.url("/y"), name="Y", events=["incident.*"])
    events = [publish(api, t, n) for n, t in enumerate(["incident.created"] * 2 + ["task.failed"])]
    assert [e["delivery_count"] for e in events] == [2, 2, 1]

    _, other_key = make_user(app, "other@acme.test", "Other")
    other = Api(app.test_client(), other_key)
    other.create_webhook(receiver.url("/z"), name="Z")
    foreign = publish(other, "incident.created", 9)

    service.run_until(lambda: api.ended()() and other.ended()())
    assert len(api.deliveries(status="failed")) == 5
    receiver.answer(200)
    other_receiver.answer(200)
    return {"x": x, "y": y, "events": events, "other": other, "foreign": foreign}


def test_redeliver_all_matching_sends_exactly_the_filtered_failed_deliveries(
    api, user, receiver, other_receiver, service, failing
):
    x = failing["x"]
    shown = offer(user, f"?status=failed&webhook_id={x['id']}")
    assert "Redeliver all 3 matching" in shown
    assert 'hx-confirm="Redeliver all 3 failed deliveries' in shown
    # The filter goes with the form, and the confirm dialog is htmx's (no inline script).
    assert f'name="webhook_id" value="{x["id"]}"' in shown
    assert 'name="status" value="failed"' in shown
    assert "<script>" not in shown and "<html" not in shown  # a fragment, not a page

    before_x, before_other = len(receiver.requests), len(other_receiver.requests)
    started = user.post(
        f"{LOGS}/redeliver-all", data={"status": "failed", "webhook_id": x["id"]}, htmx=True
    )
    assert started.status_code == 200
    assert "<progress" in started.text and "Queued" in started.text
    assert "0 of 3 deliveries created" in text(started.text)
    url = job_url(started.text)

    service.run_until(lambda: "Done" in user.get(url).text)
    finished = user.get(url)
    assert "Redelivered 3 deliveries" in text(finished.text)
    assert "hx-get" not in finished.text  # the polling stops
    link = re.search(r'<a href="([^"]+)">See the redeliveries in the logs', finished.text)
    assert link and f"webhook_id={x['id']}" in link.group(1) and "since=" in link.group(1)

    service.run_until(lambda: len(receiver.requests) >= before_x + 3)
    service.tick()  # anything more would have been sent by now
    new_x = [r for r in receiver.requests[before_x:]]
    assert all(r.path == "/x" for r in new_x), [r.path for r in new_x]  # nothing of Z
    assert sent_ids(receiver, before_x) == Counter(e["id"] for e in failing["events"])
    assert len(other_receiver.requests) == before_other  # nothing of Y

    redeliveries = api.deliveries(webhook_id=x["id"])
    kinds = Counter(d["kind"] for d in redeliveries)
    assert kinds["redelivery"] == 3 and all(
        d["status"] == "succeeded" for d in redeliveries if d["kind"] == "redelivery"
    )

    # The REST API shows the job as any other bulk job.
    job_id = url.rsplit("/", 1)[1]
    job = api.get(f"/jobs/{job_id}")
    assert job.json["kind"] == "redeliver" and job.json["webhook_id"] == x["id"]
    assert (job.json["status"], job.json["done"], job.json["total"]) == ("done", 3, 3)
    spec = api.client.get("/api/v1/openapi.json").json
    check(spec, "/jobs/{job_id}", "get", job)
    assert failing["other"].get(f"/jobs/{job_id}").status_code == 404


def test_the_button_shows_only_over_failed_deliveries(api, user, failing):
    assert "Redeliver all 5 matching" in offer(user, "?status=failed")
    assert "Redeliver all 2 matching" in offer(
        user, f"?status=failed&webhook_id={failing['y']['id']}"
    )
    assert "Redeliver all 1 matching" in offer(user, "?status=failed&event_type=task.failed")
    # Views of other statuses, or with a filter that is wrong, do not even ask.
    for query in ("", "?status=succeeded", "?status=pending", "?event_type=task.failed"):
        page = user.get(f"{LOGS}{query}")
        assert page.status_code == 200 and 'id="redeliver-all"' not in page.text, query
    assert offer_url(user.get(f"{LOGS}?status=failed&since=nonsense").text) is None
    # Failed views that match nothing ask, and are answered with nothing (the offer goes).
    for query in (
        "?status=failed&event_type=finding.created",
        "?status=failed&until=2000-01-01T00:00:00Z",
        "?status=failed&q=nothing-has-this-title",
    ):
        assert offer(user, query).strip() == "", query
    # Another workspace's failed delivery is no one's business here, not even by its webhook.
    foreign_hook = failing["other"].get("/webhooks").json["data"][0]["id"]
    assert offer(user, f"?status=failed&webhook_id={foreign_hook}").strip() == ""


def test_over_the_per_call_maximum_the_offer_says_to_narrow_the_filter(
    api, user, failing, monkeypatch
):
    monkeypatch.setattr(bulk, "MAX_PER_CALL", 4)
    shown = text(offer(user, "?status=failed"))
    assert "More than 4 failed deliveries match: narrow the filter" in shown
    assert "Redeliver all" not in shown
    assert "Redeliver all 2 matching" in offer(
        user, f"?status=failed&webhook_id={failing['y']['id']}"
    )
    refused = user.post(f"{LOGS}/redeliver-all", data={"status": "failed"}, htmx=True)
    assert "more than 4 failed deliveries match" in refused.text and "<progress" not in refused.text


def test_without_javascript_the_offer_is_a_page_of_its_own(user, receiver, service, failing):
    x = failing["x"]
    page = user.get(f"{LOGS}?status=failed&webhook_id={x['id']}")
    link = re.search(r'<noscript><p><a href="([^"]+)">Redeliver all matching', page.text)
    assert link and html.unescape(link.group(1)) == offer_url(page.text)
    shown = user.get(html.unescape(link.group(1)))
    assert shown.status_code == 200
    assert "<h1>Redeliver all matching</h1>" in shown.text
    assert "Redeliver all 3 matching" in shown.text
    assert f'name="webhook_id" value="{x["id"]}"' in shown.text
    before = len(receiver.requests)
    started = user.post(f"{LOGS}/redeliver-all", data={"status": "failed", "webhook_id": x["id"]})
    assert started.status_code == 302 and "job=job_" in started.headers["Location"]
    service.run_until(lambda: len(receiver.requests) >= before + 3)

    nothing = user.get(f"{LOGS}/redeliver-all?status=failed&event_type=finding.created")
    assert "there is nothing to redeliver" in text(nothing.text)
    assert (
        "Redeliver all 0" not in nothing.text
        and f'action="{LOGS}/redeliver-all"' not in nothing.text
    )


def test_the_job_is_scoped_to_the_workspace_and_refuses_other_statuses(
    app, api, user, receiver, service, failing
):
    foreign_hook = failing["other"].get("/webhooks").json["data"][0]["id"]
    before = len(receiver.requests)
    started = user.post(
        f"{LOGS}/redeliver-all", data={"status": "failed", "webhook_id": foreign_hook}, htmx=True
    )
    assert "nothing to deliver" in text(started.text) and "Done" in started.text
    refused = user.post(f"{LOGS}/redeliver-all", data={"status": "succeeded"}, htmx=True)
    assert "Only failed deliveries" in refused.text and "<progress" not in refused.text
    service.tick()
    assert len(receiver.requests) == before

    # Without JavaScript: the form posts, and the page it leads to shows the progress.
    plain = user.post(f"{LOGS}/redeliver-all", data={"status": "failed", "q": "t"})
    assert plain.status_code == 302 and "job=job_" in plain.headers["Location"]
    shown = user.get(plain.headers["Location"].split("#")[0])
    assert "Redeliver all matching" in text(shown.text) and "of 5 deliveries created" in text(
        shown.text
    )
    service.run_until(lambda: len(receiver.requests) >= before + 3)


def test_an_interrupted_job_goes_on_where_it_stopped_and_sends_nothing_twice(
    app, api, user, receiver, service, failing, monkeypatch
):
    """One batch, then the worker dies; the stalled job is queued again and finishes. A
    delivery still pending when the job started, which fails later, is not swept in."""
    monkeypatch.setattr(bulk, "BATCH", 2)
    settings = Settings.from_config(app.config)
    redis = services.of(app).redis
    receiver.answer(500)
    late = publish(api, "task.failed", 7)  # pending (not yet attempted) at the start
    make_older(app, late["id"], timedelta(hours=1))  # than the rest: first in the job's order
    started = user.post(f"{LOGS}/redeliver-all", data={"status": "failed"}, htmx=True)
    assert "0 of 5 deliveries created" in text(started.text)
    job_id = job_url(started.text).rsplit("/", 1)[1]
    redis.flushdb()  # its hand-off to RQ is lost, so it waits for the scheduler

    service.run_until(api.ended())  # the late delivery fails now
    assert len(api.deliveries(status="failed")) == 6
    receiver.answer(200)
    before = len(receiver.requests)

    run_one_batch_then_die(app, job_id, settings)
    done = service.run_until(api.job_done(job_id))
    assert done["status"] == "done" and (done["done"], done["total"]) == (5, 5)
    service.run_until(lambda: len(receiver.requests) >= before + 3)
    with app.app_context():  # a second run, or a requeue, of the finished job does nothing
        assert bulk.run(db.session, redis, job_id, settings) is None
        assert bulk.requeue_stalled(db.session, redis, settings) == 0
        db.session.remove()
    service.tick()

    redeliveries = [d for d in api.deliveries() if d["kind"] == "redelivery"]
    by_event = Counter((d["event_id"], d["webhook_id"]) for d in redeliveries)
    assert len(redeliveries) == 5 and set(by_event.values()) == {1}
    assert late["id"] not in {d["event_id"] for d in redeliveries}
    # What reached the receivers (X's; Y's is the other one): each failed delivery once more.
    to_x = Counter(r.headers["webhook-id"] for r in receiver.requests[before:] if r.path == "/x")
    assert to_x == Counter(e["id"] for e in failing["events"])
    with app.app_context():
        assert db.session.scalars(select(BulkJob.status)).all() == ["done"]


def make_older(app, event_id: str, by: timedelta) -> None:  # type: ignore[no-untyped-def]
    """Move the event's deliveries back in time."""
    with app.app_context():
        db.session.execute(
            update(Delivery).where(Delivery.event_id == event_id).values(created_at=utcnow() - by)
        )
        db.session.commit()
        db.session.remove()


def run_one_batch_then_die(app, job_id: str, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """What a worker leaves behind when it claims the job, commits one batch and dies: a
    running job no one has touched for five minutes."""
    with app.app_context():
        db.session.execute(update(BulkJob).where(BulkJob.id == job_id).values(status="running"))
        db.session.commit()
        job = db.session.get(BulkJob, job_id)
        assert bulk._redeliver_batch(db.session, services.of(app).redis, job, settings) == 2
        assert (job.done, job.total) == (2, 5)
        db.session.execute(
            update(BulkJob)
            .where(BulkJob.id == job_id)
            .values(updated_at=utcnow() - timedelta(minutes=5))
        )
        db.session.commit()
        db.session.remove()


def test_a_job_over_a_paused_webhook_still_redelivers_like_redeliver(
    api, user, receiver, service, failing
):
    x = failing["x"]
    api.patch(f"/webhooks/{x['id']}", {"active": False})
    before = len(receiver.requests)
    started = user.post(
        f"{LOGS}/redeliver-all", data={"status": "failed", "webhook_id": x["id"]}, htmx=True
    )
    assert "of 3 deliveries created" in text(started.text)
    service.run_until(lambda: len(receiver.requests) >= before + 3)
    assert sent_ids(receiver, before) == Counter(e["id"] for e in failing["events"])


def test_session_for_another_user_cannot_see_the_job(app, user, failing):
    started = user.post(f"{LOGS}/redeliver-all", data={"status": "failed"}, htmx=True)
    url = job_url(started.text)
    other = Session(app.test_client())
    assert other.login("other@acme.test", "correct horse").status_code == 302
    assert other.get(url).status_code == 404
    assert user.get(url).status_code == 200
