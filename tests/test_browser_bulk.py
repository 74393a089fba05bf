"""Logs › Redeliver all matching in a real headless Chromium, with the real worker and scheduler."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.processes import Processes
from tests.receivers import Receiver
from tests.test_browser import (  # noqa: F401  (fixtures used by name)
    DELIVERY,
    UI,
    Site,
    assert_not_reloaded,
    browser,
    config,
    dismiss_the_next_dialog,
    header,
    mark_document,
    page,
    screenshot,
    sign_in,
    site,
)
from tests.test_pages import PHONE, _axe

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect  # noqa: E402


@pytest.mark.parametrize("config", [{"WEBHOOK_RETRY_SCHEDULE": "0,0.2"}], indirect=True)
def test_redeliver_all_matching_asks_then_shows_the_progress_in_place(
    page: Page,  # noqa: F811
    site: Site,  # noqa: F811
    receiver: Receiver,
    receivers: Any,
    running: Processes,
) -> None:
    failing = receivers(500)
    flaky = site.api.create_webhook(failing.url(), name="Flaky")
    site.api.create_webhook(receiver.url(), name="Ops")
    events = [site.api.publish(data={"id": f"inc_{n}"}) for n in range(3)]
    ended = wait_until(site.api.ended(), DELIVERY / 1000, every=0.2)
    assert len([d for d in ended if d["status"] == "failed"]) == 3
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

    cancel_the_question(page, button)
    assert len(failing.requests) == sent_before
    page.once("dialog", lambda dialog: dialog.accept())
    button.click()
    see_the_progress_in_place(page, button)

    again = failing.wait_for(sent_before + 3, timeout=DELIVERY / 1000)[sent_before:]
    assert sorted(header(r, "webhook-id") or "" for r in again) == sorted(e["id"] for e in events)
    page.get_by_role("link", name="See the redeliveries in the logs").click()
    expect(page).to_have_url(re.compile(rf"webhook_id={flaky['id']}"), timeout=UI)
    rows = page.locator("#log-rows tbody tr")
    expect(rows.locator(".badge", has_text="Succeeded")).to_have_count(3, timeout=DELIVERY)
    no_offer_where_nothing_matches(page)


def no_offer_where_nothing_matches(tab: Page) -> None:
    """A Failed view that matches nothing: the offer's place goes once it is answered."""
    with tab.expect_response(re.compile(r"/logs/redeliver-all\?")):
        tab.goto("/settings/webhooks/logs?status=failed&event_type=task.failed")
    expect(tab.locator("#redeliver-all")).to_have_count(0)
    expect(tab.get_by_text("No deliveries match these filters.")).to_be_visible()


def cancel_the_question(tab: Page, button: Any) -> None:
    """The button asks first; cancelled, nothing starts."""
    asked = dismiss_the_next_dialog(tab)
    button.click()
    expect(button).to_be_visible()
    assert asked and asked[0].startswith("Redeliver all 3 failed deliveries"), asked


def see_the_progress_in_place(tab: Page, button: Any) -> None:
    """The button gives way to a progress bar that fills up without a reload, on a phone."""
    progress = tab.locator("#redeliver-all")
    expect(progress.locator("progress")).to_be_visible()
    expect(button).to_have_count(0)
    expect(progress).to_contain_text("Redelivered 3 deliveries", timeout=DELIVERY)
    screenshot(tab, "logs-redeliver-all.png")
    expect(progress.locator("progress")).to_have_attribute("value", "3")
    assert_not_reloaded(tab)
    assert tab.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert not _axe(tab)
    screenshot(tab, "logs-redeliver-all.png")
