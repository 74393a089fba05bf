"""Logs › Redeliver all matching in a real headless Chromium, with the real worker and scheduler."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.receivers import Receiver
from tests.test_browser import (  # noqa: F401  (fixtures used by name)
    DELIVERY,
    UI,
    Site,
    assert_not_reloaded,
    browser,
    config,
    header,
    mark_document,
    page,
    processes,
    screenshot,
    sign_in,
    site,
)
from tests.test_pages import PHONE, _axe
from tests.test_recovery import Processes

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect  # noqa: E402


def wait_for(condition: Any, timeout: float = DELIVERY / 1000) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)
    return found


@pytest.mark.parametrize("config", [{"WEBHOOK_RETRY_SCHEDULE": "0,0.2"}], indirect=True)
def test_redeliver_all_matching_asks_then_shows_the_progress_in_place(
    page: Page,  # noqa: F811
    site: Site,  # noqa: F811
    receiver: Receiver,
    tls_context: Any,
    processes: Processes,  # noqa: F811
) -> None:
    failing = Receiver(tls=tls_context)
    try:
        failing.answer(500)
        flaky = site.create_webhook(name="Flaky", url=failing.url())
        site.create_webhook(name="Ops", url=receiver.url())
        events = [site.publish("incident.created", id=f"inc_{n}") for n in range(3)]
        wait_for(
            lambda: (
                len([d for d in site.deliveries() if d["status"] == "failed"]) == 3
                and all(d["status"] != "pending" for d in site.deliveries())
            )
        )
        failing.answer(200)  # the receiver is fixed: send them all again
        sent_before = len(failing.requests)

        sign_in(page)
        page.set_viewport_size(PHONE)
        shown = page.goto(f"/settings/webhooks/logs?status=failed&webhook_id={flaky['id']}")
        # The page comes without the count; the offer, counted, is fetched once it is shown.
        assert shown is not None and "Redeliver all 3" not in shown.text()
        button = page.get_by_role("button", name="Redeliver all 3 matching")
        expect(button).to_be_visible()
        assert not _axe(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        mark_document(page)

        asked: list[str] = []

        def dismiss(dialog: Any) -> None:
            asked.append(dialog.message)
            dialog.dismiss()

        page.once("dialog", dismiss)
        button.click()
        expect(button).to_be_visible()  # cancelled: nothing started
        assert asked and asked[0].startswith("Redeliver all 3 failed deliveries"), asked
        assert len(failing.requests) == sent_before

        page.once("dialog", lambda dialog: dialog.accept())
        button.click()
        progress = page.locator("#redeliver-all")
        expect(progress.locator("progress")).to_be_visible()
        expect(button).to_have_count(0)
        expect(progress).to_contain_text("Redelivered 3 deliveries", timeout=DELIVERY)
        screenshot(page, "logs-redeliver-all.png")
        expect(progress.locator("progress")).to_have_attribute("value", "3")
        assert_not_reloaded(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        assert not _axe(page)
        screenshot(page, "logs-redeliver-all.png")

        again = failing.wait_for(sent_before + 3, timeout=DELIVERY / 1000)[sent_before:]
        assert sorted(header(r, "webhook-id") or "" for r in again) == sorted(
            e["id"] for e in events
        )
        page.get_by_role("link", name="See the redeliveries in the logs").click()
        expect(page).to_have_url(re.compile(rf"webhook_id={flaky['id']}"), timeout=UI)
        rows = page.locator("#log-rows tbody tr")
        expect(rows.locator(".badge", has_text="Succeeded")).to_have_count(3, timeout=DELIVERY)

        # A Failed view that matches nothing: the offer's place goes once it is answered.
        with page.expect_response(re.compile(r"/logs/redeliver-all\?")):
            page.goto("/settings/webhooks/logs?status=failed&event_type=task.failed")
        expect(page.locator("#redeliver-all")).to_have_count(0)
        expect(page.get_by_text("No deliveries match these filters.")).to_be_visible()
    finally:
        failing.close()
