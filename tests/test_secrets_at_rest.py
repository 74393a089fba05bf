"""Webhook secrets are encrypted in the database and can move to a new key."""

from __future__ import annotations

import sqlalchemy as sa

from app import create_app
from webhooks.models import db


def stored_secrets(app) -> list[str]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return list(db.session.execute(sa.text("SELECT secret FROM webhook_secrets")).scalars())


def test_secrets_are_encrypted_and_never_stored_in_clear(app, api, webhook):
    secret = webhook["secret"]
    stored = stored_secrets(app)

    assert len(stored) == 1 and stored[0].startswith("fernet:") and secret not in stored[0]
    assert api.get(f"/webhooks/{webhook['id']}/secret").json["secret"] == secret


def test_the_key_can_be_rotated_without_losing_a_secret(app, config, api, webhook, workspace):
    before = stored_secrets(app)[0]
    config["WEBHOOK_SECRETS_KEY"] = "new-key-2026,test-secret-key"
    rotated_app = create_app(dict(config))

    result = rotated_app.test_cli_runner().invoke(args=["rotate-secrets-key"])

    assert "re-encrypted 1 webhook secret" in result.output
    after = stored_secrets(rotated_app)[0]
    assert after != before and after.startswith("fernet:")
    client = rotated_app.test_client()
    shown = client.get(
        f"/api/v1/webhooks/{webhook['id']}/secret",
        headers={"Authorization": f"Bearer {workspace['key']}"},
    )
    assert shown.json["secret"] == webhook["secret"]
    # The old key alone can no longer read it.
    config["WEBHOOK_SECRETS_KEY"] = "test-secret-key"
    old_only = create_app(dict(config))
    with old_only.app_context():
        try:
            db.session.execute(sa.text("SELECT 1")).scalar()
            from webhooks.models import WebhookSecret

            db.session.scalars(sa.select(WebhookSecret)).all()
            raise AssertionError("decrypted with a key that was rotated away")
        except ValueError as exc:
            assert "WEBHOOK_SECRETS_KEY" in str(exc)
