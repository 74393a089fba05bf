"""POST /api/v1/events/batch as a producer sees it: all or nothing, replays, limits, delivery."""

from __future__ import annotations

import json
import threading

import pytest
import sqlalchemy as sa

from tests.conftest import Api
from tests.receivers import Receiver
from tests.test_api import error_of, other_workspace, with_config
from webhooks.models import Delivery, Event, db

ENVELOPE = ("id", "type", "timestamp", "workspace_id", "data")


@pytest.fixture
def config(config, request):  # type: ignore[no-untyped-def]
    """The conftest configuration, plus `indirect` parametrization's overrides."""
    config.update(getattr(request, "param", {}))
    return config


@pytest.fixture
def second_receiver(receivers) -> Receiver:  # type: ignore[no-untyped-def]
    return receivers()


def event(event_type: str = "incident.created", key: str | None = None, **data):  # type: ignore[no-untyped-def]
    body = {"type": event_type, "data": data or {"id": "inc_1"}}
    return body if key is None else {**body, "idempotency_key": key}


def batch(api: Api, *events):  # type: ignore[no-untyped-def]
    return api.post("/events/batch", {"events": list(events)})


def stored(app) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """How many events and deliveries the database holds, whoever published them."""
    with app.app_context():
        count = sa.select(sa.func.count())
        events = db.session.scalar(count.select_from(Event))
        deliveries = db.session.scalar(count.select_from(Delivery))
        db.session.remove()
    return events, deliveries


def header(received, name: str) -> str:  # type: ignore[no-untyped-def]
    return {k.lower(): v for k, v in received.headers.items()}[name]


# --- delivery ------------------------------------------------------------------------------


def test_a_batch_reaches_each_subscribed_receiver_through_a_real_worker(
    api, webhook, receiver, second_receiver, service
):
    incidents = api.post(
        "/webhooks",
        {"name": "Incidents", "url": second_receiver.url(), "events": ["incident.*"]},
    ).json
    events = [
        event("incident.created", id="inc_1", title="Disk full"),
        event("task.started", id="task_1"),
        event("incident.resolved", id="inc_1"),
    ]

    response = batch(api, *events)

    assert response.status_code == 202, response.json
    answers = response.json["data"]
    assert [a["type"] for a in answers] == [e["type"] for e in events]
    assert [a["data"] for a in answers] == [e["data"] for e in events]
    assert [a["delivery_count"] for a in answers] == [2, 1, 2]
    # Each answer is what POST /events answers, and what GET /events/{id} shows.
    for answer in answers:
        shown = api.get(f"/events/{answer['id']}").json
        assert {k: shown[k] for k in answer} == answer
    # Ids follow the batch's order.
    assert [a["id"] for a in answers] == sorted(a["id"] for a in answers)

    service.run_until(lambda: len(receiver.requests) == 3 and len(second_receiver.requests) == 2)
    everything = {header(r, "webhook-id"): r.json() for r in receiver.requests}
    assert everything == {a["id"]: {k: a[k] for k in ENVELOPE} for a in answers}
    assert sorted(header(r, "webhook-id") for r in second_receiver.requests) == [
        answers[0]["id"],
        answers[2]["id"],
    ]
    logs = service.run_until(
        lambda: len(done := api.get("/deliveries?status=succeeded").json["data"]) == 5 and done
    )
    assert {(d["event_id"], d["webhook_id"]) for d in logs} == {
        *((a["id"], webhook["id"]) for a in answers),
        (answers[0]["id"], incidents["id"]),
        (answers[2]["id"], incidents["id"]),
    }


def test_a_batch_without_subscribers_is_stored_and_sends_nothing(app, api):
    response = batch(api, event(), event("task.failed"))

    assert response.status_code == 202
    assert [a["delivery_count"] for a in response.json["data"]] == [0, 0]
    assert stored(app) == (2, 0)


# --- all or nothing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "code", "field"),
    [
        ({"type": "nope.created", "data": {}}, "unknown_event_type", "events[3].type"),
        ({"data": {}}, "validation_error", "events[3].type"),
        ({"type": "incident.created", "data": [1]}, "validation_error", "events[3].data"),
        ("incident.created", "validation_error", "events[3]"),
        (
            {"type": "incident.created", "data": {}, "idempotencyKey": "k"},
            "validation_error",
            "events[3].idempotencyKey",
        ),
        (
            {"type": "incident.created", "data": {}, "idempotency_key": "k" * 256},
            "validation_error",
            "events[3].idempotency_key",
        ),
    ],
    ids=["unknown-type", "no-type", "data-list", "not-object", "misspelt-key", "long-key"],
)
def test_one_invalid_event_refuses_the_whole_batch(app, api, webhook, bad, code, field):
    events = [event(id=f"inc_{n}") for n in range(5)]
    events[3] = bad

    error = error_of(batch(api, *events), 400, code, field)

    assert set(error["fields"]) == {field}
    assert field in error["message"] and "nothing was published" in error["message"]
    assert stored(app) == (0, 0)
    assert api.get("/deliveries").json["data"] == []


def test_every_invalid_event_is_named_at_once(app, api, webhook):
    error = error_of(
        batch(api, event(), {"type": "nope.x"}, event(), {"type": "also.nope"}, {"data": 1}),
        400,
        "validation_error",
    )

    assert error["fields"].keys() == {
        "events[1].type",
        "events[3].type",
        "events[4].type",
        "events[4].data",
    }
    assert "'nope.x'" in error["fields"]["events[1].type"]
    assert stored(app) == (0, 0)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"events": []}, "an empty list"),
        ({}, "got nothing"),
        ({"events": {"type": "incident.created"}}, "a list of 1 to 100"),
        ({"events": [event()] * 101}, "at most 100 events per call, got 101"),
        ({"events": [event()], "extra": 1}, "unknown field"),
    ],
    ids=["empty", "missing", "object", "101", "unknown-field"],
)
def test_a_batch_that_is_not_a_list_of_1_to_100_events_is_refused(app, api, body, detail):
    error = error_of(api.post("/events/batch", body), 400, "validation_error")

    assert detail in error["message"]
    assert stored(app) == (0, 0)


def test_a_batch_of_100_events_is_published(app, api, webhook):
    response = batch(api, *[event(id=f"inc_{n}") for n in range(100)])

    assert response.status_code == 202
    assert [a["data"]["id"] for a in response.json["data"]] == [f"inc_{n}" for n in range(100)]
    assert stored(app) == (100, 100)


@with_config(WEBHOOK_MAX_PAYLOAD_BYTES="1000")
def test_the_payload_limit_applies_to_each_event(app, api, webhook):
    fits = event(x="a" * 900)
    over = event(x="a" * 1000)
    assert len(json.dumps(fits)) < 1000 < len(json.dumps(over))
    assert api.post("/events", over).status_code == 413

    error = error_of(batch(api, fits, over, fits), 413, "payload_too_large", "events[1].data")

    assert set(error["fields"]) == {"events[1].data"}
    assert stored(app) == (0, 0)
    assert batch(api, fits, fits, fits).status_code == 202
    assert stored(app) == (3, 3)


@with_config(WEBHOOK_MAX_PAYLOAD_BYTES="1000")
def test_a_body_over_100_times_the_payload_limit_is_413(app, api):
    raw = json.dumps({"events": [event(x="a" * 900)] * 100, "pad": " " * 20_000})
    assert len(raw) > 100 * 1000

    response = api.client.post(
        "/api/v1/events/batch",
        data=raw,
        content_type="application/json",
        headers={"Authorization": f"Bearer {api.key}"},
    )

    error = error_of(response, 413, "payload_too_large")
    assert "100 × WEBHOOK_MAX_PAYLOAD_BYTES" in error["message"]
    assert stored(app) == (0, 0)


def test_a_batch_may_be_larger_than_any_single_event(app, api):
    # 100 events of 15 KB: 1.5 MB, more than the 1 MiB other request bodies may have.
    events = [event(id=f"inc_{n}", text="b" * 15_000) for n in range(100)]
    assert len(json.dumps({"events": events})) > 1 << 20

    response = batch(api, *events)

    assert response.status_code == 202, response.get_data(as_text=True)[:300]
    assert stored(app) == (100, 0)


# --- idempotency ---------------------------------------------------------------------------


def test_a_key_used_before_with_the_same_body_is_a_replay(app, api, webhook, receiver, service):
    first = api.post("/events", event(id="inc_1"), headers={"Idempotency-Key": "inc_1-created"})
    assert first.status_code == 202

    response = batch(api, event(key="inc_1-created", id="inc_1"), event(key="inc_2", id="inc_2"))

    assert response.status_code == 202
    replayed, fresh = response.json["data"]
    assert replayed == first.json
    assert fresh["id"] != first.json["id"] and fresh["delivery_count"] == 1
    assert stored(app) == (2, 2)

    again = batch(api, event(key="inc_1-created", id="inc_1"), event(key="inc_2", id="inc_2"))

    assert again.status_code == 202 and again.json == response.json
    assert stored(app) == (2, 2)
    service.run_until(lambda: len(receiver.requests) >= 2)
    service.tick()
    assert sorted(header(r, "webhook-id") for r in receiver.requests) == sorted(
        [first.json["id"], fresh["id"]]
    )


def test_the_same_key_twice_in_one_batch_is_one_event(app, api, webhook, receiver, service):
    response = batch(
        api, event(key="k", id="inc_1"), event("task.started"), event(key="k", id="inc_1")
    )

    assert response.status_code == 202
    first, other, second = response.json["data"]
    assert second == first and other["id"] != first["id"]
    assert stored(app) == (2, 2)
    service.run_until(lambda: len(receiver.requests) >= 2)
    service.tick()
    assert sorted(header(r, "webhook-id") for r in receiver.requests) == sorted(
        [first["id"], other["id"]]
    )


def test_a_key_used_before_with_another_body_refuses_the_batch(app, api, webhook):
    assert batch(api, event(key="inc_1", id="inc_1")).status_code == 202

    error = error_of(
        batch(api, event(id="inc_9"), event(key="inc_1", id="changed")),
        409,
        "idempotency_conflict",
        "events[1].idempotency_key",
    )

    assert set(error["fields"]) == {"events[1].idempotency_key"}
    assert "'inc_1'" in error["message"]
    assert stored(app) == (1, 1)


def test_one_key_with_two_bodies_in_one_batch_is_a_conflict(app, api, webhook):
    error = error_of(
        batch(api, event(key="k", id="a"), event(key="k", id="b")),
        409,
        "idempotency_conflict",
        "events[1].idempotency_key",
    )

    assert "events[0]" in error["fields"]["events[1].idempotency_key"]
    assert stored(app) == (0, 0)


def test_concurrent_batches_with_the_same_keys_make_each_event_once(app, workspace, webhook):
    threads_count = 6
    barrier = threading.Barrier(threads_count)
    answers: list[tuple[int, list]] = []
    lock = threading.Lock()
    events = [event(key=f"k-{n}", id=f"inc_{n}") for n in range(10)]

    def publish_once() -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post(
            "/api/v1/events/batch",
            json={"events": events},
            headers={"Authorization": f"Bearer {workspace['key']}"},
        )
        with lock:
            answers.append((response.status_code, response.json.get("data")))

    threads = [threading.Thread(target=publish_once) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert [status for status, _ in answers] == [202] * threads_count, answers
    assert len({json.dumps(data) for _, data in answers}) == 1
    assert stored(app) == (10, 10)


# --- walls and limits ----------------------------------------------------------------------


def test_another_workspace_shares_no_keys_and_sees_nothing(app, client, api, webhook):
    mine = batch(api, event(key="shared", id="inc_1")).json["data"][0]
    other = other_workspace(app, client)

    theirs = batch(other, event(key="shared", id="different")).json["data"]

    assert theirs[0]["id"] != mine["id"] and theirs[0]["delivery_count"] == 0
    assert theirs[0]["workspace_id"] != mine["workspace_id"]
    error_of(other.get(f"/events/{mine['id']}"), 404, "not_found")
    assert other.get("/deliveries").json["data"] == []
    assert [d["event_id"] for d in api.get("/deliveries").json["data"]] == [mine["id"]]
    assert batch(api, event(key="shared", id="inc_1")).json["data"][0] == mine


@with_config(WEBHOOK_API_RATE_LIMIT="2 per minute")
def test_a_batch_counts_as_one_request_against_the_rate_limit(app, api):
    hundred = [event(id=f"inc_{n}") for n in range(100)]

    assert batch(api, *hundred).status_code == 202
    assert batch(api, *hundred).status_code == 202
    refused = batch(api, *hundred)

    error_of(refused, 429, "rate_limited")
    assert refused.headers["Retry-After"]
    assert stored(app) == (200, 0)


def test_the_answer_matches_the_openapi_description(client, api, webhook):
    from tests.test_openapi import check

    spec = client.get("/api/v1/openapi.json").json

    check(spec, "/events/batch", "post", batch(api, event(), event("task.started")))
    check(spec, "/events/batch", "post", batch(api, {"type": "nope"}))
