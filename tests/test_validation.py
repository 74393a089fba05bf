"""Every invalid field of a webhook answered at once (API.md section 6), in the API.

A create or update with several bad fields answers one 400 whose `fields` names every one of
them, with the code and message of the first (name, url, events, ...); nothing is saved.
"""

from __future__ import annotations

from tests.test_api import URL, error_of


def test_an_empty_create_names_name_url_and_events(api):
    error = error_of(api.post("/webhooks", {}), 400, "validation_error")

    assert error["fields"] == {
        "name": "Name is required",
        "url": "URL is required",
        "events": "choose at least one event type",
    }
    assert error["message"] == "name is required"  # the first problem's, as before
    assert api.get("/webhooks").json == {"data": []}


def test_a_bad_url_an_unknown_event_type_and_bad_header_names_are_all_named(api):
    body = {
        "name": "Ops",
        "url": "http://example.com/hook",
        "events": ["incident.created", "nope.happened"],
        "headers": {"Bad Header": "x"},
        "secret": "short",
        "rate_limit": 0,
        "ordering_key": "{{ data.id ",
        "active": "yes",
    }

    error = error_of(api.post("/webhooks", body), 400, "invalid_url")

    assert error["message"] == "URL must use https://, got 'http://example.com/hook'"
    assert set(error["fields"]) == {
        "url",
        "events",
        "headers",
        "secret",
        "rate_limit",
        "ordering_key",
        "active",
    }
    assert (
        error["fields"]["url"]
        == "URL must use https:// (WEBHOOK_ALLOW_HTTP=1 allows http:// for development)"
    )
    assert error["fields"]["events"] == "unknown event type 'nope.happened'"
    assert error["fields"]["headers"] == "header name 'Bad Header' is not a valid HTTP token"
    assert "does not compile" in error["fields"]["ordering_key"]
    assert error["fields"]["active"] == "active must be true or false"
    assert api.get("/webhooks").json == {"data": []}


def test_a_single_problem_answers_as_it_always_did(api):
    error = error_of(
        api.post("/webhooks", {"name": "Ops", "url": URL, "events": ["nope.x"]}),
        400,
        "unknown_event_type",
    )
    assert error == {
        "code": "unknown_event_type",
        "message": "unknown event type 'nope.x'",
        "fields": {"events": "unknown event type 'nope.x'"},
    }


def test_every_unknown_field_is_named_with_the_others(api):
    error = error_of(
        api.post("/webhooks", {"nmae": "Ops", "colour": "red"}), 400, "validation_error"
    )

    # A misspelt field first: it explains the problem of the field it was meant to be.
    assert error["message"] == "unknown field 'colour'"
    assert error["fields"] == {
        "colour": "unknown field",
        "nmae": "unknown field",
        "name": "Name is required",
        "url": "URL is required",
        "events": "choose at least one event type",
    }


def test_a_patch_with_several_bad_fields_names_them_all_and_changes_nothing(api):
    hook = api.create_webhook(URL)
    before = api.get(f"/webhooks/{hook['id']}").json

    error = error_of(
        api.patch(
            f"/webhooks/{hook['id']}",
            {
                "name": " ",
                "url": "https://",
                "events": [],
                "headers": {"Host": "evil"},
                "transform": {"text": "{{ type "},
            },
        ),
        400,
        "validation_error",
    )

    assert error["message"] == "name is required"
    assert error["fields"] == {
        "name": "Name is required",
        "url": "URL has no host",
        "events": "choose at least one event type",
        "headers": "header 'Host' is set by the service and cannot be replaced",
        "transform": error["fields"]["transform"],
    }
    assert "line 1" in error["fields"]["transform"]
    assert api.get(f"/webhooks/{hook['id']}").json == before


def test_a_patch_whose_first_problem_is_the_url_keeps_its_code(api):
    hook = api.create_webhook(URL)

    error = error_of(
        api.patch(f"/webhooks/{hook['id']}", {"url": "ftp://example.com/", "events": ["x.y"]}),
        400,
        "invalid_url",
    )

    assert set(error["fields"]) == {"url", "events"}


def test_a_jira_template_without_settings_names_every_required_one_in_words(api):
    error = error_of(
        api.post(
            "/webhooks",
            {"name": "Jira", "url": URL, "template": "jira", "template_params": {}},
        ),
        400,
        "validation_error",
    )

    assert error["fields"] == {
        "template_params.project_key": "Project key is required",
        "template_params.email": "Email is required",
        "template_params.api_token": "API token is required",
    }
    # The message is the first one's, as it was.
    assert error["message"] == "template 'jira' needs template_params.project_key (Project key)"
    assert api.get("/webhooks").json == {"data": []}


def test_template_settings_are_named_with_the_other_fields(api):
    body = {
        "name": "",
        "url": URL,
        "template": "jira",
        "template_params": {"project_key": "{{ data }}", "email": "bot@acme.test", "x": "1"},
    }

    error = error_of(api.post("/webhooks", body), 400, "validation_error")

    assert error["message"] == "name is required"
    assert error["fields"] == {
        "name": "Name is required",
        "template_params.x": "The Jira template has no setting 'x'; its settings are "
        "Project key, Issue type, Email, API token",
        "template_params.project_key": "Project key must not contain '{{', '{%' or '{#'",
        "template_params.api_token": "API token is required",
    }


def test_a_patch_of_template_settings_names_each_missing_one(api):
    hook = api.create_webhook(
        URL,
        events=["*"],
        template="pagerduty",
        template_params={"routing_key": "R0UT1NGKEY0123456789012345678901"},
    )

    error = error_of(
        api.patch(
            f"/webhooks/{hook['id']}",
            {"template": "github", "template_params": {}, "rate_limit": "fast"},
        ),
        400,
        "validation_error",
    )

    assert error["fields"]["template_params.token"] == "Token is required"
    assert "rate_limit" in error["fields"]


def test_an_unknown_template_skips_what_depends_on_it(api):
    error = error_of(
        api.post("/webhooks", {"name": "X", "url": URL, "template": ["jira"]}),
        400,
        "validation_error",
    )

    # No "events" problem: the template, not the missing events, is what is wrong.
    assert set(error["fields"]) == {"template"}
