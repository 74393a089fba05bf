"""The dashboard in a real headless Chromium, against a live server, worker and scheduler.

Each test signs in through the login page and asserts what a person sees; deliveries go to real
HTTPS receivers on loopback. Needs Debian's /usr/bin/chromium (never a downloaded browser):
without it the module is skipped, unless REQUIRE_BROWSER is set, then it fails.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"


def _unavailable(reason: str) -> None:
    if os.environ.get("REQUIRE_BROWSER"):
        pytest.fail(f"REQUIRE_BROWSER is set but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


if not os.path.exists(CHROMIUM):
    _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:
    _unavailable("Playwright for Python is not installed (pip install playwright==1.65.2)")


from tests.conftest import Api  # noqa: E402
from tests.processes import Processes  # noqa: E402
from tests.receivers import Received, Receiver  # noqa: E402
from webhooks import accounts  # noqa: E402
from webhooks.models import db  # noqa: E402

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EMAIL = "maya.chen@example.com"
PASSWORD = "correct horse battery"
UI = 5_000  # ms: a page or an HTMX swap answered by the server alone
DELIVERY = 20_000  # ms: worker start-up, an HTTPS attempt and the next live poll (every 3 s)
WEBHOOK_PAGE = re.compile(r"/settings/webhooks/wh_\w+$")
DELIVERY_PAGE = re.compile(r"/settings/webhooks/logs/(dlv_\w+)$")


@dataclass
class Site:
    """The live dashboard of one workspace, and its API."""

    url: str
    api: Api
    workspace_id: str


def header(request: Received, name: str) -> str | None:
    """A request header, whatever the case the sender used."""
    return next((v for k, v in request.headers.items() if k.lower() == name.lower()), None)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def config(config, request):  # type: ignore[no-untyped-def]
    """The conftest config, with overrides a test asks for by indirect parametrization."""
    config.update(getattr(request, "param", {}))
    return config


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def site(app, web, api, workspace) -> Site:  # type: ignore[no-untyped-def]
    """The app served by a real threaded HTTP server, with a dashboard user in the workspace."""
    with app.app_context():
        accounts.create_user(db.session, EMAIL, PASSWORD, workspace["id"])
        db.session.remove()
    return Site(web, api, workspace["id"])


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    """A fresh browser context (no cookies); JavaScript errors and 5xx answers fail the test."""
    context = browser.new_context(base_url=site.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(UI)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"JavaScript error: {error}"))
    tab.on(
        "response",
        lambda r: (
            problems.append(f"HTTP {r.status} for {r.request.method} {r.url}")
            if r.status >= 500
            else None
        ),
    )
    yield tab
    context.close()
    assert not problems, problems


def sign_in(page: Page) -> None:
    page.goto("/login")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/settings/webhooks$"), timeout=UI)


def dismiss_the_next_dialog(page: Page) -> list[str]:
    """Cancel the next confirm dialog; the list it returns gets what the dialog asked."""
    asked: list[str] = []

    def dismiss(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    return asked


def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
    folder = os.environ.get("SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=full_page)


def mark_document(page: Page) -> None:
    """Mark this document: the mark survives HTMX swaps, not a navigation or reload."""
    page.evaluate("window.__marker = 1")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__marker") == 1, "the page was reloaded or navigated away"


# -- tests -------------------------------------------------------------------------------------


def test_sign_in_wrong_password_then_right_then_sign_out(page: Page, site: Site) -> None:
    page.goto("/login")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()

    expect(page.get_by_role("alert")).to_have_text("Invalid email or password", timeout=UI)
    expect(page).to_have_url(re.compile(r"/login$"))
    expect(page.get_by_label("Email")).to_have_value(EMAIL)

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    expect(page).to_have_url(f"{site.url}/settings/webhooks", timeout=UI)
    expect(page.get_by_text("Settings › Webhooks", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="No webhooks yet")).to_be_visible()
    expect(page.get_by_role("link", name="Create Webhook").first).to_be_visible()
    expect(page.get_by_role("table")).to_have_count(0)

    page.get_by_role("button", name="Sign out").click()

    expect(page).to_have_url(re.compile(r"/login$"), timeout=UI)
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    page.goto("/settings/webhooks")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fsettings%2Fwebhooks$"), timeout=UI)
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()


def test_create_webhook_through_the_form(page: Page, site: Site, receiver: Receiver) -> None:
    sign_in(page)
    page.get_by_role("link", name="Create Webhook").first.click()
    expect(page).to_have_url(re.compile(r"/settings/webhooks/new$"), timeout=UI)

    an_http_url_is_refused_next_to_its_field(page, receiver)
    assert site.api.get("/webhooks").json["data"] == []
    page.get_by_role("link", name="Settings › Webhooks").click()
    expect(page.get_by_role("heading", name="No webhooks yet")).to_be_visible(timeout=UI)

    page.get_by_role("link", name="Create Webhook").first.click()
    secret = fill_in_a_good_one(page, receiver)
    page.get_by_role("button", name="Save").click()

    expect(page).to_have_url(WEBHOOK_PAGE, timeout=UI)
    expect(page.get_by_role("heading", level=1)).to_have_text("Ops alerts")
    expect(page.get_by_role("status")).to_contain_text("Webhook “Ops alerts” created.")
    [saved] = site.api.get("/webhooks").json["data"]
    assert set(saved["events"]) == {"incident.*", "task.failed"}
    assert saved["headers"] == {"X-Team": "sre"}
    assert saved["url"] == receiver.url("/ops")
    assert site.api.get(f"/webhooks/{saved['id']}/secret").json["secret"] == secret

    page.get_by_role("link", name="Settings › Webhooks").click()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="Ops alerts"))
    expect(row).to_have_count(1, timeout=UI)
    expect(row).to_contain_text(f"https://127.0.0.1:{receiver.port}/ops")
    expect(row.locator(".badge").first).to_have_text("Active")
    expect(row).to_contain_text("Incident (all), task.failed")


def an_http_url_is_refused_next_to_its_field(page: Page, receiver: Receiver) -> None:
    page.get_by_label("Name", exact=True).fill("Plain HTTP")
    page.get_by_label("URL", exact=True).fill(receiver.url().replace("https://", "http://"))
    page.get_by_label("Incident", exact=True).check()
    page.get_by_role("button", name="Save").click()
    url_field = page.locator(".field", has=page.get_by_label("URL", exact=True))
    expect(url_field.get_by_role("alert")).to_have_text(
        "URL must use https:// (WEBHOOK_ALLOW_HTTP=1 allows http:// for development)", timeout=UI
    )
    expect(page.get_by_label("URL", exact=True)).to_have_attribute("aria-invalid", "true")


def fill_in_a_good_one(page: Page, receiver: Receiver) -> str:
    """A category checkbox, one type of another category, the generated secret (returned) and
    a header."""
    page.get_by_label("Name", exact=True).fill("Ops alerts")
    page.get_by_label("URL", exact=True).fill(receiver.url("/ops"))
    page.get_by_label("Incident", exact=True).check()
    covered = page.get_by_label("incident.created")
    expect(covered).to_be_checked()  # the category covers its types
    expect(covered).to_be_disabled()
    page.get_by_label("task.failed").check()

    secret_input = page.get_by_label("Secret", exact=True)
    expect(secret_input).to_have_attribute("type", "password")
    page.get_by_role("button", name="Reveal").click()
    expect(secret_input).to_have_attribute("type", "text")
    expect(secret_input).to_have_value(re.compile(r"^whsec_\S+$"))
    secret = secret_input.input_value()

    expect(page.get_by_label("Header name")).to_have_count(1)
    page.get_by_role("button", name="Add header").click()
    expect(page.get_by_label("Header name")).to_have_count(2, timeout=UI)
    page.get_by_label("Header name").last.fill("X-Team")
    page.get_by_label("Header value").last.fill("sre")
    expect(page.get_by_label("Active", exact=True)).to_be_checked()
    return secret


def test_send_test_event_shows_the_result_in_place(
    page: Page, site: Site, receiver: Receiver, running: Processes
) -> None:
    webhook = site.api.create_webhook(receiver.url())
    sign_in(page)
    page.get_by_role("link", name="Ops", exact=True).click()
    expect(page).to_have_url(f"{site.url}/settings/webhooks/{webhook['id']}", timeout=UI)
    mark_document(page)
    activity = page.locator("#activity")
    expect(activity).to_contain_text("No attempts in the last 24 hours")

    page.get_by_label("Event type", exact=True).select_option("incident.resolved")
    page.get_by_role("button", name="Send Test Event").click()

    result = page.locator("#test-result")
    expect(result.locator(".badge")).to_have_text("Succeeded", timeout=DELIVERY)
    expect(result).to_contain_text("HTTP 200")
    expect(result.locator("code").first).to_have_text("incident.resolved")
    expect(result.locator("pre").first).to_contain_text('"type": "incident.resolved"')
    expect(result.locator("pre").first).to_contain_text("X-CloudThinker-Event: incident.resolved")
    # The recent deliveries below update live too.
    expect(page.locator("#recent")).to_contain_text("incident.resolved", timeout=DELIVERY)
    # So do the activity charts, once the attempt has ended.
    expect(activity).to_contain_text("1 of 1 deliveries", timeout=UI)
    expect(activity).not_to_contain_text("No attempts in the last 24 hours")
    screenshot(page, "webhook-test-event.png")
    assert_not_reloaded(page)

    assert len(receiver.requests) == 1
    [received] = receiver.requests
    assert header(received, "X-CloudThinker-Event") == "incident.resolved"
    assert received.json()["type"] == "incident.resolved"


def test_pause_stops_deliveries_and_resume_restarts_them(
    page: Page, site: Site, receiver: Receiver, running: Processes
) -> None:
    webhook = site.api.create_webhook(receiver.url())
    sign_in(page)
    page.goto(f"/settings/webhooks/{webhook['id']}")
    switch = page.get_by_role("switch", name="Active")
    state = page.locator("#active-state")
    expect(switch).to_be_checked()
    expect(state).to_have_text("Active")
    mark_document(page)

    page.locator("#active-switch .slider").click()  # what a person clicks; saves by itself
    expect(state).to_have_text("Paused", timeout=UI)
    expect(switch).not_to_be_checked()
    assert site.api.get(f"/webhooks/{webhook['id']}").json["active"] is False

    paused_event = site.api.publish(data={"id": "inc_paused"})
    assert paused_event["delivery_count"] == 0
    assert not [d for d in site.api.deliveries() if d["event_id"] == paused_event["id"]]

    switch.focus()  # the swapped-in switch, from the keyboard this time
    page.keyboard.press("Space")
    expect(state).to_have_text("Active", timeout=UI)
    expect(switch).to_be_checked()
    expect(switch).to_be_focused()  # the keyboard user keeps their place after the swap
    assert_not_reloaded(page)
    assert site.api.get(f"/webhooks/{webhook['id']}").json["active"] is True

    # A later event goes through; the worker takes jobs in order, so anything queued for the
    # paused event would have arrived first. Only the later one ever arrives.
    later_event = site.api.publish(data={"id": "inc_after"})
    assert later_event["delivery_count"] == 1
    receiver.wait_for(1, timeout=DELIVERY / 1000)
    expect(page.locator("#recent .badge.succeeded")).to_have_count(1, timeout=DELIVERY)
    assert [header(r, "webhook-id") for r in receiver.requests] == [later_event["id"]]
    assert {d["event_id"] for d in site.api.deliveries()} == {later_event["id"]}


@pytest.mark.parametrize(
    "config", [{"WEBHOOK_RETRY_SCHEDULE": "0"}], indirect=True, ids=["single-attempt"]
)
def test_logs_live_filters_attempts_and_redeliver(
    page: Page, site: Site, receiver: Receiver, receivers: Any, running: Processes
) -> None:
    failing = receivers(500)
    site.api.create_webhook(receiver.url(), name="Ops")
    site.api.create_webhook(failing.url(), name="Flaky")
    site.api.create_webhook(receiver.url("/pager"), name="Pager", active=False)
    sign_in(page)
    page.get_by_role("link", name="Logs", exact=True).click()
    expect(page).to_have_url(re.compile(r"/settings/webhooks/logs$"), timeout=UI)
    expect(page.get_by_role("heading", name="No deliveries yet")).to_be_visible()
    mark_document(page)

    events = {
        t: site.api.publish(t, {"id": f"x_{i}"})
        for i, t in enumerate(["incident.created", "task.failed", "finding.created"])
    }
    assert all(e["delivery_count"] == 2 for e in events.values())

    rows = page.locator("#log-rows tbody tr")
    see_the_rows_come_in_live(page, rows)
    filter_by_status_then_by_type(page, rows)
    failed_task = events["task.failed"]["id"]
    original = open_the_failed_delivery(page, rows, failing, failed_task)
    copy_its_id_and_body(page, original, failing, failed_task)
    failing.answer(200)  # the receiver is fixed; send it again
    redeliver_it(page, original, failing, failed_task)

    page.get_by_role("link", name="Webhooks", exact=True).click()
    expect(page.get_by_role("row")).to_have_count(4, timeout=UI)
    expect(page.get_by_role("row", name=re.compile("Pager"))).to_contain_text("Paused")
    screenshot(page, "webhooks.png")


def see_the_rows_come_in_live(page: Page, rows: Any) -> None:
    """Each event's two deliveries show up as they end, without a reload."""
    expect(rows).to_have_count(6, timeout=DELIVERY)
    expect(rows.locator(".badge", has_text="Failed")).to_have_count(3, timeout=DELIVERY)
    expect(rows.locator(".badge", has_text="Succeeded")).to_have_count(3, timeout=DELIVERY)
    assert_not_reloaded(page)
    screenshot(page, "logs.png")


def filter_by_status_then_by_type(page: Page, rows: Any) -> None:
    page.get_by_label("Status", exact=True).select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"[?&]status=failed(&|$)"), timeout=UI)
    expect(rows).to_have_count(3)
    expect(rows.locator(".badge")).to_have_text(["Failed"] * 3)
    expect(rows.locator("td:first-child")).to_have_text(["Flaky"] * 3)

    page.get_by_label("Status", exact=True).select_option("")
    page.get_by_label("Event type", exact=True).select_option("task.failed")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"[?&]event_type=task\.failed(&|$)"), timeout=UI)
    expect(rows).to_have_count(2)
    expect(rows.locator("code")).to_have_text(["task.failed", "task.failed"])


def open_the_failed_delivery(page: Page, rows: Any, failing: Receiver, event_id: str) -> str:
    """Its page shows the one attempt, request and response; returns the delivery's id."""
    rows.filter(has_text="Flaky").get_by_role("link", name="task.failed").click()
    expect(page).to_have_url(DELIVERY_PAGE, timeout=UI)
    original = DELIVERY_PAGE.search(page.url).group(1)  # type: ignore[union-attr]
    attempts = page.locator("#attempts")
    expect(page.get_by_role("heading", level=1)).to_have_text("task.failed to Flaky")
    expect(attempts.locator(".attempt")).to_have_count(1)
    expect(attempts.locator(".attempt h2")).to_contain_text("Failed")
    expect(attempts.locator(".attempt h2")).to_contain_text("HTTP 500")
    expect(attempts).to_contain_text(f"POST {failing.url()}")
    expect(attempts).to_contain_text("X-CloudThinker-Event: task.failed")
    expect(attempts).to_contain_text(f'"id": "{event_id}"')
    response = attempts.locator("h3", has_text="Response").locator("xpath=..")
    expect(response.locator("pre").first).to_contain_text("500")
    return original


def copy_its_id_and_body(page: Page, delivery_id: str, failing: Receiver, event_id: str) -> None:
    """Ids and the body as it was sent are one click from the clipboard."""
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy delivery ID").click()
    expect(page.get_by_role("button", name="Copy delivery ID")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == delivery_id
    page.get_by_role("button", name="Copy body of attempt 1").click()
    sent = page.evaluate("navigator.clipboard.readText()")
    (received,) = [r for r in failing.requests if header(r, "webhook-id") == event_id]
    assert sent.encode() == received.body


def redeliver_it(page: Page, delivery_id: str, failing: Receiver, event_id: str) -> None:
    """Redeliver leads to the new delivery's page, which shows its attempt when it ends."""
    sent_before = len(failing.requests)
    page.get_by_role("button", name="Redeliver").click()
    expect(page).not_to_have_url(re.compile(rf"/{delivery_id}$"), timeout=UI)
    expect(page).to_have_url(DELIVERY_PAGE)
    expect(page.get_by_role("status")).to_contain_text("Redelivery queued")
    attempts = page.locator("#attempts")
    expect(attempts.locator(".badge").first).to_have_text("Succeeded", timeout=DELIVERY)
    expect(attempts.locator(".attempt h2")).to_contain_text("HTTP 200")

    again = failing.wait_for(sent_before + 1, timeout=DELIVERY / 1000)[sent_before]
    assert header(again, "webhook-id") == event_id
    assert header(again, "X-CloudThinker-Event") == "task.failed"
    assert header(again, "X-CloudThinker-Delivery") != delivery_id


def test_create_form_works_with_the_keyboard(page: Page, site: Site, receiver: Receiver) -> None:
    sign_in(page)
    page.goto("/settings/webhooks/new")

    page.get_by_label("Name", exact=True).focus()
    page.keyboard.type("Keyboard hook")
    page.keyboard.press("Tab")
    expect(page.get_by_label("URL", exact=True)).to_be_focused()
    page.keyboard.type(receiver.url("/keys"))
    page.keyboard.press("Tab")
    expect(page.get_by_label("All events")).to_be_focused()
    page.keyboard.press("Space")
    expect(page.get_by_label("All events")).to_be_checked()

    save = page.get_by_role("button", name="Save")
    visited: list[str] = []
    for _ in range(60):
        if save.evaluate("button => button === document.activeElement"):
            break
        page.keyboard.press("Tab")
        visited.append(
            page.evaluate(
                "() => { const e = document.activeElement;"
                " return e.name || e.id || e.textContent.trim(); }"
            )
        )
    expect(save).to_be_focused()
    for reachable in ("secret", "header_name", "header_value", "Add header", "active"):
        assert reachable in visited, f"{reachable!r} was not reached with Tab: {visited}"
    page.keyboard.press("Enter")

    expect(page).to_have_url(WEBHOOK_PAGE, timeout=UI)
    expect(page.get_by_role("heading", level=1)).to_have_text("Keyboard hook")
    [saved] = site.api.get("/webhooks").json["data"]
    assert (saved["name"], saved["url"], saved["events"]) == (
        "Keyboard hook",
        receiver.url("/keys"),
        ["*"],
    )


def test_check_a_signature_on_a_delivery_page(
    page: Page, site: Site, receiver: Receiver, running: Processes
) -> None:
    webhook = site.api.create_webhook(receiver.url())
    site.api.publish(data={"id": "inc_7", "title": "Disk full"})
    [received] = receiver.wait_for(1, timeout=DELIVERY / 1000)
    delivery_id = header(received, "X-CloudThinker-Delivery")
    headers = "\n".join(f"{k}: {v}" for k, v in received.headers.items())
    sign_in(page)
    page.goto(f"/settings/webhooks/{webhook['id']}")
    expect(page.locator("#verify")).to_contain_text("func Verify(")
    page.get_by_role("link", name="Check a signature").click()
    expect(page).to_have_url(re.compile(rf"/logs/{delivery_id}#check-signature$"), timeout=UI)
    mark_document(page)

    # What a framework hands over after parsing: the same data, re-serialised.
    page.get_by_label("Body", exact=True).fill(json.dumps(json.loads(received.body), indent=2))
    page.get_by_label("Headers", exact=True).fill(headers)
    page.get_by_label("Secret", exact=True).fill(webhook["secret"])
    page.get_by_role("button", name="Check signature").click()

    result = page.locator("#signature-result")
    expect(result.locator(".badge").first).to_have_text("Does not verify", timeout=UI)
    expect(result).to_contain_text("body_modified")
    expect(result).to_contain_text("re-serialised JSON")
    expect(page.locator("#signed-standard")).to_contain_text(
        f"{header(received, 'webhook-id')}.{header(received, 'webhook-timestamp')}."
    )

    page.get_by_label("Body", exact=True).fill(received.body.decode())
    page.get_by_role("button", name="Check signature").click()
    expect(result.locator(".badge").first).to_have_text("Verifies", timeout=UI)

    page.get_by_label("Replay to URL").fill("http://localhost:4000/mine")
    expect(page.locator("#replay-command")).to_contain_text(
        "curl -sS http://localhost:4000/mine", timeout=UI
    )
    assert_not_reloaded(page)
