"""A listener's stream over real HTTP: comment lines while idle, and a web process's limit."""

from __future__ import annotations

import time

import pytest
import requests

from tests.conftest import wait_until

HEARTBEAT = 0.5
# How late a comment line may be: thread scheduling and a Redis round trip on a busy machine.
SLACK = 1.0


@pytest.fixture
def config(config):  # type: ignore[no-untyped-def]
    config["WEBHOOK_LISTENER_HEARTBEAT_SECONDS"] = str(HEARTBEAT)
    config["WEBHOOK_LISTENER_STREAMS"] = "1"
    return config


def open_stream(  # type: ignore[no-untyped-def]
    web: str, api, listener: dict, read_timeout: float = 10
) -> requests.Response:
    return requests.get(
        web + listener["stream_url"],
        headers={"Authorization": f"Bearer {api.key}"},
        stream=True,
        timeout=(5, read_timeout),
    )


def test_an_idle_stream_sends_a_comment_line_every_heartbeat(web, api):
    listener = api.post("/listeners", {"events": ["*"]}).json
    # Each read waits at most one heartbeat (and the slack) for its next byte.
    response = open_stream(web, api, listener, read_timeout=HEARTBEAT + SLACK)
    try:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        comments: list[float] = []
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith(":"):
                comments.append(time.monotonic())
            if len(comments) == 4:
                break
    except requests.ConnectionError:
        pytest.fail(f"no comment line within {HEARTBEAT + SLACK} s after {len(comments)} of them")
    finally:
        response.close()
    gaps = [b - a for a, b in zip(comments, comments[1:], strict=False)]
    # "connected", then one "waiting for deliveries" per heartbeat, never more than 15 s apart.
    assert all(gap < HEARTBEAT + SLACK for gap in gaps), gaps
    assert all(gap > HEARTBEAT / 2 for gap in gaps[1:]), gaps


def test_a_web_process_serves_at_most_its_streams_and_frees_a_closed_ones_place(web, api):
    first = api.post("/listeners", {"events": ["*"]}).json
    second = api.post("/listeners", {"events": ["*"]}).json
    held = open_stream(web, api, first)
    assert held.status_code == 200
    next(held.iter_lines())  # the stream is being served
    refused = open_stream(web, api, second)
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) >= 1
    error = refused.json()["error"]
    assert error["code"] == "unavailable" and "WEBHOOK_LISTENER_STREAMS" in error["message"]
    held.close()

    # The closed stream's thread notices at its next write (a heartbeat) and lets go.
    def served() -> requests.Response | None:
        answer = open_stream(web, api, second)
        if answer.status_code == 200:
            return answer
        answer.close()
        return None

    again = wait_until(served, 10)
    again.close()
