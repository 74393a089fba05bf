"""Quotas per workspace: webhooks and API keys, in the API, the dashboard and the CLI."""

from __future__ import annotations

import json
import threading

import pytest

from tests.conftest import Api
from tests.session import text
from tests.test_dashboard import create_webhook
from tests.test_openapi import check
from webhooks import accounts
from webhooks.models import ApiKey, Webhook, db


@pytest.fixture
def small_quotas(config):  # type: ignore[no-untyped-def]
    config.update({"WEBHOOK_MAX_WEBHOOKS": "3", "WEBHOOK_MAX_API_KEYS": "3"})
    return config


def new_webhook(api: Api, n: int = 0):  # type: ignore[no-untyped-def]
    return api.post(
        "/webhooks", {"name": f"Hook {n}", "url": "https://127.0.0.1:9443/in", "events": ["*"]}
    )


def count(app, model, workspace_id: str) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        rows = db.session.query(model).filter_by(workspace_id=workspace_id).all()
        return len([r for r in rows if getattr(r, "revoked_at", None) is None])


def test_one_webhook_over_the_quota_is_refused_and_deleting_makes_room(small_quotas, api, client):
    made = [new_webhook(api, n) for n in range(3)]
    refused = new_webhook(api, 3)

    assert [m.status_code for m in made] == [201, 201, 201]
    assert refused.status_code == 403
    error = refused.json["error"]
    assert error["code"] == "quota_exceeded"
    assert "3 webhooks" in error["message"] and "WEBHOOK_MAX_WEBHOOKS=3" in error["message"]
    assert len(api.get("/webhooks").json["data"]) == 3
    check(client.get("/api/v1/openapi.json").json, "/webhooks", "post", refused)

    assert api.delete(f"/webhooks/{made[0].json['id']}").status_code == 204
    assert new_webhook(api, 4).status_code == 201


def test_the_webhook_quota_is_per_workspace(small_quotas, api, client, app):
    for n in range(3):
        new_webhook(api, n)
    with app.app_context():
        _, other_key = accounts.create_workspace(db.session, "Other")

    assert new_webhook(Api(client, other_key)).status_code == 201


def test_concurrent_creates_never_pass_the_quota(small_quotas, app, workspace):
    """Eight creates at the same moment, with room for three: exactly three are made (the
    count and the insert share one transaction on the locked workspace row)."""
    start = threading.Barrier(8)
    statuses: list[int] = []

    def create(n: int) -> None:
        api = Api(app.test_client(), workspace["key"])
        start.wait()
        statuses.append(new_webhook(api, n).status_code)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(statuses) == [201] * 3 + [403] * 5
    assert count(app, Webhook, workspace["id"]) == 3


def test_the_form_says_the_quota_is_reached_and_saves_nothing(small_quotas, user, app, workspace):
    for n in range(3):
        assert create_webhook(user, name=f"Hook {n}").status_code == 302

    refused = create_webhook(user, name="One too many")

    assert refused.status_code == 422
    page = text(refused.text)
    assert "Nothing was saved: this workspace already has 3 webhooks" in page
    assert "WEBHOOK_MAX_WEBHOOKS=3" in page
    assert "One too many" not in text(user.get("/settings/webhooks").text)
    assert count(app, Webhook, workspace["id"]) == 3


def test_api_keys_page_stops_at_the_quota_until_one_is_revoked(small_quotas, user, app, workspace):
    # The workspace has its first key; two more fit.
    user.get("/settings/api-keys")
    made = [user.post("/settings/api-keys", data={"name": f"Key {n}"}) for n in range(2)]
    refused = user.post("/settings/api-keys", data={"name": "One too many"})

    assert [m.status_code for m in made] == [200, 200]
    assert refused.status_code == 403
    page = text(refused.text)
    assert "This workspace already has 3 API keys" in page and "WEBHOOK_MAX_API_KEYS=3" in page
    assert "One too many" not in page and "Copy it now" not in page
    assert count(app, ApiKey, workspace["id"]) == 3

    with app.app_context():
        key_id = db.session.query(ApiKey).filter_by(name="Key 0").one().id
    user.post(f"/settings/api-keys/{key_id}/revoke")
    again = user.post("/settings/api-keys", data={"name": "Replacement"})
    assert again.status_code == 200 and "Copy it now" in again.text


def test_concurrent_key_creates_never_pass_the_quota(small_quotas, app, workspace):
    start = threading.Barrier(6)
    outcomes: list[str] = []

    def create(n: int) -> None:
        with app.app_context():
            start.wait()
            try:
                accounts.create_api_key(db.session, workspace["id"], f"k{n}", limit=3)
                db.session.commit()
                outcomes.append("made")
            except accounts.quotas.QuotaExceeded:
                db.session.rollback()
                outcomes.append("refused")

    threads = [threading.Thread(target=create, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(outcomes) == ["made"] * 2 + ["refused"] * 4
    assert count(app, ApiKey, workspace["id"]) == 3


def test_cli_creates_api_keys_up_to_the_quota(small_quotas, app, workspace):
    runner = app.test_cli_runner()
    args = ["api-key", "create", "--workspace", workspace["id"], "--name", "deploy"]

    made = [runner.invoke(args=args) for _ in range(2)]
    refused = runner.invoke(args=args)
    unknown = runner.invoke(args=["api-key", "create", "--workspace", "ws_nope"])

    keys = [json.loads(m.output)["api_key"] for m in made]
    assert all(k.startswith("whk_") for k in keys)
    assert refused.exit_code != 0
    assert "3 API keys" in refused.output and "WEBHOOK_MAX_API_KEYS=3" in refused.output
    assert unknown.exit_code != 0 and "no workspace 'ws_nope'" in unknown.output
    listed = app.test_client().get(
        "/api/v1/webhooks", headers={"Authorization": f"Bearer {keys[0]}"}
    )
    assert listed.status_code == 200
