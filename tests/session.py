"""A signed-in dashboard user for the test client: cookies plus the CSRF token."""

from __future__ import annotations

import re

from webhooks import accounts
from webhooks.models import db


class Session:
    """A signed-in user's cookie jar, sending the CSRF token like the pages do."""

    def __init__(self, client) -> None:  # type: ignore[no-untyped-def]
        self.client = client
        self.token = ""

    def get(self, path: str, **kw):  # type: ignore[no-untyped-def]
        response = self.client.get(path, **kw)
        found = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', response.text) or re.search(
            r'"X-CSRFToken": "([^"]+)"', response.text
        )
        if found:
            self.token = found.group(1)
        return response

    def post(self, path: str, data=None, htmx: bool = False, **kw):  # type: ignore[no-untyped-def]
        headers = {"X-CSRFToken": self.token}
        if htmx:
            headers["HX-Request"] = "true"
        return self.client.post(path, data=data or {}, headers=headers, **kw)

    def login(self, email: str, password: str):  # type: ignore[no-untyped-def]
        self.get("/login")
        return self.client.post(
            "/login", data={"email": email, "password": password, "csrf_token": self.token}
        )


PASSWORD = "correct horse"


def make_user(app, email: str, workspace_name: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    with app.app_context():
        ws, key = accounts.create_workspace(db.session, workspace_name)
        accounts.create_user(db.session, email, PASSWORD, ws.id)
        return ws.id, key


def signed_in(app, email: str, workspace_id: str) -> Session:  # type: ignore[no-untyped-def]
    """A new user of the workspace, signed in through /login with a test client of their own."""
    with app.app_context():
        accounts.create_user(db.session, email, PASSWORD, workspace_id)
    session = Session(app.test_client())
    assert session.login(email, PASSWORD).status_code == 302
    return session


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
