"""GET /metrics: Prometheus text counting, from the database and Redis, what every process did."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from sqlalchemy import delete, select

from webhooks import metrics, services
from webhooks.models import Attempt, Delivery, Event, Webhook, db, utcnow


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:  # type: ignore[no-untyped-def]
    """Every sample of /metrics, by (name, sorted labels)."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return samples[(name, tuple(sorted(labels.items())))]


def publish(api, count: int = 1) -> list[str]:  # type: ignore[no-untyped-def]
    """Publish `count` incidents; their ids."""
    return [api.publish(data={"n": i})["id"] for i in range(count)]


@pytest.fixture
def once(config):  # type: ignore[no-untyped-def]
    """One attempt per delivery: each ends after it, succeeded or failed."""
    config["WEBHOOK_RETRY_SCHEDULE"] = "0"


def test_counters_match_the_deliveries_made(once, api, webhook, receiver, service, client):
    receiver.answer(200, 200, 200, 500)
    events = publish(api, 5)

    service.run_until(api.ended(*events))
    samples = scrape(client)

    assert value(samples, "webhook_delivery_attempts_total", outcome="success") == 3
    assert value(samples, "webhook_delivery_attempts_total", outcome="failure") == 2
    assert value(samples, "webhook_deliveries_total", status="succeeded") == 3
    assert value(samples, "webhook_deliveries_total", status="failed") == 2
    assert value(samples, "webhook_attempt_responses_total", **{"class": "2xx"}) == 3
    assert value(samples, "webhook_attempt_responses_total", **{"class": "5xx"}) == 2
    assert value(samples, "webhook_attempt_responses_total", **{"class": "none"}) == 0
    assert value(samples, "webhook_attempt_duration_seconds_count") == 5
    assert value(samples, "webhook_attempt_duration_seconds_bucket", le="+Inf") == 5
    assert 0 < value(samples, "webhook_attempt_duration_seconds_sum") < 5 * 2  # timeout 2 s
    assert value(samples, "webhook_publish_to_first_attempt_seconds_count") == 5
    assert value(samples, "webhook_deliveries_due") == 0
    assert value(samples, "webhook_retries_scheduled") == 0
    assert value(samples, "webhook_queue_depth", queue="test-webhooks") == 0
    assert value(samples, "webhook_redis_up") == 1


def test_queued_work_shows_as_queue_depth_and_due_when_no_worker_runs(api, webhook, client):
    publish(api, 3)

    samples = scrape(client)

    # One wake-up waits for a worker; the three deliveries wait in the database.
    assert value(samples, "webhook_queue_depth", queue="test-webhooks") == 1
    assert value(samples, "webhook_deliveries_due") == 3
    assert value(samples, "webhook_deliveries_in_flight") == 0
    assert value(samples, "webhook_delivery_attempts_total", outcome="success") == 0


@pytest.fixture
def retry_in_an_hour(config):  # type: ignore[no-untyped-def]
    config["WEBHOOK_RETRY_SCHEDULE"] = "0,3600"


def test_a_failed_attempt_with_a_retry_to_come_is_a_scheduled_retry(
    retry_in_an_hour, api, webhook, receiver, service, client
):
    receiver.answer(503)
    publish(api)

    service.run_until(lambda: receiver.requests)  # the worker records the attempt, then returns
    samples = scrape(client)

    assert value(samples, "webhook_delivery_attempts_total", outcome="failure") == 1
    assert value(samples, "webhook_retries_scheduled") == 1
    assert value(samples, "webhook_deliveries_due") == 0
    assert value(samples, "webhook_deliveries_total", status="failed") == 0
    assert value(samples, "webhook_queue_depth", queue="test-webhooks") == 0


def add_delivery(app, webhook_id: str, lag_s: float, durations_ms: list[int | None]) -> str:  # type: ignore[no-untyped-def]
    """A delivery whose first attempt started `lag_s` after it was created."""
    with app.app_context():
        webhook = db.session.get(Webhook, webhook_id)
        created = utcnow() - timedelta(hours=1)
        event = Event(workspace_id=webhook.workspace_id, type="incident.created", data={})
        delivery = Delivery(
            workspace_id=webhook.workspace_id,
            event=event,
            webhook_id=webhook_id,
            event_type="incident.created",
            status="succeeded",
            attempt_count=len(durations_ms),
            max_attempts=6,
            created_at=created,
        )
        db.session.add(delivery)
        db.session.flush()
        for number, duration in enumerate(durations_ms, start=1):
            db.session.add(
                Attempt(
                    delivery_id=delivery.id,
                    number=number,
                    outcome="success" if duration is not None else "lost",
                    started_at=created + timedelta(seconds=lag_s + number - 1),
                    duration_ms=duration,
                    response_status=200 if duration is not None else None,
                    request_url="https://hooks.example.com/",
                    request_headers={},
                    request_body="{}",
                )
            )
        db.session.commit()
        return delivery.id


def test_histograms_put_each_value_in_its_buckets(app, webhook, client):
    add_delivery(app, webhook["id"], 0.2, [40, 100])
    add_delivery(app, webhook["id"], 3.0, [300, 2000, None])
    add_delivery(app, webhook["id"], 100.0, [50_000])

    samples = scrape(client)

    def buckets(name: str) -> dict[str, float]:
        return {
            dict(labels)["le"]: v for (n, labels), v in samples.items() if n == f"{name}_bucket"
        }

    assert buckets("webhook_attempt_duration_seconds") == {
        "0.05": 1,
        "0.1": 2,
        "0.25": 2,
        "0.5": 3,
        "1.0": 3,
        "2.5": 4,
        "5.0": 4,
        "10.0": 4,
        "30.0": 4,
        "60.0": 5,
        "+Inf": 5,
    }
    assert value(samples, "webhook_attempt_duration_seconds_count") == 5
    assert value(samples, "webhook_attempt_duration_seconds_sum") == pytest.approx(52.44)
    first = buckets("webhook_publish_to_first_attempt_seconds")
    assert (first["0.1"], first["0.5"], first["2.5"], first["5.0"], first["60.0"]) == (
        0,
        1,
        1,
        2,
        2,
    )
    assert first["300.0"] == first["+Inf"] == 3
    assert value(samples, "webhook_publish_to_first_attempt_seconds_sum") == pytest.approx(
        103.2, abs=0.01
    )
    assert value(samples, "webhook_delivery_attempts_total", outcome="lost") == 1
    assert value(samples, "webhook_attempt_responses_total", **{"class": "none"}) == 1


def test_deleting_a_webhook_keeps_its_counts(app, api, webhook, client):
    add_delivery(app, webhook["id"], 0.2, [40, 100])
    before = scrape(client)

    assert api.delete(f"/webhooks/{webhook['id']}").status_code == 204

    after = scrape(client)
    with app.app_context():
        assert db.session.scalars(select(Attempt)).all() == []
    assert after == before
    assert value(after, "webhook_delivery_attempts_total", outcome="success") == 2


def test_a_purge_that_carries_over_first_keeps_counters_from_going_down(app, webhook, client):
    old = add_delivery(app, webhook["id"], 0.2, [40, 100])
    add_delivery(app, webhook["id"], 3.0, [300])
    before = scrape(client)

    with app.app_context():
        picked = Delivery.id == old
        metrics.carry_over(db.session, picked)
        db.session.execute(delete(Delivery).where(picked))
        db.session.commit()
        assert len(db.session.scalars(select(Attempt)).all()) == 1
    after = scrape(client)

    assert after == before
    assert value(after, "webhook_attempt_duration_seconds_count") == 3


@pytest.fixture
def metrics_off(config):  # type: ignore[no-untyped-def]
    config["METRICS_ENABLED"] = "0"


@pytest.fixture
def metrics_token(config):  # type: ignore[no-untyped-def]
    config["METRICS_TOKEN"] = "scrape-me"


def test_metrics_can_be_turned_off(metrics_off, client):
    response = client.get("/metrics")
    assert response.status_code == 404 and "webhook_" not in response.text


def test_metrics_can_require_a_bearer_token(metrics_token, client):
    refused = client.get("/metrics", headers={"Authorization": "Bearer wrong"})

    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics").status_code == 401
    samples = scrape(client, Authorization="Bearer scrape-me")
    assert value(samples, "webhook_deliveries_due") == 0


def test_redis_down_leaves_out_queue_depth_but_still_answers(app, client):
    working = services.of(app).redis
    services.install(app, Redis(port=1, socket_connect_timeout=0.2))
    try:
        samples = scrape(client)
    finally:
        services.install(app, working)

    assert value(samples, "webhook_redis_up") == 0
    assert not any(name == "webhook_queue_depth" for name, _ in samples)
    assert value(samples, "webhook_deliveries_due") == 0
