"""`flask --app app listen`: a real command against a real web server, worker and scheduler,
forwarding to a plain HTTP app on loopback as a developer's laptop would run it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from standardwebhooks.webhooks import Webhook as StandardWebhook

from tests.conftest import wait_until
from tests.processes import FLASK, ROOT
from tests.receivers import Receiver
from webhooks import reconciler, services
from webhooks.models import Listener, db, utcnow


@pytest.fixture
def config(config):  # type: ignore[no-untyped-def]
    # A loaded machine may take a while between the worker, the stream and the command.
    config["WEBHOOK_TIMEOUT_SECONDS"] = "10"
    return config


@pytest.fixture
def laptop() -> Iterator[Receiver]:
    """The developer's own app: plain HTTP on loopback."""
    server = Receiver()
    yield server
    server.close()


class Command:
    """`flask --app app listen …` as a subprocess, its output collected line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        command = [*FLASK, "listen", *args]
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        return wait_until(
            lambda: next((m for m in map(re.compile(pattern).search, self.lines) if m), None),
            timeout,
        )

    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def attempts_of(api, webhook_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The webhook's one delivery, with its attempts."""
    [delivery] = api.deliveries(webhook_id=webhook_id)
    return api.delivery(delivery["id"])


def test_listen_forwards_signed_deliveries_retries_a_500_and_closes_on_ctrl_c(
    api, user, web, running, laptop
):
    laptop.answer(500, 200)
    command = Command(
        running.env, "--forward-to", laptop.url("/hook"), "--server", web, "--api-key", api.key
    )
    try:
        secret = command.wait_for_line(r"Signing secret: (whsec_\S+)").group(1)
        webhook_id = command.wait_for_line(r"\(webhook (wh_\w+),").group(1)
        wait_until(lambda: "stream connected" in user.get("/settings/webhooks").text, 30)
        page = user.get(f"/settings/webhooks/{webhook_id}").text
        assert "CLI listener" in page and ">CLI</span>" in page

        event = api.publish(data={"title": "Disk"})
        assert event["delivery_count"] == 1

        first, second = laptop.wait_for(2, timeout=30)[:2]
        for received in (first, second):
            assert received.path == "/hook"
            StandardWebhook(secret).verify(received.body, received.headers)
            assert received.headers["webhook-id"] == event["id"]
            assert received.json()["data"] == {"title": "Disk"}
        delivery = wait_until(
            lambda: (d := attempts_of(api, webhook_id))["status"] == "succeeded" and d, 30
        )
        assert [a["response"]["status_code"] for a in delivery["attempts"]] == [500, 200]
        assert delivery["attempts"][0]["request"]["body"] == first.body.decode()
        assert (
            delivery["attempts"][0]["request"]["headers"]["webhook-signature"]
            == (first.headers["webhook-signature"])
        )
        command.wait_for_line(rf"incident\.created {event['id']} -> 500 \(\d+ ms\)")
        command.wait_for_line(rf"incident\.created {event['id']} -> 200 \(\d+ ms\)")

        command.proc.send_signal(signal.SIGINT)
        assert command.proc.wait(timeout=15) == 0, command.output()
        assert "Listener closed." in command.output()
        assert api.get(f"/webhooks/{webhook_id}").status_code == 404
    finally:
        command.stop()


def test_listen_print_shows_each_delivery_and_its_signature_check(api, web, running, laptop):
    command = Command(running.env, "--print", "--server", web, "--api-key", api.key)
    try:
        webhook_id = command.wait_for_line(r"\(webhook (wh_\w+),").group(1)
        response = api.post(f"/webhooks/{webhook_id}/test", {"type": "task.failed"})
        assert response.status_code == 202
        command.wait_for_line(r"task\.failed evt_\w+ -> 200 \(\d+ ms\)")
        output = command.output()
        assert "X-CloudThinker-Event: task.failed" in output
        assert '"type":"task.failed"' in output
        assert "webhook-signature: verified" in output
        assert wait_until(lambda: attempts_of(api, webhook_id)["status"] == "succeeded", 30)

        command.proc.send_signal(signal.SIGTERM)  # a process manager stopping it
        assert command.proc.wait(timeout=15) == 0, command.output()
        assert api.get(f"/webhooks/{webhook_id}").status_code == 404
    finally:
        command.stop()


def test_a_listener_without_its_stream_closes_after_a_minute(app, api, service):
    created = api.post("/listeners", {"events": ["incident.*"]})
    assert created.status_code == 201, created.json
    listener = created.json
    assert listener["stream_url"] == f"/api/v1/listeners/{listener['id']}/stream"
    assert listener["secret"].startswith("whsec_")
    event = api.publish(data={"title": "x"})
    assert event["delivery_count"] == 1
    # Nothing reads the stream: the attempt fails and the delivery waits for its retry.
    [delivery] = api.deliveries(webhook_id=listener["webhook_id"])
    service.run_until(lambda: api.delivery(delivery["id"])["attempt_count"] >= 1)
    assert "listener not connected" in api.delivery(delivery["id"])["last_error"]

    with app.app_context():  # its stream was last seen a minute ago
        db.session.execute(update(Listener).values(last_seen_at=utcnow() - timedelta(seconds=61)))
        db.session.commit()
        reconciler.periodic(db.session, services.of(app).redis, service.settings)
        db.session.remove()

    ended = api.delivery(delivery["id"])
    assert ended["status"] == "failed"
    assert "its stream was gone for 60 s" in ended["last_error"]
    webhook = api.get(f"/webhooks/{listener['webhook_id']}").json
    assert webhook["active"] is False
    assert "CLI listener closed" in webhook["disabled_reason"]
    assert api.delete(f"/listeners/{listener['id']}").status_code == 404


def test_make_run_printout_ends_with_the_command_that_shows_deliveries_here(app):
    result = app.test_cli_runner().invoke(args=["demo"])

    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1].strip()
    key = re.search(r"API key: (\S+)", result.output).group(1)
    base = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
    assert last == f".venv/bin/flask --app app listen --print --server {base} --api-key {key}"
