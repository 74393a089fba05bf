"""Fair limits: the API's rate counts per workspace, the dashboard's costly actions per user."""

from __future__ import annotations

import pytest

from tests.conftest import Api
from webhooks import accounts
from webhooks.models import db


@pytest.fixture
def api_limited(config):  # type: ignore[no-untyped-def]
    config["WEBHOOK_API_RATE_LIMIT"] = "4 per minute"
    return config


def test_two_keys_of_one_workspace_share_one_budget(api_limited, app, client, workspace):
    with app.app_context():
        _, second = accounts.create_api_key(db.session, workspace["id"], "second")
        db.session.commit()
        _, other = accounts.create_workspace(db.session, "Other")
    first_key, second_key = Api(client, workspace["key"]), Api(client, second)

    answers = [first_key.get("/webhooks"), first_key.get("/webhooks")]
    answers += [second_key.get("/webhooks"), second_key.get("/webhooks")]
    refused = [first_key.get("/webhooks"), second_key.get("/webhooks")]

    assert [a.status_code for a in answers] == [200, 200, 200, 200]
    assert [r.status_code for r in refused] == [429, 429]
    assert refused[1].json["error"]["code"] == "rate_limited"
    assert int(refused[1].headers["Retry-After"]) > 0
    # Another workspace is not held back by this one's budget.
    assert Api(client, other).get("/webhooks").status_code == 200
