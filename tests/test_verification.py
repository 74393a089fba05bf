"""The signature debugger, fed what a real receiver captured from a real delivery, then
tampered with the way receivers' frameworks and code get it wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import subprocess
import time
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook

from tests.receivers import Received, Receiver
from tests.session import text

TITLE = "Café latency ☕ in eu-west"


@pytest.fixture
def captured(api, webhook, receiver, service) -> Received:
    """The first delivery of an incident as the receiver got it."""
    api.publish(data={"title": TITLE, "n": 1})
    service.run_until(lambda: receiver.requests)
    return receiver.requests[0]


def check(api, webhook, body: str, headers: dict[str, str], **extra: Any) -> dict[str, Any]:
    response = api.post(
        f"/webhooks/{webhook['id']}/verify-signature", {"body": body, "headers": headers, **extra}
    )
    assert response.status_code == 200, response.json
    return response.json


def reasons(answer: dict[str, Any]) -> dict[str, str]:
    return {c["header"]: c["reason"] for c in answer["checks"]}


def mac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def signed(received: Received) -> str:
    h = received.headers
    return f"{h['webhook-id']}.{h['webhook-timestamp']}.{received.body.decode()}"


def test_what_was_received_verifies(api, webhook, captured):
    body = captured.body.decode()
    StandardWebhook(webhook["secret"]).verify(body, captured.headers)  # the library agrees

    answer = check(api, webhook, body, captured.headers, secret=webhook["secret"])

    assert answer["valid"] is True
    assert answer["problems"] == []
    assert {c["header"]: c["valid"] for c in answer["checks"]} == {
        "X-CloudThinker-Signature": True,
        "webhook-signature": True,
    }


@pytest.mark.parametrize(
    ("tamper", "how"),
    [
        (lambda p, raw: json.dumps(p, ensure_ascii=False), "re-serialised JSON"),
        (lambda p, raw: raw + "\n", "whitespace"),
        (
            lambda p, raw: json.dumps(p, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
            "key order",
        ),
        (lambda p, raw: json.dumps(p, separators=(",", ":")), "encoding"),
    ],
    ids=["reserialised", "whitespace", "key-order", "encoding"],
)
def test_a_modified_body_is_named_with_how_it_was_modified(api, webhook, captured, tamper, how):
    raw = captured.body.decode()
    body = tamper(json.loads(raw), raw)
    assert body != raw

    answer = check(api, webhook, body, captured.headers, secret=webhook["secret"])

    assert answer["valid"] is False
    assert answer["problems"] == ["body_modified"]
    for name in ("X-CloudThinker-Signature", "webhook-signature"):
        assert reasons(answer)[name].startswith("does not verify over this body, but does over")
        assert f"the body was modified ({how}:" in reasons(answer)[name]


def test_a_whsec_secret_used_as_raw_bytes_is_named(api, webhook, captured):
    computed = base64.b64encode(mac(webhook["secret"].encode(), signed(captured))).decode()

    answer = check(
        api,
        webhook,
        captured.body.decode(),
        captured.headers,
        secret=webhook["secret"],
        computed=f"v1,{computed}",
    )

    assert answer["problems"] == ["secret_format"]
    assert answer["valid"] is False
    assert "base64-decoded part after whsec_" in reasons(answer)["computed"]


def test_a_standard_signature_over_the_body_alone_is_named(api, webhook, captured):
    key = base64.b64decode(webhook["secret"].removeprefix("whsec_"))
    computed = base64.b64encode(mac(key, captured.body.decode())).decode()

    answer = check(
        api, webhook, captured.body.decode(), captured.headers, computed=f"v1,{computed}"
    )

    assert answer["problems"] == ["signed_body_only"]
    assert "{webhook-id}.{webhook-timestamp}.{body}" in reasons(answer)["computed"]


def test_a_signature_computed_over_a_reserialised_body_is_named(api, webhook, captured):
    reserialised = json.dumps(json.loads(captured.body))  # what request.json gives back, dumped
    computed = mac(webhook["secret"].encode(), reserialised).hex()

    answer = check(
        api, webhook, captured.body.decode(), captured.headers, computed=f"sha256={computed}"
    )

    assert answer["problems"] == ["body_modified"]
    # json.dumps escapes the title's non-ASCII characters: that is the difference named.
    assert "computed over another body: encoding" in reasons(answer)["computed"]


def test_the_right_computed_signature_is_confirmed(api, webhook, captured):
    computed = mac(webhook["secret"].encode(), captured.body.decode()).hex()

    answer = check(api, webhook, captured.body.decode(), captured.headers, computed=computed)

    assert answer["valid"] is True
    assert reasons(answer)["computed"] == "your code computes the right signature"


def test_a_rotated_out_secret_is_a_wrong_secret(api, webhook, captured):
    old = webhook["secret"]
    assert api.patch(f"/webhooks/{webhook['id']}", {"secret": "a-brand-new-secret-0123"}).json

    answer = check(api, webhook, captured.body.decode(), captured.headers, secret=old)

    assert "wrong_secret" in answer["problems"]
    assert answer["valid"] is False
    assert "earlier secret of this webhook: it stopped signing at" in reasons(answer)["secret"]

    unrelated = check(
        api, webhook, captured.body.decode(), captured.headers, secret="whsec_" + "A" * 32
    )
    assert "none of this webhook's valid secrets" in reasons(unrelated)["secret"]


def test_a_stale_timestamp_is_out_of_range(api, webhook, captured):
    # The same request replayed ten minutes later: correctly signed, but too old.
    headers = dict(captured.headers)
    headers["webhook-timestamp"] = str(int(time.time()) - 600)
    key = base64.b64decode(webhook["secret"].removeprefix("whsec_"))
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{captured.body.decode()}"
    headers["webhook-signature"] = "v1," + base64.b64encode(mac(key, content)).decode()

    answer = check(api, webhook, captured.body.decode(), headers)

    assert answer["problems"] == ["timestamp_out_of_range"]
    assert answer["valid"] is False
    assert "s ago" in reasons(answer)["webhook-signature"]
    assert "5 minutes" in reasons(answer)["webhook-signature"]


def test_missing_headers_are_named(api, webhook, captured):
    body = captured.body.decode()
    unsigned = {
        k: v
        for k, v in captured.headers.items()
        if k.lower() not in ("webhook-signature", "x-cloudthinker-signature")
    }
    answer = check(api, webhook, body, unsigned)
    assert answer["problems"] == ["header_missing"]
    assert answer["valid"] is False
    assert "no signature header" in reasons(answer)["webhook-signature"]

    anonymous = {k: v for k, v in captured.headers.items() if k != "X-CloudThinker-Delivery"}
    answer = check(api, webhook, body, anonymous)
    assert answer["problems"] == ["header_missing"]
    assert "no X-CloudThinker-Delivery header" in reasons(answer)["X-CloudThinker-Delivery"]


def test_an_unknown_delivery_is_named(api, webhook, captured):
    headers = {**captured.headers, "X-CloudThinker-Delivery": "dlv_doesnotexist"}

    answer = check(api, webhook, captured.body.decode(), headers)

    assert answer["problems"] == ["unknown_delivery"]
    assert (
        "'dlv_doesnotexist' is not a delivery of this webhook"
        in (reasons(answer)["X-CloudThinker-Delivery"])
    )


def test_bad_input_names_every_field(api, webhook):
    response = api.post(
        f"/webhooks/{webhook['id']}/verify-signature", {"headers": [], "secret": 42}
    )

    assert response.status_code == 400
    assert response.json["error"]["code"] == "validation_error"
    assert set(response.json["error"]["fields"]) == {"body", "headers", "secret"}
    assert "got int" in response.json["error"]["fields"]["secret"]


# -- the dashboard -----------------------------------------------------------------------------


def header_lines(received: Received) -> str:
    return "\n".join(f"{k}: {v}" for k, v in received.headers.items())


def test_delivery_page_checks_a_pasted_signature_and_shows_what_was_signed(user, webhook, captured):
    delivery_id = captured.headers["X-CloudThinker-Delivery"]
    page = user.get(f"/settings/webhooks/logs/{delivery_id}")
    assert "Check a signature" in page.text
    signed = f"{captured.headers['webhook-id']}.{captured.headers['webhook-timestamp']}."
    assert signed in html.unescape(page.text)

    reformatted = json.dumps(json.loads(captured.body), indent=2, ensure_ascii=False)
    answer = user.post(
        f"/settings/webhooks/logs/{delivery_id}/check-signature",
        {"body": reformatted, "headers": header_lines(captured), "secret": webhook["secret"]},
        htmx=True,
    )

    shown = text(html.unescape(answer.text))
    assert "Does not verify" in shown
    assert "body_modified" in shown
    assert "the body was modified (re-serialised JSON:" in shown
    assert captured.body.decode() in html.unescape(answer.text)  # the exact bytes signed

    genuine = user.post(
        f"/settings/webhooks/logs/{delivery_id}/check-signature",
        {"body": captured.body.decode(), "headers": header_lines(captured)},
        htmx=True,
    )
    assert "Verifies" in text(genuine.text)


def test_delivery_page_replays_an_attempt_with_curl(user, webhook, captured, tmp_path):
    delivery_id = captured.headers["X-CloudThinker-Delivery"]
    local = Receiver()  # plain HTTP on loopback: "my laptop"
    try:
        answer = user.get(
            f"/settings/webhooks/logs/{delivery_id}/replay",
            query_string={"url": local.url("/mine"), "attempt": "1"},
            headers={"HX-Request": "true"},
        )
        command = html.unescape(re.search(r"<pre[^>]*>(.*?)</pre>", answer.text, re.S).group(1))
        assert command.startswith(f"curl -sS {local.url('/mine')}")
        subprocess.run(["bash", "-c", command], check=True, capture_output=True, timeout=30)
        [replayed] = local.wait_for(1)
    finally:
        local.close()
    assert replayed.body == captured.body
    for name in ("webhook-signature", "webhook-id", "webhook-timestamp", "X-CloudThinker-Event"):
        assert replayed.headers[name] == captured.headers[name]
    StandardWebhook(webhook["secret"]).verify(replayed.body, replayed.headers)


def test_webhook_page_shows_how_to_verify_in_three_languages(user, webhook, captured):
    page = user.get(f"/settings/webhooks/{webhook['id']}")

    shown = html.unescape(page.text)
    assert "Verify its deliveries" in shown
    assert "from standardwebhooks.webhooks import Webhook" in shown
    assert 'require("standardwebhooks")' in shown
    assert "func Verify(secret string, header http.Header, body []byte) bool" in shown
    delivery_id = captured.headers["X-CloudThinker-Delivery"]
    assert f'href="/settings/webhooks/logs/{delivery_id}#check-signature">Check a signature' in (
        page.text
    )


def test_a_pagerduty_delivery_verifies_though_its_logged_body_masks_the_routing_key(
    api, receiver, service
):
    routing_key = "R0UT1NGKEY0000000000000000000042"
    pagerduty = api.create_webhook(
        receiver.url(),
        name="PagerDuty",
        template="pagerduty",
        template_params={"routing_key": routing_key},
    )
    api.publish(data={"title": TITLE})
    service.run_until(lambda: receiver.requests)
    got = receiver.requests[0]
    assert routing_key in got.body.decode()  # the receiver gets the key; the log keeps it masked

    answer = check(api, pagerduty, got.body.decode(), got.headers, secret=pagerduty["secret"])

    assert answer["problems"] == [] and answer["valid"] is True
    assert routing_key not in json.dumps(answer)  # the answer shows no more than the log

    tampered = got.body.decode().replace('"trigger"', '"resolve"')
    assert check(api, pagerduty, tampered, got.headers)["problems"][:1] == ["body_modified"]
