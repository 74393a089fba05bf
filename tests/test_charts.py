"""The dashboard's charts: hourly attempts, success rates and latency percentiles, and their SVG."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest

from tests.session import text
from webhooks import charts
from webhooks.config import Settings
from webhooks.models import Attempt, Delivery, Event, Webhook, db, utcnow

NOW = datetime(2026, 3, 10, 12, 30)


class Deliveries:
    """Writes deliveries and attempts straight into the database, with chosen times."""

    def __init__(self, app, webhook_id: str) -> None:  # type: ignore[no-untyped-def]
        self.app, self.webhook_id = app, webhook_id

    def add(
        self,
        created_at: datetime,
        status: str = "succeeded",
        attempts: list[tuple[datetime, str, int | None]] = (),  # type: ignore[assignment]
        webhook_id: str | None = None,
    ) -> None:
        """A delivery with its attempts, each (started_at, outcome, duration_ms)."""
        with self.app.app_context():
            webhook = db.session.get(Webhook, webhook_id or self.webhook_id)
            event = Event(
                workspace_id=webhook.workspace_id,
                type="incident.created",
                data={},
                created_at=created_at,
            )
            delivery = Delivery(
                workspace_id=webhook.workspace_id,
                event=event,
                webhook_id=webhook.id,
                event_type="incident.created",
                status=status,
                attempt_count=len(attempts),
                max_attempts=6,
                created_at=created_at,
            )
            db.session.add(delivery)
            db.session.flush()
            for number, (started_at, outcome, duration_ms) in enumerate(attempts, start=1):
                db.session.add(
                    Attempt(
                        delivery_id=delivery.id,
                        number=number,
                        outcome=outcome,
                        started_at=started_at,
                        duration_ms=duration_ms,
                        response_status={"success": 200, "failure": 500}.get(outcome),
                        request_url=webhook.url,
                        request_headers={},
                        request_body="{}",
                    )
                )
            db.session.commit()

    def one_attempt(self, started_at: datetime, outcome: str = "success", ms: int = 100) -> None:
        status = {"success": "succeeded", "failure": "failed"}.get(outcome, "pending")
        self.add(started_at - timedelta(seconds=1), status, [(started_at, outcome, ms)])


@pytest.fixture
def deliveries(app, webhook) -> Deliveries:  # type: ignore[no-untyped-def]
    return Deliveries(app, webhook["id"])


@pytest.fixture
def other_webhook(api, receiver) -> str:  # type: ignore[no-untyped-def]
    return api.create_webhook(receiver.url(), name="Other")["id"]


def activity(app, webhook_id: str, now: datetime = NOW) -> charts.Activity:  # type: ignore[no-untyped-def]
    with app.app_context():
        return charts.for_webhook(db.session, webhook_id, now, Settings.from_config(app.config))


def at(hours_ago: float, **extra: float) -> datetime:
    return NOW - timedelta(hours=hours_ago) + timedelta(**extra)


def test_attempts_fall_in_the_hour_they_started(app, webhook, deliveries, other_webhook):
    first = datetime(2026, 3, 9, 13, 0)  # 24 bars: 13:00 yesterday to the 12:00 hour now running
    deliveries.one_attempt(first, "success")
    deliveries.one_attempt(first - timedelta(microseconds=1), "success")  # too old
    deliveries.one_attempt(datetime(2026, 3, 10, 10, 59, 59, 999000), "failure")
    deliveries.one_attempt(datetime(2026, 3, 10, 11, 0), "success")
    deliveries.one_attempt(datetime(2026, 3, 10, 12, 5), "success")
    deliveries.one_attempt(datetime(2026, 3, 10, 12, 29, 59), "failure")
    deliveries.one_attempt(datetime(2026, 3, 10, 12, 10), "lost", ms=None)  # type: ignore[arg-type]
    deliveries.one_attempt(datetime(2026, 3, 10, 12, 20), "in_flight", ms=None)  # type: ignore[arg-type]
    Deliveries(app, other_webhook).one_attempt(datetime(2026, 3, 10, 12, 7), "success")

    result = activity(app, webhook["id"])

    assert [h.start for h in result.hours] == [first + timedelta(hours=i) for i in range(24)]
    counts = {i: (h.success, h.failure, h.lost) for i, h in enumerate(result.hours) if h.total}
    assert counts == {0: (1, 0, 0), 21: (0, 1, 0), 22: (1, 0, 0), 23: (1, 1, 1)}
    assert result.total() == 6 and result.total("failure") == 2
    assert result.peak.start == datetime(2026, 3, 10, 12, 0) and result.scale == 3


def test_a_retry_of_a_delivery_older_than_the_window_counts_in_its_hour(app, webhook, deliveries):
    deliveries.add(
        at(24.5),
        "succeeded",
        [(at(24.5), "failure", 100), (at(2, minutes=-10), "success", 100)],
    )

    result = activity(app, webhook["id"])

    assert result.hours[21].success == 1 and result.total() == 1


def test_success_rate_counts_ended_deliveries_created_in_each_window(
    app, webhook, deliveries, other_webhook
):
    for status in ("succeeded", "succeeded", "succeeded", "failed", "pending"):
        deliveries.add(at(3), status)
    for status in ("succeeded", "succeeded", "failed", "failed"):
        deliveries.add(at(72), status)
    deliveries.add(at(24 * 8), "failed")  # older than 7 days
    Deliveries(app, other_webhook).add(at(1), "failed")

    day, week = activity(app, webhook["id"]).windows

    assert (day.label, day.succeeded, day.failed, day.success_rate) == ("24 h", 3, 1, 0.75)
    assert (week.label, week.succeeded, week.failed, week.success_rate) == ("7 days", 5, 3, 0.625)


def test_no_ended_deliveries_is_no_rate_rather_than_zero(app, webhook, deliveries):
    deliveries.add(at(1), "pending")
    day, week = activity(app, webhook["id"]).windows
    assert day.success_rate is None and week.success_rate is None
    assert day.p50_ms is None and day.timed == 0


def test_latency_percentiles_interpolate_like_percentile_cont(app, webhook, deliveries):
    for ms in (400, 100, 1000, 300, 200):
        deliveries.one_attempt(at(2), "success", ms)
    deliveries.one_attempt(at(72), "failure", 5000)
    deliveries.one_attempt(at(72), "success", 50)
    deliveries.one_attempt(at(3), "lost", ms=None)  # type: ignore[arg-type]
    deliveries.one_attempt(at(24 * 8), "success", 99_000)  # older than 7 days

    day, week = activity(app, webhook["id"]).windows

    assert (day.timed, day.p50_ms, day.p95_ms) == (5, 300, pytest.approx(880))
    assert (week.timed, week.p50_ms, week.p95_ms) == (7, 300, pytest.approx(3800))


def test_sqlite_takes_percentiles_from_an_even_sample(app, webhook, deliveries, monkeypatch):
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("PostgreSQL computes percentiles over every attempt")
    monkeypatch.setattr(charts, "SAMPLE", 3)
    for ms in range(100, 1000, 100):
        deliveries.one_attempt(at(2), "success", ms)

    day, _ = activity(app, webhook["id"]).windows

    assert day.timed == 9
    assert day.p50_ms in {ms for ms in range(100, 1000, 100)}  # the middle of three values


def test_helpers():
    assert [charts.nice_ceiling(n) for n in (0, 1, 2, 7, 11, 28, 31, 450, 999)] == [
        1,
        1,
        2,
        8,
        20,
        30,
        40,
        500,
        1000,
    ]
    assert charts.percentile([], 0.5) is None
    assert charts.percentile([7], 0.95) == 7
    assert charts.percentile([1, 2, 3, 4], 0.5) == 2.5


def section(html: str, css_class: str) -> str:
    found = re.search(rf'<section class="card {css_class}".*?</section>', html, re.S)
    assert found, f"no section .{css_class}"
    return found.group(0)


def test_webhook_page_charts_its_last_day_with_the_numbers_in_words(user, webhook, deliveries):
    now = utcnow()
    for ms in (100, 200, 300):
        deliveries.one_attempt(now - timedelta(minutes=5), "success", ms)
    deliveries.one_attempt(now - timedelta(minutes=6), "failure", 2500)

    html = section(user.get(f"/settings/webhooks/{webhook['id']}").text, "activity")

    words = text(html)
    assert "Success rate" in words and "24 h 75% 3 of 4 deliveries" in words
    assert "p50 250 ms" in words and "p95 2.17 s" in words and "4 attempts" in words
    assert "Succeeded 3" in words and "Failed 1" in words and "4 attempts in all" in words
    chart = re.search(r'<svg class="chart".*?</svg>', html, re.S).group(0)  # type: ignore[union-attr]
    assert "<title" in chart and "4 attempts: 3 succeeded, 1 failed." in chart
    assert 'aria-label="Success rate over the last 24 h: 75%, 3 of 4 deliveries"' in html
    assert len(re.findall(r"<rect [^>]*fill=\"#2da44e\"", chart)) >= 1
    assert "style=" not in html  # the CSP allows no inline styles


def test_webhook_page_without_attempts_says_so_instead_of_an_empty_chart(user, webhook):
    html = section(user.get(f"/settings/webhooks/{webhook['id']}").text, "activity")

    assert "No attempts in the last 24 hours" in html
    assert 'class="chart"' not in html
    assert "No ended deliveries" in html


def test_webhooks_list_shows_a_sparkline_per_webhook(user, webhook, deliveries, other_webhook):
    now = utcnow()
    deliveries.one_attempt(now - timedelta(minutes=5), "success")
    deliveries.one_attempt(now - timedelta(minutes=5), "failure")
    deliveries.one_attempt(now - timedelta(hours=3), "success")

    page = user.get("/settings/webhooks").text

    rows = {
        name: row
        for row in re.findall(r"<tr>.*?</tr>", page, re.S)
        for name in ("Ops", "Other")
        if f">{name}</a>" in row
    }
    assert 'aria-label="Attempts per hour over the last 24 hours: 3 in all, 1 failed' in rows["Ops"]
    assert "3 attempts" in text(rows["Ops"]) and "67%" in text(rows["Ops"])
    assert "No attempts in the last 24 hours" in text(rows["Other"])
    assert 'class="spark"' not in rows["Other"]
