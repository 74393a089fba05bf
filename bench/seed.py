"""Create the benchmark's workspaces, API keys, webhooks and dashboard user, in the service's DB.

Run with the service's environment (DATABASE_URL, SECRET_KEY, WEBHOOK_ALLOWED_PRIVATE_NETWORKS, …):

    python bench/seed.py SPEC.json  >  seeded.json

SPEC is {"workspaces": {name: {"urls": [url, …], "active": true}}, "user": {"email", "password",
"workspace"}}. Webhooks are made through `webhooks.management.create`, as the API makes them
(secret generated and encrypted at rest), subscribed to every event type.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from app import create_app  # noqa: E402
from webhooks import accounts, management, services  # noqa: E402
from webhooks.models import db  # noqa: E402
from webhooks.schemas import Reading  # noqa: E402


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    app = create_app()
    out: dict = {"workspaces": {}}
    with app.app_context():
        settings = services.settings()
        for name, ws_spec in spec["workspaces"].items():
            ws, key = accounts.create_workspace(db.session, f"bench-{name}")
            ids = []
            for i, url in enumerate(ws_spec["urls"]):
                payload = {
                    "name": f"{name}-{i}",
                    "url": url,
                    "events": ["*"],
                    "active": ws_spec.get("active", True),
                }
                webhook, _ = management.create(db.session, ws.id, payload, Reading(settings))
                ids.append(webhook.id)
            out["workspaces"][name] = {"id": ws.id, "key": key, "webhooks": ids}
        user = spec.get("user")
        if user:
            accounts.create_user(
                db.session,
                user["email"],
                user["password"],
                out["workspaces"][user["workspace"]]["id"],
            )
            db.session.commit()
            out["user"] = user
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
