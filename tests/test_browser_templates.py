"""A live template in a real Chromium: editing a Jira webhook's settings changes what is sent.

Uses the live server, worker and browser of tests/test_browser.py (skipped without Chromium).
"""

from __future__ import annotations

import base64

from tests.conftest import Api
from tests.receivers import Receiver
from tests.test_browser import (  # noqa: F401  (fixtures)
    DELIVERY,
    UI,
    Page,
    Site,
    browser,
    config,
    expect,
    header,
    page,
    sign_in,
    site,
)

OLD_TOKEN = "atl-old-token-1111"
NEW_TOKEN = "atl-new-token-2222"


def edit_a_jira_webhook(tab: Page, api: Api, receiver: Receiver, events: list[str]) -> str:
    """Sign in and open the edit page of a new Jira webhook to the receiver; its id."""
    hook = api.create_webhook(
        receiver.url("/rest/api/2/issue"),
        name="Jira issues",
        events=events,
        template="jira",
        template_params={"project_key": "OPS", "email": "bot@acme.test", "api_token": OLD_TOKEN},
    )
    sign_in(tab)
    tab.goto(f"/settings/webhooks/{hook['id']}/edit")
    return hook["id"]


def test_editing_jira_settings_changes_the_next_delivery(  # noqa: F811  (fixtures)
    page: Page,  # noqa: F811
    site: Site,  # noqa: F811
    receiver: Receiver,
    running,
) -> None:
    edit_a_jira_webhook(page, site.api, receiver, events=["recommendation.created"])

    # The template's settings are labelled fields; the token is masked, never shown.
    expect(page.get_by_label("Project key")).to_have_value("OPS")
    expect(page.get_by_label("Issue type")).to_have_value("Task")
    expect(page.get_by_label("Email", exact=True)).to_have_value("bot@acme.test")
    expect(page.get_by_label("API token")).to_have_value("••••1111")
    expect(page.locator("#preview-body")).to_contain_text('"key": "OPS"', timeout=UI)
    assert OLD_TOKEN not in page.content()

    page.get_by_label("Project key").fill("NEWKEY")
    expect(page.locator("#preview-body")).to_contain_text('"key": "NEWKEY"', timeout=UI)
    page.get_by_label("API token").fill(NEW_TOKEN)
    page.get_by_role("button", name="Save").click()

    expect(page.get_by_role("status").first).to_contain_text("Webhook saved.", timeout=UI)
    settings = page.locator("dl.props")
    expect(settings).to_contain_text("Jira")
    expect(settings).to_contain_text("the body is built from its settings")
    expect(settings).to_contain_text("NEWKEY")
    assert NEW_TOKEN not in page.content()

    page.get_by_label("Event type", exact=True).select_option("recommendation.created")
    page.get_by_role("button", name="Send Test Event").click()
    expect(page.locator("#test-result .badge")).to_have_text("Succeeded", timeout=DELIVERY)
    assert NEW_TOKEN not in page.content()

    [received] = receiver.requests
    assert received.json()["fields"]["project"]["key"] == "NEWKEY"
    basic = base64.b64encode(f"bot@acme.test:{NEW_TOKEN}".encode()).decode()
    assert header(received, "Authorization") == f"Basic {basic}"


def test_customise_the_body_copies_it_and_says_so(  # type: ignore[no-untyped-def]
    page: Page,  # noqa: F811
    site: Site,  # noqa: F811
    receiver: Receiver,
):
    hook_id = edit_a_jira_webhook(page, site.api, receiver, events=["*"])

    page.get_by_role("button", name="Customise the body").click()

    body = page.get_by_label("Body (customised)")
    expect(body).to_contain_text('"key": "OPS"', timeout=UI)
    expect(page.locator("#transform-note")).to_contain_text("no longer change it")
    body.fill('{"fields": {"project": {"key": "OPS"}, "summary": "{{ data.title }}"}}')
    page.get_by_role("button", name="Save").click()

    expect(page.locator("dl.props")).to_contain_text("body customised", timeout=UI)
    saved = site.api.get(f"/webhooks/{hook_id}").json
    assert saved["transform_source"] == "custom"
    assert saved["transform"]["fields"]["summary"] == "{{ data.title }}"


def test_the_slack_template_fills_in_its_rate_limit(  # type: ignore[no-untyped-def]
    page: Page,  # noqa: F811
    site: Site,  # noqa: F811
    receiver: Receiver,
) -> None:
    sign_in(page)
    page.goto("/settings/webhooks/new")
    page.get_by_role("link", name="Slack", exact=True).click()
    expect(page.get_by_label("Rate limit")).to_have_value("1", timeout=UI)
    expect(page.get_by_label("Ordering key")).to_have_value("")
    page.get_by_label("Name", exact=True).fill("Team channel")
    page.get_by_label("URL", exact=True).fill(receiver.url("/slack"))
    page.get_by_label("Rate limit").fill("0.5")
    page.get_by_role("button", name="Save").click()

    expect(page.get_by_role("status").first).to_contain_text("created", timeout=UI)
    expect(page.locator("dl.props")).to_contain_text("at most 0.5 per second")
