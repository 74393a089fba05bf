"""Settings › Webhooks says why a webhook is not healthy: its last error, in a few words."""

from __future__ import annotations

import re
import socket
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from tests.receivers import Receiver
from tests.session import text
from webhooks import logs
from webhooks.models import db, utcnow

LIST = "/settings/webhooks"


@pytest.fixture
def config(config, request):  # type: ignore[no-untyped-def]
    config.update({"WEBHOOK_RETRY_SCHEDULE": "0,0.2"})  # two attempts, then failed
    config.update(getattr(request, "param", {}))
    return config


@pytest.fixture
def broken(receivers) -> Receiver:  # type: ignore[no-untyped-def]
    return receivers(500)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def row_of(html: str, name: str) -> str:
    """The list's row of the webhook called `name`, as text."""
    for row in re.findall(r"<tr>.*?</tr>", html, flags=re.S):
        if f">{name}</a>" in row:
            return text(row)
    raise AssertionError(f"no row for {name}")


@contextmanager
def counted(app):  # type: ignore[no-untyped-def]
    """The SQL statements the app sends meanwhile (BEGIN left out, as webhooks.stmtcount does)."""
    sent: list[str] = []

    def note(_conn, _cursor, statement, *_rest) -> None:  # type: ignore[no-untyped-def]
        if not statement.startswith("BEGIN"):
            sent.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", note)


def test_a_failing_webhook_says_why_and_a_healthy_one_says_nothing(
    api, user, receiver, broken, service
):
    api.create_webhook(receiver.url(), name="Healthy")
    api.create_webhook(broken.url(), name="Broken")
    api.create_webhook(f"https://127.0.0.1:{closed_port()}/hook", name="Unreachable")
    api.publish(data={"id": "inc_1"})
    service.run_until(api.ended())

    page = user.get(LIST)
    assert page.status_code == 200
    failing = row_of(page.text, "Broken")
    assert "Last error" in failing and "HTTP 500 from the receiver" in failing
    assert "connection refused" in row_of(page.text, "Unreachable")
    healthy = row_of(page.text, "Healthy")
    assert "Last error" not in healthy and "error" not in healthy.lower()
    # The time is a <time> like every other on the page: how long ago, exact on hover.
    assert re.search(r"Last error <time datetime='[^']+Z' title='[^']+'>", page.text)

    # Fixed: the next delivery succeeds and the error is gone.
    broken.answer(200)
    api.publish(data={"id": "inc_2"})
    service.run_until(lambda: "Last error" not in row_of(user.get(LIST).text, "Broken"))
    assert "connection refused" in row_of(user.get(LIST).text, "Unreachable")


@pytest.mark.parametrize(
    "config", [{"WEBHOOK_RETRY_SCHEDULE": "0,3600"}], indirect=True
)  # the second attempt is an hour away
def test_a_retrying_webhook_says_so(api, user, broken, service):
    hook = api.create_webhook(broken.url(), name="Flaky")
    api.publish(data={"id": "inc_1"})
    service.run_until(lambda: api.deliveries(webhook_id=hook["id"], status="retrying"))
    row = row_of(user.get(LIST).text, "Flaky")
    assert "Retrying; last error" in row and "HTTP 500 from the receiver" in row


def test_the_last_error_of_the_whole_list_is_one_query(app, api, user, workspace, broken, service):
    for n in range(12):
        api.create_webhook(broken.url(f"/{n}"), name=f"Hook {n}")
    api.publish(data={"id": "inc_1"})
    service.run_until(api.ended())

    with app.app_context():
        with counted(app) as sent:
            found = logs.last_errors(db.session, workspace["id"])
        db.session.remove()
    assert len(sent) == 1, sent
    assert len(found) == 12 and {e.short for e in found.values()} == {"HTTP 500 from the receiver"}
    assert all(abs((utcnow() - e.at).total_seconds()) < 60 for e in found.values())

    # The page costs the same number of statements with 12 webhooks as with 24.
    with counted(app) as few:
        assert "HTTP 500 from the receiver" in user.get(LIST).text
    for n in range(12, 24):
        api.create_webhook(broken.url(f"/{n}"), name=f"Hook {n}")
    api.publish(data={"id": "inc_2"})
    service.run_until(api.ended())
    with counted(app) as many:
        page = user.get(LIST)
    assert page.text.count("HTTP 500 from the receiver") == 24
    assert len(many) == len(few), (len(few), len(many))


def test_a_long_error_is_cut_short_with_the_whole_on_hover():
    long = logs.LastError("TLS certificate not accepted: " + "x" * 300, utcnow(), retrying=False)
    assert len(long.short) == logs.SHORT and long.short.endswith("…")
    assert logs.LastError("HTTP 503", utcnow(), False).short == "HTTP 503 from the receiver"
    assert logs.LastError("connection refused", utcnow(), False).short == "connection refused"
