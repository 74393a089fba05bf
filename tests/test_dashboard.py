"""The dashboard through Flask's test client: pages, forms, scoping, CSRF."""

from __future__ import annotations

import re

from tests.session import Session, make_user, text
from webhooks import accounts
from webhooks.models import db


def create_webhook(user: Session, **fields):  # type: ignore[no-untyped-def]
    user.get("/settings/webhooks/new")
    data = {
        "name": "Ops",
        "url": "https://hooks.example.com/in",
        "events": ["incident.*"],
        "secret": "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB",
        "active": "on",
        **fields,
    }
    return user.post("/settings/webhooks/new", data=data)


def test_signed_out_pages_send_you_to_login(client):
    for path in ("/settings/webhooks", "/settings/webhooks/logs", "/settings/api-keys", "/"):
        response = client.get(path, follow_redirects=True)
        assert "Sign in" in response.text and response.request.path == "/login"


def test_wrong_password_stays_on_login(app, workspace):
    make_user(app, "a@acme.test", "A")
    session = Session(app.test_client())
    response = session.login("a@acme.test", "wrong password")
    assert response.status_code == 401 and "Invalid email or password" in response.text


def test_empty_state_says_what_to_do(user):
    page = text(user.get("/settings/webhooks").text)
    assert "No webhooks yet" in page and "Create Webhook" in page


def test_create_form_saves_and_lists_the_webhook(user):
    response = create_webhook(
        user,
        header_name=["X-Team", ""],
        header_value=["ops", ""],
        events=["incident.*", "task.failed"],
    )
    assert response.status_code == 302

    shown = text(user.get(response.headers["Location"]).text)
    listed = text(user.get("/settings/webhooks").text)

    assert "Ops" in shown and "incident.*" in shown and "task.failed" in shown and "X-Team" in shown
    assert "https://hooks.example.com" in listed and "Active" in listed
    assert "Incident (all), task.failed" in listed


def test_field_errors_appear_next_to_the_field_and_nothing_is_saved(user):
    response = create_webhook(user, url="http://hooks.example.com/in")
    assert response.status_code == 422
    assert re.search(
        r'id="url-error"[^>]*>URL must use https:// '
        r"\(WEBHOOK_ALLOW_HTTP=1 allows http:// for development\)<",
        response.text,
    )
    assert 'value="http://hooks.example.com/in"' in response.text  # what was typed is kept
    assert "No webhooks yet" in user.get("/settings/webhooks").text

    missing = create_webhook(user, events=[])
    assert "choose at least one event type" in missing.text


def test_active_switch_pauses_at_once(user):
    location = create_webhook(user).headers["Location"]
    webhook_id = location.rsplit("/", 1)[1]
    user.get(location)

    paused = user.post(f"/settings/webhooks/{webhook_id}/active", data={}, htmx=True)
    assert paused.status_code == 200 and "Paused" in paused.text
    assert paused.headers["Cache-Control"] == "no-store"
    assert "Paused" in text(user.get("/settings/webhooks").text)

    resumed = user.post(f"/settings/webhooks/{webhook_id}/active", data={"active": "on"}, htmx=True)
    assert "Active" in resumed.text and "Paused" not in resumed.text


def test_secret_reveal_and_rotate(user):
    location = create_webhook(user).headers["Location"]
    webhook_id = location.rsplit("/", 1)[1]
    page = user.get(location).text
    assert "whsec_QUFB" not in page  # masked until revealed

    revealed = user.get(f"/settings/webhooks/{webhook_id}/secret")
    rotated = user.post(f"/settings/webhooks/{webhook_id}/rotate", htmx=True)

    assert "whsec_QUFBQUFB" in revealed.text
    new = re.search(r"whsec_[A-Za-z0-9+/=]+", rotated.text).group(0)
    assert new != "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB" and "24 hours" in rotated.text


def test_api_keys_are_shown_once_and_can_be_revoked(user, app):
    user.get("/settings/api-keys")
    created = user.post("/settings/api-keys", data={"name": "CI publisher"})
    key = re.search(r"whk_[A-Za-z0-9_-]+", created.text).group(0)
    key_id = re.search(r"/settings/api-keys/(key_[A-Z0-9]+)/revoke", created.text).group(1)
    api = app.test_client()
    auth = {"Authorization": f"Bearer {key}"}
    assert api.get("/api/v1/webhooks", headers=auth).status_code == 200

    listed = user.get("/settings/api-keys").text
    assert key not in listed and key[:12] in listed
    user.post(f"/settings/api-keys/{key_id}/revoke")

    assert api.get("/api/v1/webhooks", headers=auth).status_code == 401
    assert "Revoked" in user.get("/settings/api-keys").text


def test_catalog_page_shows_every_type_with_its_example(user):
    page = user.get("/settings/event-types").text
    assert page.count("<details>") == 20
    assert "recommendation.created" in page and "potential_savings" in page
    # Each group says which patterns subscribe to it, in the names its types carry.
    said = re.sub(r" ([.,])", r"\1", text(page))
    assert (
        "Subscribe to all of them with security.*, or to one family with finding.* or compliance.*."
        in said
    )
    assert (
        "Subscribe to all of them with agent.*, or to one family with conversation.* or approval.*."
        in said
    )
    assert "Subscribe to all of them with incident.*." in said


def test_logs_filters_are_kept_in_the_url_and_validated(user):
    page = user.get("/settings/webhooks/logs?status=failed&event_type=incident.created")
    assert page.status_code == 200
    assert '<option value="failed" selected>' in page.text
    assert "status=failed" in page.text  # the live fragment polls with the same filters
    bad = user.get("/settings/webhooks/logs?since=yesterday")
    assert "since must be an ISO 8601 time" in bad.text


def test_another_workspace_gets_404_on_every_page(user, app):
    location = create_webhook(user).headers["Location"]
    webhook_id = location.rsplit("/", 1)[1]
    make_user(app, "intruder@other.test", "Other")
    other = Session(app.test_client())
    other.login("intruder@other.test", "correct horse")
    other.get("/settings/webhooks")

    for path in ("", "/edit", "/secret", "/deliveries"):
        assert other.get(f"/settings/webhooks/{webhook_id}{path}").status_code == 404
    for path in ("/active", "/rotate", "/test", "/delete"):
        assert other.post(f"/settings/webhooks/{webhook_id}{path}").status_code == 404
    assert "Ops" not in text(other.get("/settings/webhooks").text)
    assert user.get(location).status_code == 200


def test_forms_without_the_csrf_token_are_refused(user):
    user.get("/settings/webhooks/new")
    user.token = "forged"
    response = user.post(
        "/settings/webhooks/new",
        data={"name": "Ops", "url": "https://hooks.example.com/in", "events": ["*"]},
    )
    assert response.status_code == 400 and "CSRF" in response.text
    user.get("/settings/webhooks")
    assert "No webhooks yet" in user.get("/settings/webhooks").text


def test_workspace_switcher_changes_what_you_see(user, app, workspace):
    with app.app_context():
        ws, _ = accounts.create_workspace(db.session, "Second")
        second_id = ws.id
        accounts.create_user(db.session, "ops@acme.test", "correct horse", second_id)
    create_webhook(user, name="Only in Acme")
    user.get("/settings/webhooks")

    user.post("/workspace", data={"workspace_id": second_id})
    second = text(user.get("/settings/webhooks").text)
    forbidden = user.post("/workspace", data={"workspace_id": "ws_not_mine"})

    assert "Only in Acme" not in second and "Second" in second
    assert forbidden.status_code == 404


def test_session_cookie_is_httponly_and_lax(app, workspace):
    make_user(app, "c@acme.test", "C")
    session = Session(app.test_client())
    response = session.login("c@acme.test", "correct horse")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie


def test_template_gallery_fills_the_form(user):
    page = text(user.get("/settings/webhooks/new?template=jira").text)
    for label in ("Slack", "Jira", "PagerDuty", "GitHub Actions", "Generic"):
        assert label in page
    assert "Jira settings" in page and "Project key" in page and "API token" in page


def test_preview_shows_the_rendered_body_and_errors_in_place(user):
    user.get("/settings/webhooks/new?template=slack")
    slack = user.post(
        "/settings/webhooks/preview",
        data={"template": "slack", "preview_type": "incident.created"},
        htmx=True,
    )
    broken = user.post(
        "/settings/webhooks/preview",
        data={"transform": '{"text": "{{ data.title "}', "preview_type": "task.failed"},
        htmx=True,
    )
    plain = user.post("/settings/webhooks/preview", data={"preview_type": "task.failed"}, htmx=True)

    assert "&#34;blocks&#34;" in slack.text and "Elevated 5xx" in slack.text
    assert "line 1" in broken.text and "field-error" in broken.text
    assert "&#34;workspace_id&#34;" in plain.text and "task.failed" in plain.text
    assert "Undefined in this example" not in slack.text + plain.text


def test_preview_says_where_an_undefined_value_is_sent_empty(user):
    user.get("/settings/webhooks/new")
    transform = '{"text": "New: {{ data.titel }}", "id": "{{ data.id }}", "n": "{{ dat }}"}'
    answer = user.post(
        "/settings/webhooks/preview",
        data={"transform": transform, "preview_type": "incident.created"},
        htmx=True,
    )
    said = text(answer.text)
    assert "Undefined in this example, sent as shown" in said
    assert "text: titel is undefined for this event, so it renders as empty text" in said
    assert "n: dat is undefined for this event, so it renders as null" in said
    assert "id:" not in said.split("sent as shown")[1].split("Check the spelling")[0]
    assert "&#34;text&#34;: &#34;New: &#34;" in answer.text  # sent as shown


def test_saving_a_template_applies_its_transform_and_headers(user, api):
    user.get("/settings/webhooks/new?template=github")
    response = user.post(
        "/settings/webhooks/new",
        data={
            "name": "Deploy on recommendation",
            "url": "https://api.github.com/repos/acme/infra/dispatches",
            "events": ["recommendation.created"],
            "template": "github",
            "param_token": "ghp_secret",
            "secret": "",
            "active": "on",
        },
    )
    assert response.status_code == 302
    saved = api.get("/webhooks").json["data"][0]
    assert saved["template"] == "github" and saved["transform"]["event_type"]
    assert saved["transform_source"] == "template" and saved["headers"] == {}
    assert saved["template_headers"]["Authorization"] == "••••cret"
    edit = user.get(response.headers["Location"] + "/edit").text
    assert "ghp_secret" not in edit and "••••" in edit  # the token stays masked
