"""Times in the dashboard are read and typed in the person's own time zone; storage stays UTC."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from webhooks.models import BulkJob, Delivery, db


def test_an_old_delivery_shows_its_local_date_with_utc_on_hover(
    user, app, api, webhook, service, receiver
) -> None:  # type: ignore[no-untyped-def]
    api.publish(data={"title": "Disk full"})
    service.run_until(lambda: receiver.requests)
    with app.app_context():
        db.session.execute(sa.update(Delivery).values(created_at=datetime(2025, 7, 1, 22, 15)))
        db.session.commit()
    user.client.set_cookie("tz", "Asia/Tokyo")
    page = user.get("/settings/webhooks/logs").text
    assert ">Jul 2 2025, 07:15</time>" in page  # 22:15 UTC is 07:15 the next day in Tokyo
    assert "Wed 02 Jul 2025, 07:15:00 JST (22:15:00 UTC)" in page


def test_without_a_known_zone_times_are_utc_and_say_so(user) -> None:  # type: ignore[no-untyped-def]
    user.client.set_cookie("tz", "Mars/Olympus_Mons")
    page = user.get("/settings/webhooks/logs").text
    assert "Times are in your time zone, UTC" in page


def test_the_log_filter_turns_local_times_into_utc_in_the_address(user) -> None:  # type: ignore[no-untyped-def]
    user.client.set_cookie("tz", "America/New_York")
    response = user.get(
        "/settings/webhooks/logs?zone=America/New_York&status=&since=2026-07-04T09:00:00&until="
    )
    assert response.status_code == 302
    assert response.headers["Location"].endswith(
        "/settings/webhooks/logs?since=2026-07-04T13:00:00Z"
    )
    page = user.get("/settings/webhooks/logs?since=2026-07-04T13:00:00Z").text
    assert 'value="2026-07-04T09:00:00"' in page  # shown again as it was typed


def test_recover_from_a_local_time_starts_there_in_utc(user, app, api, webhook) -> None:  # type: ignore[no-untyped-def]
    user.client.set_cookie("tz", "Europe/Paris")
    user.post(
        f"/settings/webhooks/{webhook['id']}/recover",
        data={"since": "2026-01-15T10:00:00"},
        htmx=True,
    )
    with app.app_context():
        job = db.session.scalars(sa.select(BulkJob)).one()
        since = datetime.fromisoformat(job.params["since"])
        assert since == datetime(2026, 1, 15, 9, 0)  # Paris is UTC+1 in January
