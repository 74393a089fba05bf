"""A receiver that answers megabytes of headers: at most 16 KiB of them are kept, and the
attempt says what was dropped."""

from __future__ import annotations

import json

from tests.receivers import Reply
from tests.session import text
from webhooks import transport
from webhooks.models import Attempt, db

# http.client refuses more than 99 headers and any line over 64 KiB: with the receiver's own
# Server, Date and Content-Length and one small header, this is the most a receiver can send.
BIG = {f"X-Big-{n:02d}": "a" * 65_000 for n in range(95)}


def test_megabytes_of_response_headers_are_cut_to_16_kib(
    api, webhook, receiver, service, user, app
):
    receiver.answer(Reply(headers={**BIG, "X-Small": "kept"}))
    event = api.publish()

    [delivery] = service.run_until(api.ended(event["id"]))
    attempt = delivery["attempts"][0]
    shown = attempt["response"]["headers"]

    assert delivery["status"] == "succeeded"
    size = sum(len(k) + len(v) + 4 for k, v in shown.items())
    assert size <= transport.RESPONSE_HEADERS_CAP
    assert shown["X-Small"] == "kept"  # a later header that fits is still there
    assert len([k for k in shown if k.startswith("X-Big-")]) == 0
    assert shown[transport.DROPPED_HEADERS].startswith("95 headers (6,176,140 bytes)")
    assert "at most 16 KiB of response headers are stored" in shown[transport.DROPPED_HEADERS]
    with app.app_context():
        stored = db.session.query(Attempt).one().response_headers
    assert len(json.dumps(stored)) < 17 * 1024
    page = text(user.get(f"/settings/webhooks/logs/{delivery['id']}").text)
    assert "(dropped): 95 headers" in page and "X-Small: kept" in page


def test_headers_under_the_cap_are_kept_as_they_came():
    headers = [("Content-Type", "text/plain"), ("X-Request-Id", "r" * 16_000)]

    assert transport.kept_headers(headers) == dict(headers)
