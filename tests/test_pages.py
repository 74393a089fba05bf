"""Every dashboard page fits a phone: 390 px wide, no sideways scrolling, every section reachable.

Pages are filled as a real workspace would fill them (long names and URLs, templates, custom
headers, failed and retried deliveries with their attempts), then opened in a real headless
Chromium at 390 x 844, the size of a common phone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.receivers import Receiver, Reply
from tests.test_browser import (  # noqa: F401  (fixtures used by name)
    CHROMIUM_ARGS,
    EMAIL,
    PASSWORD,
    UI,
    Site,
    browser,
    config,
    dismiss_the_next_dialog,
    screenshot,
    sign_in,
    site,
)

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

PHONE = {"width": 390, "height": 844}

# What sticks out, for a failure message a person can act on.
_WIDEST = """() => {
  const limit = document.documentElement.clientWidth;
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.right <= limit + 1) continue;
    let inner = el.parentElement, clipped = false;
    while (inner) {
      const style = getComputedStyle(inner);
      if (['auto', 'scroll', 'hidden'].includes(style.overflowX)) { clipped = true; break; }
      inner = inner.parentElement;
    }
    const name = `${el.tagName.toLowerCase()}.${el.className}`;
    if (!clipped) out.push(`${name} right=${Math.round(box.right)}`);
  }
  return out.slice(0, 8);
}"""


@pytest.fixture
def phone(browser: Browser, site: Site) -> Iterator[Page]:  # noqa: F811
    context = browser.new_context(base_url=site.url, viewport=PHONE, is_mobile=True)
    context.set_default_timeout(UI)
    tab = context.new_page()
    sign_in(tab)
    yield tab
    context.close()


@pytest.fixture
def failing_target(receivers) -> Receiver:  # type: ignore[no-untyped-def]
    return receivers(Reply(status=503, body=b"upstream unavailable, try again later " * 20))


@pytest.fixture
def filled(site: Site, service, receiver, failing_target) -> dict[str, Any]:  # noqa: F811
    """A workspace with the kinds of content that make pages wide."""
    long_name = "Production incident pipeline for the platform operations team"
    ok = site.api.create_webhook(
        receiver.url("/a/very/long/path/that/keeps/going/and/going/until/it/wraps/twice"),
        name=long_name,
        headers={"X-Team-Identifier-For-Routing": "platform-operations-and-reliability-eng"},
    )
    failing = site.api.create_webhook(failing_target.url(), name="Failing receiver")
    site.api.create_webhook(
        "https://hooks.slack.com/services/T0000000/B0000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        name="Slack #ops",
        events=["*"],
        template="slack",
        active=False,
    )
    for title in ("Disk almost full on db-primary-eu-west-1", "CPU above 95 % for 10 minutes"):
        site.api.publish(data={"title": title, "severity": "high", "description": "x" * 400})
    deliveries = site.api.deliveries
    service.run_until(lambda: len([d for d in deliveries() if d["attempt_count"]]) >= 4)
    return {"ok": ok, "failing": failing, "delivery": deliveries()[0]["id"]}


def _pages(filled: dict[str, Any]) -> list[str]:
    return [
        "/settings/webhooks",
        "/settings/webhooks/new",
        f"/settings/webhooks/{filled['ok']['id']}",
        f"/settings/webhooks/{filled['ok']['id']}/edit",
        f"/settings/webhooks/{filled['failing']['id']}",
        "/settings/webhooks/logs",
        "/settings/webhooks/logs?status=failed",
        "/settings/webhooks/logs/redeliver-all?status=failed",
        f"/settings/webhooks/logs/{filled['delivery']}",
        "/settings/api-keys",
        "/settings/users",
        "/settings/notifications",
        "/settings/event-types",
    ]


def test_every_page_fits_a_phone_without_sideways_scrolling(
    phone: Page, filled: dict[str, Any]
) -> None:
    too_wide = {}
    for path in _pages(filled):
        phone.goto(path)
        phone.wait_for_load_state("networkidle")
        width = phone.evaluate("document.documentElement.scrollWidth")
        if width > PHONE["width"]:
            too_wide[path] = (width, phone.evaluate(_WIDEST))
        screenshot(phone, "phone" + path.replace("/", "-") + ".png")
    assert not too_wide, "\n".join(f"{p}: {w} px wide, {why}" for p, (w, why) in too_wide.items())


def test_the_navigation_reaches_every_section_on_a_phone(phone: Page) -> None:
    nav = phone.get_by_role("navigation", name="Settings")
    for name in ("Webhooks", "Logs", "API keys", "Users", "Notifications", "Event types"):
        link = nav.get_by_role("link", name=name, exact=True)
        expect(link).to_be_visible()
        box = link.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    nav.get_by_role("link", name="Event types", exact=True).click()
    expect(phone).to_have_url(f"{phone.url.split('/settings')[0]}/settings/event-types")
    # The header stays short enough to leave the page's content in view.
    header = phone.locator("header.topbar").bounding_box()
    assert header is not None and header["height"] <= 140, header


# -- accessibility -----------------------------------------------------------------------------

SERIOUS = ("serious", "critical")


def _axe(page: Page) -> list[str]:
    """Serious and critical axe-core violations on the page as it is now, one line each."""
    from axe_playwright_python.base import AXE_SCRIPT

    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE_SCRIPT)
    found = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(" ".join(node["target"]) for node in v["nodes"][:3])
        for v in found
        if v["impact"] in SERIOUS
    ]


def _states(page: Page, filled: dict[str, Any]) -> Iterator[str]:
    """Each page, then the states a person brings it to; yields a name for each."""
    for path in _pages(filled):
        page.goto(path)
        page.wait_for_load_state("networkidle")
        yield path
    page.goto("/settings/webhooks/new")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("[aria-invalid=true]").first).to_be_visible()
    yield "the form with errors"
    page.goto("/settings/webhooks/logs?status=failed&event_type=task.created")
    yield "logs with nothing matching"
    page.goto(f"/settings/webhooks/{filled['ok']['id']}")
    page.get_by_role("button", name="Send Test Event").click()
    expect(page.locator(".test-result")).to_be_visible()
    yield "a webhook with a test result"
    page.goto("/settings/api-keys")
    page.get_by_label("Name").fill("old publisher")
    page.get_by_role("button", name="Create API key").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke old publisher").click()
    expect(page.get_by_text("Revoked").first).to_be_visible()
    yield "API keys with a revoked key"
    page.goto("/settings/users")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_role("button", name="Invite").click()
    expect(page.locator("#invite-email[aria-invalid=true]")).to_be_visible()
    yield "users with an invitation refused"
    page.get_by_label("Current password").fill("not it")
    page.get_by_label("New password", exact=True).fill("short")
    page.get_by_role("button", name="Change password").click()
    expect(page.locator("#current_password[aria-invalid=true]")).to_be_visible()
    yield "users with password errors"
    page.get_by_label("Email").fill("a.very.long.name.for.a.new.colleague@operations.example.com")
    page.get_by_role("button", name="Invite").click()
    link = page.locator("#invite-link").inner_text()
    yield "users with a new invitation link"
    page.goto(link)
    expect(page.get_by_role("heading", name="Choose your password")).to_be_visible()
    yield "the invitation page"
    page.get_by_label("Password", exact=True).fill("short")
    page.get_by_role("button", name="Set password and sign in").click()
    expect(page.locator("#password[aria-invalid=true]")).to_be_visible()
    yield "the invitation page with errors"


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_no_page_in_any_state_has_a_serious_accessibility_violation(
    browser: Browser,  # noqa: F811
    site: Site,  # noqa: F811
    filled: dict[str, Any],
    size: str,
) -> None:
    viewport = PHONE if size == "phone" else {"width": 1280, "height": 900}
    context = browser.new_context(base_url=site.url, viewport=viewport)
    context.set_default_timeout(UI)
    page = context.new_page()
    page.goto("/login")
    found = {"/login": _axe(page)}
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{site.url}/settings/webhooks")
    for state in _states(page, filled):
        found[state] = _axe(page)
    context.close()
    problems = {state: lines for state, lines in found.items() if lines}
    assert not problems, "\n".join(f"{s}:\n  " + "\n  ".join(ls) for s, ls in problems.items())


def test_revoking_an_api_key_asks_first_and_cancel_keeps_it(phone: Page) -> None:
    phone.goto("/settings/api-keys")
    phone.get_by_label("Name").fill("billing publisher")
    phone.get_by_role("button", name="Create API key").click()
    revoke = phone.get_by_role("button", name="Revoke billing publisher")
    asked = dismiss_the_next_dialog(phone)
    revoke.click()
    expect(revoke).to_be_visible()
    assert asked and "Revoke billing publisher?" in asked[0], asked
    phone.goto("/settings/api-keys")  # a fresh page: the key is still there
    expect(phone.get_by_role("button", name="Revoke billing publisher")).to_be_visible()

    phone.once("dialog", lambda dialog: dialog.accept())
    phone.get_by_role("button", name="Revoke billing publisher").click()
    expect(phone.get_by_role("button", name="Revoke billing publisher")).to_have_count(0)
    expect(phone.get_by_text("Revoked").first).to_be_visible()


def test_an_invited_user_sets_a_password_in_another_browser_and_removal_signs_them_out(
    browser: Browser,  # noqa: F811
    phone: Page,
) -> None:
    phone.goto("/settings/users")
    phone.get_by_label("Email").fill("sam.rivera@example.com")
    phone.get_by_role("button", name="Invite").click()
    link = phone.locator("#invite-link")
    expect(link).to_contain_text("/invite/")
    phone.get_by_role("button", name="Copy").click()
    expect(phone.get_by_role("button", name="Copied")).to_be_visible()
    url = link.inner_text()
    screenshot(phone, "phone-settings-users-invited.png")

    other = browser.new_context(viewport=PHONE, is_mobile=True)
    other.set_default_timeout(UI)
    sam = other.new_page()
    sam.goto(url)
    expect(sam.get_by_text("sam.rivera@example.com")).to_be_visible()
    sam.get_by_label("Password", exact=True).fill("sams own password")
    sam.get_by_label("Confirm password").fill("sams own pasword")
    sam.get_by_role("button", name="Set password and sign in").click()
    expect(sam.locator("#confirm_password-error")).to_contain_text("differ")
    screenshot(sam, "phone-invite-errors.png")
    sam.get_by_label("Password", exact=True).fill("sams own password")
    sam.get_by_label("Confirm password").fill("sams own password")
    sam.keyboard.press("Enter")
    expect(sam).to_have_url(re.compile(r"/settings/webhooks$"))
    expect(sam.get_by_text("Your password is set")).to_be_visible()
    sam.goto(url)  # the link worked once
    expect(sam.get_by_role("heading", name="This link no longer works")).to_be_visible()

    phone.goto("/settings/users")
    expect(phone.get_by_role("row", name=re.compile("sam.rivera@example.com"))).not_to_contain_text(
        "Invited"
    )
    phone.once("dialog", lambda dialog: dialog.accept())
    phone.get_by_role("button", name="Remove sam.rivera@example.com").click()
    expect(phone.get_by_text("sam.rivera@example.com was removed")).to_be_visible()
    sam.goto(url.split("/invite/")[0] + "/settings/webhooks")
    expect(sam).to_have_url(re.compile(r"/login"))
    other.close()


# -- time zones --------------------------------------------------------------------------------


def test_times_are_shown_and_typed_in_the_browsers_time_zone_while_urls_keep_utc(
    browser: Browser,  # noqa: F811
    site: Site,  # noqa: F811
    filled: dict[str, Any],
) -> None:
    context = browser.new_context(base_url=site.url, timezone_id="Asia/Tokyo")  # UTC+9
    context.set_default_timeout(UI)
    page = context.new_page()
    sign_in(page)

    page.goto("/settings/webhooks/logs")
    expect(page.get_by_text("Times are in your time zone, Asia/Tokyo")).to_be_visible()
    hover = page.locator("table.logs time").first.get_attribute("title") or ""
    assert "JST" in hover and "UTC" in hover, hover

    page.get_by_label("From").fill("2026-03-10T18:30:00")  # 09:30 UTC
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"since=2026-03-10T09(:|%3A)30(:|%3A)00Z"))
    expect(page.get_by_label("From")).to_have_value(re.compile(r"^2026-03-10T18:30(:00)?$"))

    page.goto(f"/settings/webhooks/{filled['ok']['id']}")
    expect(page.get_by_text("Times in Asia/Tokyo")).to_be_visible()
    context.close()
