"""Every invalid field of the webhook form answered at once (API.md section 6), over HTTP.

Each problem is shown next to its field, which says so (`aria-invalid`) and points at the
message (`aria-describedby`); a summary at the top lists them all, each a link to its field;
nothing is saved and what was typed stays in the form.
"""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser

from tests.session import Session, text


class _Tags(HTMLParser):
    """Every start tag of a page with its attributes, and the elements that have an id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))


class Form:
    """A form page as a person and a screen reader meet it."""

    def __init__(self, html: str) -> None:
        self.html = html
        self.tags = _Tags(html).tags
        self.by_id = {attrs["id"]: (tag, attrs) for tag, attrs in self.tags if "id" in attrs}

    def text_of(self, element_id: str) -> str:
        found = re.search(rf'id="{re.escape(element_id)}"[^>]*>(.*?)</', self.html, re.S)
        assert found, f"no element {element_id!r}"
        return unescape(text(found.group(1))).strip()

    def invalid(self) -> list[str]:
        """The ids of the elements marked invalid, in page order."""
        return [attrs.get("id", tag) for tag, attrs in self.tags if attrs.get("aria-invalid")]

    def error_of(self, element_id: str) -> str:
        """The message an invalid element points at: it must say it is invalid and name it."""
        _, attrs = self.by_id[element_id]
        assert attrs.get("aria-invalid") == "true", attrs
        described = attrs.get("aria-describedby", "").split()
        errors = [ref for ref in described if ref.endswith("-error")]
        assert len(errors) == 1, attrs
        assert all(ref in self.by_id for ref in described), (described, attrs)
        return self.text_of(errors[0])

    def summary(self) -> tuple[str, list[tuple[str, str]]]:
        """The summary's heading and its (link target, text) items."""
        _, attrs = self.by_id["error-summary"]
        assert attrs.get("tabindex") == "-1", attrs  # it can take the focus
        block = re.search(r'<section class="error-summary".*?</section>', self.html, re.S)
        assert block
        links = re.findall(r'<a href="#([^"]+)">(.*?)</a>', block.group(0), re.S)
        for target, _ in links:
            assert target in self.by_id, f"the summary links to #{target}, which is not there"
        return self.text_of("error-summary-title"), [
            (t, unescape(text(s)).strip()) for t, s in links
        ]


def submit(user: Session, path: str, **fields):  # type: ignore[no-untyped-def]
    """The form at `path` sent as the browser sends it, untouched fields as they were shown."""
    page = user.get(path).text
    data: dict[str, object] = {
        "name": "",
        "url": "",
        "secret": re.search(r'id="secret"[^>]*value="([^"]*)"', page).group(1),  # type: ignore[union-attr]
        "active": "on",
        "header_name": "",
        "header_value": "",
        "rate_limit": "",
        "ordering_key": "",
        "transform": "",
    }
    template = re.search(r'name="template" value="([^"]*)"', page)
    if template and template.group(1):
        data["template"] = template.group(1)
    data.update(fields)
    return user.post(path, data=data)


def test_an_empty_form_shows_every_problem_at_once(user, api):
    response = submit(user, "/settings/webhooks/new")

    assert response.status_code == 422
    form = Form(response.text)
    assert form.invalid() == ["name", "url", "events"]
    assert form.error_of("name") == "Name is required"
    assert form.error_of("url") == "URL is required"
    assert form.error_of("events") == "choose at least one event type"
    title, links = form.summary()
    assert title == "There are 3 problems with this webhook"
    assert links == [
        ("name", "Name is required"),
        ("url", "URL is required"),
        ("events-all", "Events: choose at least one event type"),
    ]
    assert form.by_id["events-all"][1]["value"] == "*"  # the first box of the Events group
    assert api.get("/webhooks").json["data"] == []


def test_what_was_typed_stays_next_to_every_problem(user, api):
    response = submit(
        user,
        "/settings/webhooks/new",
        name="Ops",
        url="http://hooks.example.com/in",
        header_name=["Bad Header", "X-Team"],
        header_value=["1", "ops"],
        rate_limit="fast",
        ordering_key="{{ data.id }}",
        transform='{"text": ',
    )

    assert response.status_code == 422
    form = Form(response.text)
    assert form.invalid() == ["url", "events", "headers", "rate_limit", "transform"]
    assert (
        form.error_of("url")
        == "URL must use https:// (WEBHOOK_ALLOW_HTTP=1 allows http:// for development)"
    )
    assert form.error_of("headers") == "header name 'Bad Header' is not a valid HTTP token"
    assert form.error_of("rate_limit").startswith("rate_limit must be a number")
    assert form.error_of("transform").startswith("Transform is not valid JSON")
    title, links = form.summary()
    assert title == "There are 5 problems with this webhook"
    assert [target for target, _ in links] == [
        "url",
        "events-all",
        "header-name-first",
        "rate_limit",
        "transform",
    ]
    # Everything typed is still there, the good values with the bad.
    assert form.by_id["name"][1]["value"] == "Ops"
    assert form.by_id["url"][1]["value"] == "http://hooks.example.com/in"
    assert form.by_id["header-name-first"][1]["value"] == "Bad Header"
    assert 'value="X-Team"' in response.text and 'value="ops"' in response.text
    assert form.by_id["rate_limit"][1]["value"] == "fast"
    assert form.by_id["ordering_key"][1]["value"] == "{{ data.id }}"
    assert form.text_of("transform") == '{"text":'
    assert api.get("/webhooks").json["data"] == []


def test_one_problem_is_said_as_one(user):
    response = submit(
        user, "/settings/webhooks/new", name="Ops", url="https://hooks.example.com/in"
    )

    form = Form(response.text)
    assert form.invalid() == ["events"]
    assert form.summary() == (
        "There is a problem with this webhook",
        [("events-all", "Events: choose at least one event type")],
    )


def test_each_missing_jira_setting_is_shown_at_its_own_field(user, api):
    response = submit(
        user,
        "/settings/webhooks/new?template=jira",
        name="",
        url="https://acme.atlassian.net/rest/api/2/issue",
        param_project_key="",
        param_issue_type="Task",
        param_email="bot@acme.test",
        param_api_token="",
        events=["recommendation.created"],
    )

    assert response.status_code == 422
    form = Form(response.text)
    assert form.invalid() == ["param_project_key", "param_api_token", "name"]
    assert form.error_of("param_project_key") == "Project key is required"
    assert form.error_of("param_api_token") == "API token is required"
    # The token's hint is still read with it.
    assert "param_api_token-hint" in form.by_id["param_api_token"][1]["aria-describedby"]
    assert form.summary() == (
        "There are 3 problems with this webhook",
        [
            ("param_project_key", "Project key is required"),
            ("param_api_token", "API token is required"),
            ("name", "Name is required"),
        ],
    )
    assert form.by_id["param_email"][1]["value"] == "bot@acme.test"
    assert "template_params.project_key" not in text(response.text)
    assert api.get("/webhooks").json["data"] == []


def test_the_edit_form_shows_every_problem_and_changes_nothing(user, api):
    hook = api.post(
        "/webhooks",
        {"name": "Ops", "url": "https://hooks.example.com/in", "events": ["incident.*"]},
    ).json
    before = api.get(f"/webhooks/{hook['id']}").json

    response = submit(
        user,
        f"/settings/webhooks/{hook['id']}/edit",
        name=" ",
        url="https://",
        secret="short",
        secret_was="",
    )

    assert response.status_code == 422
    form = Form(response.text)
    assert form.invalid() == ["name", "url", "events", "secret"]
    assert form.error_of("url") == "URL has no host"
    assert form.summary()[0] == "There are 4 problems with this webhook"
    assert api.get(f"/webhooks/{hook['id']}").json == before
