"""Every invalid field of the webhook form at once, in a real Chromium (API.md section 6).

The summary of the problems takes the focus, each of its links takes the focus to its field,
each field is marked next to its message, and the page still fits a phone and passes axe-core.
Uses the live server and browser of tests/test_browser.py (skipped without Chromium).
"""

from __future__ import annotations

import re

from tests.test_browser import (  # noqa: F401  (fixtures)
    UI,
    Browser,
    Page,
    Site,
    browser,
    config,
    expect,
    page,
    screenshot,
    sign_in,
    site,
)
from tests.test_pages import PHONE, _axe, phone  # noqa: F401  (fixtures)


def test_an_empty_form_shows_every_problem_and_the_summary_leads_to_each(
    page: Page,  # noqa: F811
    site: Site,  # noqa: F811
) -> None:
    sign_in(page)
    page.goto("/settings/webhooks/new")
    page.get_by_role("button", name="Save").click()

    summary = page.locator("#error-summary")
    expect(summary).to_be_focused(timeout=UI)
    expect(summary.get_by_role("heading")).to_have_text("There are 3 problems with this webhook")
    name = page.get_by_label("Name", exact=True)
    url = page.get_by_label("URL", exact=True)
    events = page.get_by_role("group", name="Events")
    for field, message in (
        (name, "Name is required"),
        (url, "URL is required"),
        (events, "choose at least one event type"),
    ):
        expect(field).to_have_attribute("aria-invalid", "true")
        expect(field).to_have_accessible_description(re.compile(re.escape(message)))
    assert site.api.get("/webhooks").json["data"] == []

    summary.get_by_role("link", name="URL is required").click()
    expect(url).to_be_focused()
    summary.get_by_role("link", name="Events: choose at least one event type").click()
    expect(page.get_by_label("All events")).to_be_focused()
    summary.get_by_role("link", name="Name is required").click()
    expect(name).to_be_focused()

    # Fixing one leaves the others: still all the rest at once, and what was typed stays.
    name.fill("Ops alerts")
    page.get_by_role("button", name="Save").click()
    expect(summary.get_by_role("heading")).to_have_text("There are 2 problems with this webhook")
    expect(summary).to_be_focused()
    expect(name).to_have_value("Ops alerts")
    expect(name).not_to_have_attribute("aria-invalid", "true")


def test_a_jira_template_marks_each_missing_setting(
    page: Page,  # noqa: F811
    site: Site,  # noqa: F811
) -> None:
    sign_in(page)
    page.goto("/settings/webhooks/new?template=jira")
    page.get_by_label("URL", exact=True).fill("https://acme.atlassian.net/rest/api/2/issue")
    page.get_by_label("Email", exact=True).fill("bot@acme.test")
    page.get_by_role("button", name="Save").click()

    summary = page.locator("#error-summary")
    expect(summary).to_be_focused(timeout=UI)
    project_key = page.get_by_label("Project key")
    api_token = page.get_by_label("API token")
    for field, message in (
        (project_key, "Project key is required"),
        (api_token, "API token is required"),
    ):
        expect(field).to_have_attribute("aria-invalid", "true")
        expect(field).to_have_accessible_description(re.compile(re.escape(message)))
        setting = page.locator("div.field", has=field)
        expect(setting.get_by_role("alert")).to_have_text(message)
    expect(page.get_by_label("Email", exact=True)).to_have_value("bot@acme.test")
    expect(page.get_by_label("Email", exact=True)).not_to_have_attribute("aria-invalid", "true")

    summary.get_by_role("link", name="API token is required").click()
    expect(api_token).to_be_focused()
    assert site.api.get("/webhooks").json["data"] == []


def test_the_form_with_every_problem_fits_a_phone_and_passes_axe(phone: Page) -> None:  # noqa: F811
    phone.goto("/settings/webhooks/new?template=jira")
    phone.get_by_label("URL", exact=True).fill("http://" + "very-long-host-name." * 6 + "example")
    phone.get_by_role("button", name="Save").click()
    expect(phone.locator("#error-summary")).to_be_focused(timeout=UI)
    phone.wait_for_load_state("networkidle")

    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert _axe(phone) == []
    phone.evaluate("window.scrollTo(0, 0)")
    screenshot(phone, "phone-form-errors.png", full_page=False)
