"""The REST API (docs/API.md section 5) as a client sees it: bodies, codes, scoping and paging."""

from __future__ import annotations

import base64
import json
import re
import threading
from datetime import datetime

import pytest
import sqlalchemy as sa

from tests.conftest import Api
from webhooks import accounts, credentials, publishing
from webhooks.models import ApiKey, Event, db, utcnow

WEBHOOK_FIELDS = {
    "id",
    "name",
    "url",
    "events",
    "headers",
    "active",
    "disabled_reason",
    "has_secret",
    "template",
    "transform",
    "created_at",
    "updated_at",
}
DELIVERY_FIELDS = {
    "id",
    "event_id",
    "event_type",
    "webhook_id",
    "status",
    "attempt_count",
    "next_attempt_at",
    "last_status_code",
    "last_error",
    "created_at",
}
ENVELOPE_FIELDS = ("id", "type", "timestamp", "workspace_id", "data")
CATEGORIES = {"recommendation", "incident", "security", "task", "agent", "resource"}
URL = "https://example.com/hook"


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture
def config(config, request):  # type: ignore[no-untyped-def]
    """The conftest configuration, plus `indirect` parametrization's overrides."""
    config.update(getattr(request, "param", {}))
    return config


def with_config(**values: str):  # type: ignore[no-untyped-def]
    return pytest.mark.parametrize("config", [values], indirect=True, ids=["config"])


def error_of(response, status: int, code: str, field: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    """The contract's error body: {"error": {"code", "message", "fields"}}."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.json
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["fields"], dict), error
    if field is not None:
        assert field in error["fields"] and error["fields"][field], error
    return error


def is_iso_utc(value: str) -> bool:
    return (
        isinstance(value, str)
        and value.endswith("Z")
        and datetime.fromisoformat(value.replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    )


def raw_post(api, path: str, data: str | bytes):  # type: ignore[no-untyped-def]
    return api.client.post(
        f"/api/v1{path}",
        data=data,
        content_type="application/json",
        headers={"Authorization": f"Bearer {api.key}"},
    )


def other_workspace(app, client) -> Api:  # type: ignore[no-untyped-def]
    with app.app_context():
        _, key = accounts.create_workspace(db.session, "Other")
    return Api(client, key)


# --- 1. auth -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer whk_not-a-real-key", "Bearer ", "Bearer nonsense", "Basic {key}", "{key}"],
    ids=["none", "wrong", "empty", "unprefixed", "basic-scheme", "no-scheme"],
)
def test_missing_or_bad_key_is_401_unauthorized(client, workspace, authorization):
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization.format(key=workspace["key"])

    for response in (
        client.get("/api/v1/webhooks", headers=headers),
        client.post(
            "/api/v1/events", json={"type": "incident.created", "data": {}}, headers=headers
        ),
    ):
        error_of(response, 401, "unauthorized")


def test_revoked_key_is_401_unauthorized(app, api, workspace):
    assert api.get("/webhooks").json == {"data": []}
    api.create_webhook(URL)  # a publish reads the webhooks with the key: none go out

    with app.app_context():
        db.session.execute(
            sa.update(ApiKey)
            .where(ApiKey.workspace_id == workspace["id"])
            .values(revoked_at=utcnow())
        )
        db.session.commit()

    error = error_of(api.get("/webhooks"), 401, "unauthorized")
    assert error["fields"] == {}
    error_of(api.post("/events", {"type": "incident.created", "data": {}}), 401, "unauthorized")
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Event)) == 0


# --- 2. webhooks CRUD ------------------------------------------------------------------------


def test_create_returns_every_field_and_a_generated_secret(api):
    response = api.post(
        "/webhooks",
        {"name": "Ops", "url": URL, "events": ["incident.created"], "headers": {"X-Team": "ops"}},
    )

    assert response.status_code == 201
    created = response.json
    assert WEBHOOK_FIELDS | {"secret"} <= set(created)
    assert created["id"].startswith("wh_")
    assert created["name"] == "Ops" and created["url"] == URL
    assert created["events"] == ["incident.created"]
    assert created["headers"] == {"X-Team": "ops"}
    assert created["active"] is True and created["disabled_reason"] is None
    assert created["has_secret"] is True
    assert created["template"] is None and created["transform"] is None
    assert is_iso_utc(created["created_at"]) and is_iso_utc(created["updated_at"])
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24


def test_list_and_get_show_the_webhook_without_its_secret(api):
    first = api.create_webhook(URL, name="First")
    second = api.create_webhook(URL, name="Second", events=["security.*"])

    listed = api.get("/webhooks").json
    assert set(listed) == {"data"}
    assert [w["id"] for w in listed["data"]] == [second["id"], first["id"]]  # newest first
    for shown in listed["data"]:
        assert WEBHOOK_FIELDS <= set(shown) and "secret" not in shown

    response = api.get(f"/webhooks/{first['id']}")
    assert response.status_code == 200
    shown = response.json
    assert "secret" not in shown
    assert shown == {k: v for k, v in first.items() if k not in ("secret", "warnings")}


@pytest.mark.parametrize(
    "change",
    [
        {"name": "Renamed"},
        {"url": "https://example.org/new?x=1"},
        {"events": ["security.*", "task.completed"]},
        {"headers": {"X-A": "1", "X-B": "2"}},
        {"headers": {}},
        {"template": "generic"},
        {"active": False},
    ],
    ids=["name", "url", "events", "headers", "no-headers", "template", "active"],
)
def test_patch_changes_one_field_and_keeps_the_others(api, change):
    original = api.create_webhook(URL, headers={"X-Team": "ops"})
    original.pop("secret")

    response = api.patch(f"/webhooks/{original['id']}", change)

    assert response.status_code == 200, response.json
    patched = response.json
    patched.pop("warnings", None)  # example.org may not resolve here: saved with a warning
    assert api.get(f"/webhooks/{original['id']}").json == patched
    for key, value in change.items():
        assert patched[key] == value
    untouched = WEBHOOK_FIELDS - set(change) - {"updated_at", "disabled_reason"}
    assert {k: patched[k] for k in untouched} == {k: original[k] for k in untouched}
    assert patched["updated_at"] > original["updated_at"]


def test_patch_active_false_pauses_with_a_reason_and_true_clears_it(api):
    webhook = api.create_webhook(URL)

    paused = api.patch(f"/webhooks/{webhook['id']}", {"active": False}).json
    assert paused["active"] is False
    assert isinstance(paused["disabled_reason"], str) and "Paused" in paused["disabled_reason"]
    assert api.publish()["delivery_count"] == 0

    resumed = api.patch(f"/webhooks/{webhook['id']}", {"active": True}).json
    assert resumed["active"] is True and resumed["disabled_reason"] is None
    assert api.publish()["delivery_count"] == 1


def test_a_webhook_deleted_while_an_event_is_published_only_loses_its_own_delivery(
    api, monkeypatch
):
    """The subscribers are read before the event is written (on SQLite before the write lock
    is taken); one deleted in between (here: read but never there) makes the write read them
    again, inside it."""
    kept = api.create_webhook(URL, name="Kept")
    read_first = publishing._read_first

    def read_a_deleted_one_too(session, workspace_id, given=None):  # type: ignore[no-untyped-def]
        return [*(read_first(session, workspace_id, given) or []), ("wh_deleted", ["*"], None)]

    monkeypatch.setattr(publishing, "_read_first", read_a_deleted_one_too)
    event = api.publish()

    assert event["delivery_count"] == 1
    assert [d["webhook_id"] for d in api.deliveries() if d["event_id"] == event["id"]] == [
        kept["id"]
    ]
    assert len(api.deliveries()) == 1  # published once, not twice


def test_refused_patch_changes_nothing(api):
    webhook = api.create_webhook(URL)
    before = api.get(f"/webhooks/{webhook['id']}").json

    error_of(
        api.patch(f"/webhooks/{webhook['id']}", {"name": "New", "url": "http://example.com/"}),
        400,
        "invalid_url",
        "url",
    )
    error_of(
        api.patch(f"/webhooks/{webhook['id']}", {"headers": {"Host": "evil"}}),
        400,
        "invalid_headers",
        "headers",
    )

    assert api.get(f"/webhooks/{webhook['id']}").json == before


def test_delete_removes_the_webhook_and_its_deliveries(api):
    webhook = api.create_webhook(URL)
    kept = api.create_webhook(URL, name="Kept")
    event = api.publish()
    assert event["delivery_count"] == 2
    doomed = [d for d in api.deliveries() if d["webhook_id"] == webhook["id"]]
    assert len(doomed) == 1

    response = api.delete(f"/webhooks/{webhook['id']}")

    assert response.status_code == 204 and response.get_data() == b""
    error_of(api.get(f"/webhooks/{webhook['id']}"), 404, "not_found")
    error_of(api.delete(f"/webhooks/{webhook['id']}"), 404, "not_found")
    assert [w["id"] for w in api.get("/webhooks").json["data"]] == [kept["id"]]
    assert [d["webhook_id"] for d in api.deliveries()] == [kept["id"]]
    assert api.deliveries(webhook_id=webhook["id"]) == []
    error_of(api.get(f"/deliveries/{doomed[0]['id']}"), 404, "not_found")
    shown = api.get(f"/events/{event['id']}").json
    assert shown["delivery_count"] == 1
    assert [d["webhook_id"] for d in shown["deliveries"]] == [kept["id"]]


# --- 3. validation ---------------------------------------------------------------------------


def _whsec(size: int) -> str:
    return "whsec_" + base64.b64encode(bytes(range(size))).decode()


VALID = {"name": "Ops", "url": URL, "events": ["*"]}
REFUSED_CREATES = [
    # (id, body, code, field)
    ("array-body", [VALID], "invalid_json", None),
    ("string-body", "hello", "invalid_json", None),
    ("http-url", {**VALID, "url": "http://example.com/hook"}, "invalid_url", "url"),
    ("long-url", {**VALID, "url": "https://example.com/" + "a" * 2029}, "invalid_url", "url"),
    ("unclosed-ipv6", {**VALID, "url": "https://[::1/hook"}, "invalid_url", "url"),
    ("bad-port", {**VALID, "url": "https://example.com:99999/"}, "invalid_url", "url"),
    ("no-host", {**VALID, "url": "https:///hook"}, "invalid_url", "url"),
    ("not-a-url", {**VALID, "url": "not a url"}, "invalid_url", "url"),
    ("space-in-host", {**VALID, "url": "https://exa mple.com/hook"}, "invalid_url", "url"),
    ("newline-in-url", {**VALID, "url": "https://example.com/a\nb"}, "invalid_url", "url"),
    ("nul-in-url", {**VALID, "url": "https://example.com\x00/"}, "invalid_url", "url"),
    ("url-not-text", {**VALID, "url": 42}, "invalid_url", "url"),
    ("missing-url", {"name": "Ops", "events": ["*"]}, "invalid_url", "url"),
    ("unknown-event", {**VALID, "events": ["nope.x"]}, "unknown_event_type", "events"),
    ("unknown-category", {**VALID, "events": ["nope.*"]}, "unknown_event_type", "events"),
    ("missing-name", {"url": URL, "events": ["*"]}, "validation_error", "name"),
    ("blank-name", {**VALID, "name": "   "}, "validation_error", "name"),
    ("empty-events", {**VALID, "events": []}, "validation_error", "events"),
    ("missing-events", {"name": "Ops", "url": URL}, "validation_error", "events"),
    ("events-not-list", {**VALID, "events": "*"}, "validation_error", "events"),
    ("active-not-bool", {**VALID, "active": "yes"}, "validation_error", "active"),
    ("header-space", {**VALID, "headers": {"Bad Header": "x"}}, "invalid_headers", "headers"),
    ("header-name-lf", {**VALID, "headers": {"X-Foo\n": "x"}}, "invalid_headers", "headers"),
    ("header-crlf", {**VALID, "headers": {"X-A": "a\r\nX-B: b"}}, "invalid_headers", "headers"),
    ("header-nul", {**VALID, "headers": {"X-A": "a\x00b"}}, "invalid_headers", "headers"),
    ("header-number", {**VALID, "headers": {"X-A": 1}}, "invalid_headers", "headers"),
    ("headers-list", {**VALID, "headers": ["X-A: 1"]}, "invalid_headers", "headers"),
    (
        "21-headers",
        {**VALID, "headers": {f"X-H{i}": "v" for i in range(21)}},
        "invalid_headers",
        "headers",
    ),
    *[
        (f"reserved-{name}", {**VALID, "headers": {name: "x"}}, "invalid_headers", "headers")
        for name in (
            "Content-Type",
            "webhook-signature",
            "Host",
            "content-length",
            "User-Agent",
            "X-CloudThinker-Signature",
            "Webhook-Id",
        )
    ],
    ("whsec-10-bytes", {**VALID, "secret": _whsec(10)}, "invalid_secret", "secret"),
    ("whsec-65-bytes", {**VALID, "secret": _whsec(65)}, "invalid_secret", "secret"),
    ("whsec-not-base64", {**VALID, "secret": "whsec_not*base64!"}, "invalid_secret", "secret"),
    ("plain-5-chars", {**VALID, "secret": "short"}, "invalid_secret", "secret"),
    ("plain-257-chars", {**VALID, "secret": "s" * 257}, "invalid_secret", "secret"),
    ("secret-number", {**VALID, "secret": 1234567890123456789}, "invalid_secret", "secret"),
]


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [case[1:] for case in REFUSED_CREATES],
    ids=[case[0] for case in REFUSED_CREATES],
)
def test_refused_create_names_the_problem_and_saves_nothing(api, body, code, field):
    response = api.post("/webhooks", body)

    error_of(response, 400, code, field)
    assert api.get("/webhooks").json == {"data": []}


@pytest.mark.parametrize("raw", ["{not json", "", "\xff\xfe", '{"name": "Ops",}'])
def test_body_that_is_not_json_is_invalid_json(api, raw):
    error_of(raw_post(api, "/webhooks", raw.encode("latin-1")), 400, "invalid_json")
    error_of(raw_post(api, "/events", raw.encode("latin-1")), 400, "invalid_json")
    assert api.get("/webhooks").json == {"data": []}


def test_accepted_boundaries_and_patterns(api):
    accepted = [
        {"events": ["security.*"]},
        {"events": ["*"]},
        {"events": ["incident.created"]},
        {"events": ["incident.created", "task.*", "finding.*"]},
        {"url": "https://example.com/" + "a" * 2028},  # exactly 2,048 characters
        {"headers": {f"X-H{i}": "v" for i in range(20)}},
        {"headers": {"X-Token_1.a~b": "Bearer abc", "Authorization": "Basic eA=="}},
        {"secret": _whsec(24)},
        {"secret": _whsec(64)},
        {"secret": "p" * 16},
        {"secret": "p" * 256},
        {"secret": None},
        {"active": False},
    ]
    for fields in accepted:
        response = api.post("/webhooks", {**VALID, **fields})
        assert response.status_code == 201, (fields, response.json)
        created = response.json
        for key, value in fields.items():
            # Credential headers come back masked (section 4).
            assert created[key] == (credentials.mask_headers(value) if key == "headers" else value)
        assert created["has_secret"] is (created["secret"] is not None)
    assert len(api.get("/webhooks").json["data"]) == len(accepted)


# --- 4. pattern subscriptions ------------------------------------------------------------------


def test_category_pattern_gets_every_type_of_its_category_only(api):
    webhook = api.create_webhook(URL, events=["security.*"])

    counts = {
        t: api.publish(t)["delivery_count"]
        for t in ("finding.created", "compliance.changed", "finding.resolved", "incident.created")
    }

    assert counts == {
        "finding.created": 1,
        "compliance.changed": 1,
        "finding.resolved": 1,
        "incident.created": 0,
    }
    got = api.deliveries(webhook_id=webhook["id"])
    assert sorted(d["event_type"] for d in got) == [
        "compliance.changed",
        "finding.created",
        "finding.resolved",
    ]


# --- 5. publish --------------------------------------------------------------------------------


def test_publish_answers_202_with_the_envelope_and_delivery_count(api, workspace):
    api.create_webhook(URL, events=["incident.*"])
    api.create_webhook(URL, events=["incident.created"])
    api.create_webhook(URL, events=["task.*"])
    data = {"id": "inc_1", "title": "Disk full", "nested": {"a": [1, 2]}, "note": "naïve ✓"}

    response = api.post("/events", {"type": "incident.created", "data": data})

    assert response.status_code == 202
    body = response.json
    assert body["id"].startswith("evt_")
    assert body["type"] == "incident.created"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["timestamp"])
    assert body["workspace_id"] == workspace["id"]
    assert body["data"] == data
    assert body["delivery_count"] == 2
    assert len(api.deliveries()) == 2


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"type": "nope.created", "data": {}}, "unknown_event_type", "type"),
        ({"type": "security.*", "data": {}}, "unknown_event_type", "type"),
        ({"data": {}}, "validation_error", "type"),
        ({"type": 5, "data": {}}, "validation_error", "type"),
        ({"type": "incident.created", "data": [1, 2]}, "validation_error", "data"),
        ({"type": "incident.created", "data": "text"}, "validation_error", "data"),
        ({"type": "incident.created", "data": None}, "validation_error", "data"),
        ([{"type": "incident.created", "data": {}}], "invalid_json", None),
    ],
    ids=["unknown", "pattern", "no-type", "type-number", "list", "string", "null", "array"],
)
def test_refused_publish_sends_nothing(api, body, code, field):
    api.create_webhook(URL)

    error_of(api.post("/events", body), 400, code, field)
    assert api.deliveries() == []


@with_config(WEBHOOK_MAX_PAYLOAD_BYTES="1000")
def test_body_over_the_payload_limit_is_413(config, api):
    api.create_webhook(URL)
    over = {"type": "incident.created", "data": {"x": "a" * 1000}}
    under = {"type": "incident.created", "data": {"x": "a" * 900}}
    assert len(json.dumps(under)) < 1000 < len(json.dumps(over))

    error_of(api.post("/events", over), 413, "payload_too_large")
    assert api.deliveries() == []

    assert api.post("/events", under).status_code == 202
    assert len(api.deliveries()) == 1


def test_same_idempotency_key_and_body_answers_200_with_the_same_event(api):
    api.create_webhook(URL)
    key = {"Idempotency-Key": "order-42"}

    first = api.post("/events", {"type": "incident.created", "data": {"n": 1}}, headers=key)
    again = api.post("/events", {"data": {"n": 1}, "type": "incident.created"}, headers=key)

    assert first.status_code == 202 and again.status_code == 200
    assert again.json == first.json
    assert first.json["delivery_count"] == 1
    assert [d["event_id"] for d in api.deliveries()] == [first.json["id"]]

    conflict = api.post("/events", {"type": "incident.created", "data": {"n": 2}}, headers=key)
    error_of(conflict, 409, "idempotency_conflict")
    other_type = api.post("/events", {"type": "task.started", "data": {"n": 1}}, headers=key)
    error_of(other_type, 409, "idempotency_conflict")
    assert len(api.deliveries()) == 1

    fresh = api.post("/events", {"type": "incident.created", "data": {"n": 1}})
    assert fresh.status_code == 202 and fresh.json["id"] != first.json["id"]


def test_concurrent_publishes_with_one_key_make_one_event(app, api, workspace):
    api.create_webhook(URL)
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def publish_once() -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post(
            "/api/v1/events",
            json={"type": "incident.created", "data": {"id": "inc_9"}},
            headers={"Authorization": f"Bearer {workspace['key']}", "Idempotency-Key": "k-1"},
        )
        with lock:
            results.append((response.status_code, response.json))

    threads = [threading.Thread(target=publish_once) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(results) == threads_count
    assert sorted(status for status, _ in results) == [200] * (threads_count - 1) + [202]
    assert len({body["id"] for _, body in results}) == 1
    assert {body["delivery_count"] for _, body in results} == {1}
    event_id = results[0][1]["id"]
    assert [d["event_id"] for d in api.deliveries()] == [event_id]
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Event)) == 1


# --- 6. one event ---------------------------------------------------------------------------


def test_get_event_shows_the_envelope_and_its_deliveries(api):
    first = api.create_webhook(URL, name="A")
    second = api.create_webhook(URL, name="B", events=["incident.*"])
    api.create_webhook(URL, name="C", events=["task.*"])
    published = api.publish(data={"id": "inc_7"})

    response = api.get(f"/events/{published['id']}")

    assert response.status_code == 200
    shown = response.json
    assert {k: shown[k] for k in ENVELOPE_FIELDS} == {k: published[k] for k in ENVELOPE_FIELDS}
    assert shown["delivery_count"] == 2
    assert {d["webhook_id"] for d in shown["deliveries"]} == {first["id"], second["id"]}
    for delivery in shown["deliveries"]:
        assert DELIVERY_FIELDS <= set(delivery)
        assert delivery["id"].startswith("dlv_")
        assert delivery["event_id"] == published["id"]
        assert delivery["event_type"] == "incident.created"
        assert delivery["status"] == "pending" and delivery["attempt_count"] == 0
        assert is_iso_utc(delivery["created_at"])
    error_of(api.get("/events/evt_00000000000000000000000000"), 404, "not_found")


# --- 7. the deliveries list -------------------------------------------------------------------


@with_config(WEBHOOK_RETRY_SCHEDULE="0")
def test_deliveries_filter_by_webhook_status_and_event_type(
    config, api, receiver, receivers, service
):
    good = api.create_webhook(receiver.url(), name="Good")
    bad = api.create_webhook(receivers(500).url(), name="Bad")
    incident = api.publish("incident.created")
    task = api.publish("task.started")

    service.run_until(lambda: not api.deliveries(status="pending"))

    succeeded = api.deliveries(status="succeeded")
    failed = api.deliveries(status="failed")
    assert {d["webhook_id"] for d in succeeded} == {good["id"]} and len(succeeded) == 2
    assert {d["webhook_id"] for d in failed} == {bad["id"]} and len(failed) == 2
    for delivery in failed:
        assert delivery["attempt_count"] == 1 and delivery["next_attempt_at"] is None
        assert delivery["last_status_code"] == 500 and delivery["last_error"]
    for delivery in succeeded:
        assert delivery["last_status_code"] == 200 and delivery["next_attempt_at"] is None
    assert api.deliveries(status="pending") == []

    assert {d["id"] for d in api.deliveries(webhook_id=good["id"])} == {d["id"] for d in succeeded}
    by_type = api.deliveries(event_type="task.started")
    assert len(by_type) == 2 and {d["event_id"] for d in by_type} == {task["id"]}
    combined = api.deliveries(webhook_id=bad["id"], status="failed", event_type="incident.created")
    assert [(d["webhook_id"], d["event_id"]) for d in combined] == [(bad["id"], incident["id"])]
    assert api.deliveries(webhook_id="wh_00000000000000000000000000") == []
    assert api.deliveries(event_type="agent.unknown") == []

    error_of(api.get("/deliveries?status=done"), 400, "validation_error", "status")


def test_deliveries_since_is_inclusive_and_until_exclusive(api):
    api.create_webhook(URL)
    for n in range(4):
        api.publish(data={"n": n})
    newest_first = api.deliveries()
    assert len(newest_first) == 4
    d3, d2, d1, d0 = newest_first
    assert d0["created_at"] < d1["created_at"] < d2["created_at"] < d3["created_at"]

    def ids(**query):  # type: ignore[no-untyped-def]
        return [d["id"] for d in api.deliveries(**query)]

    assert ids(since=d1["created_at"]) == [d3["id"], d2["id"], d1["id"]]
    assert ids(until=d1["created_at"]) == [d0["id"]]
    assert ids(since=d1["created_at"], until=d3["created_at"]) == [d2["id"], d1["id"]]
    assert ids(since=d2["created_at"], until=d2["created_at"]) == []
    # The same moment written with an offset instead of Z.
    assert ids(since=d2["created_at"].replace("Z", "+00:00")) == [d3["id"], d2["id"]]

    error_of(api.get("/deliveries?since=yesterday"), 400, "validation_error", "since")
    error_of(api.get("/deliveries?until=2024-13-45"), 400, "validation_error", "until")


def test_deliveries_page_with_a_cursor_without_gaps_or_repeats(api):
    api.create_webhook(URL, name="A")
    api.create_webhook(
        URL, name="B"
    )  # two deliveries per event share created_at: ties must page cleanly
    for n in range(13):
        api.publish(data={"n": n})
    everything = api.deliveries()
    assert len(everything) == 26
    keys = [(d["created_at"], d["id"]) for d in everything]
    assert keys == sorted(keys, reverse=True)

    for limit in (7, 13, 5):
        pages, cursor = [], None
        while True:
            query = {"limit": limit, **({"cursor": cursor} if cursor else {})}
            response = api.client.get(
                "/api/v1/deliveries",
                query_string=query,
                headers={"Authorization": f"Bearer {api.key}"},
            )
            assert response.status_code == 200, response.json
            assert set(response.json) == {"data", "next_cursor"}
            pages.append(response.json["data"])
            cursor = response.json["next_cursor"]
            if cursor is None:
                break
            assert len(pages) < 10
        assert [len(p) for p in pages][:-1] == [limit] * (len(pages) - 1)
        assert 0 < len(pages[-1]) <= limit  # no empty trailing page
        assert [d["id"] for page in pages for d in page] == [d["id"] for d in everything]

    for bad in ("garbage!", "bm90IGpzb24", base64.urlsafe_b64encode(b'{"a": 1}').decode()):
        error_of(api.get(f"/deliveries?cursor={bad}"), 400, "validation_error", "cursor")
    error_of(api.get("/deliveries?limit=0"), 400, "validation_error", "limit")
    error_of(api.get("/deliveries?limit=many"), 400, "validation_error", "limit")


def test_a_cursor_pages_within_since_and_until(api):
    api.create_webhook(URL)
    for n in range(8):
        api.publish(data={"n": n})
    newest_first = api.deliveries()
    assert len({d["created_at"] for d in newest_first}) == 8
    window = {"since": newest_first[6]["created_at"], "until": newest_first[1]["created_at"]}
    expected = [d["id"] for d in newest_first[2:7]]

    def page(**query):  # type: ignore[no-untyped-def]
        response = api.client.get(
            "/api/v1/deliveries",
            query_string=query,
            headers={"Authorization": f"Bearer {api.key}"},
        )
        assert response.status_code == 200, response.json
        return response.json

    def walk(cursor: str | None) -> list[str]:
        found: list[str] = []
        while True:
            shown = page(limit=2, **window, **({"cursor": cursor} if cursor else {}))
            found += [d["id"] for d in shown["data"]]
            if (cursor := shown["next_cursor"]) is None:
                return found

    assert walk(None) == expected
    # A cursor from beyond until (a page of the whole log, say): until still holds.
    assert walk(page(limit=1)["next_cursor"]) == expected


# --- 8. one delivery with its attempts -----------------------------------------------------


def test_get_delivery_shows_the_event_and_every_attempt(api, webhook, receiver, service):
    event = api.publish(data={"id": "inc_5"})
    delivery_id = api.deliveries()[0]["id"]

    delivery = service.run_until(
        lambda: (d := api.get(f"/deliveries/{delivery_id}").json)["status"] != "pending" and d
    )

    assert DELIVERY_FIELDS | {"event", "attempts"} <= set(delivery)
    assert delivery["status"] == "succeeded" and delivery["attempt_count"] == 1
    assert delivery["event"]["id"] == event["id"]
    assert {k: delivery["event"][k] for k in ENVELOPE_FIELDS} == {
        k: event[k] for k in ENVELOPE_FIELDS
    }
    [attempt] = delivery["attempts"]
    assert attempt["number"] == 1
    assert is_iso_utc(attempt["started_at"])
    assert isinstance(attempt["duration_ms"], int) and attempt["duration_ms"] >= 0
    assert attempt["error"] is None
    sent = receiver.requests[0]
    assert attempt["request"]["url"] == webhook["url"]
    assert attempt["request"]["body"] == sent.body.decode()
    assert json.loads(attempt["request"]["body"]) == {k: event[k] for k in ENVELOPE_FIELDS}
    request_headers = attempt["request"]["headers"]
    assert request_headers["X-CloudThinker-Delivery"] == delivery_id
    assert request_headers["webhook-id"] == event["id"]
    assert request_headers["Content-Type"] == "application/json"
    response = attempt["response"]
    assert response["status_code"] == 200 and response["body"] == "ok"
    assert {k.lower(): v for k, v in response["headers"].items()}["content-length"] == "2"

    redelivered = api.post(f"/deliveries/{delivery_id}/redeliver")
    assert redelivered.status_code == 202
    again = redelivered.json
    assert DELIVERY_FIELDS <= set(again)
    assert again["id"] != delivery_id and again["event_id"] == event["id"]
    assert again["webhook_id"] == webhook["id"] and again["status"] == "pending"
    service.run_until(lambda: len(receiver.requests) >= 2)
    assert receiver.requests[1].headers["webhook-id"] == event["id"]
    assert receiver.requests[1].headers["X-CloudThinker-Delivery"] == again["id"]
    error_of(api.get("/deliveries/dlv_00000000000000000000000000"), 404, "not_found")


# --- 9. cross-workspace isolation ------------------------------------------------------------

MISSING = {
    "webhook": "wh_00000000000000000000000000",
    "event": "evt_00000000000000000000000000",
    "delivery": "dlv_00000000000000000000000000",
}
ID_ENDPOINTS = [
    # (method, path template, kind, body)
    ("get", "/webhooks/{id}", "webhook", None),
    ("patch", "/webhooks/{id}", "webhook", {"name": "Stolen"}),
    ("delete", "/webhooks/{id}", "webhook", None),
    ("get", "/webhooks/{id}/secret", "webhook", None),
    ("post", "/webhooks/{id}/rotate-secret", "webhook", {"secret": "x" * 32}),
    ("post", "/webhooks/{id}/test", "webhook", {"type": "incident.created"}),
    ("get", "/events/{id}", "event", None),
    ("get", "/deliveries/{id}", "delivery", None),
    ("post", "/deliveries/{id}/redeliver", "delivery", None),
]


def test_another_workspace_sees_none_of_it(app, client, api):
    webhook = api.create_webhook(URL)
    event = api.publish(data={"id": "inc_1"}, headers={"Idempotency-Key": "shared-key"})
    [delivery] = api.deliveries()
    ids = {"webhook": webhook["id"], "event": event["id"], "delivery": delivery["id"]}
    before = api.get(f"/webhooks/{webhook['id']}").json
    other = other_workspace(app, client)

    for method, template, kind, body in ID_ENDPOINTS:
        call = getattr(other, method)
        kwargs = {} if body is None else {"body": body}
        foreign = call(template.format(id=ids[kind]), **kwargs)
        missing = call(template.format(id=MISSING[kind]), **kwargs)
        where = f"{method.upper()} {template} ({kind})"
        assert foreign.status_code == 404, where
        assert missing.status_code == 404, where
        foreign_error = error_of(foreign, 404, "not_found")
        missing_error = error_of(missing, 404, "not_found")
        # Identical, apart from the id the caller sent.
        assert foreign_error["message"].replace(ids[kind], "ID") == missing_error[
            "message"
        ].replace(MISSING[kind], "ID"), where
        assert foreign_error["fields"] == missing_error["fields"], where
        # The same request by the owner works, so the 404 is not about the route.
        if method == "get":
            assert getattr(api, method)(template.format(id=ids[kind])).status_code == 200, where

    # Nothing the other workspace tried changed anything.
    assert api.get(f"/webhooks/{webhook['id']}").json == before
    assert api.get(f"/webhooks/{webhook['id']}/secret").json == {"secret": webhook["secret"]}
    assert [d["id"] for d in api.deliveries()] == [delivery["id"]]
    assert api.get(f"/events/{event['id']}").json["delivery_count"] == 1

    # Its lists are empty, even when filtered by the first workspace's ids.
    assert other.get("/webhooks").json == {"data": []}
    assert other.deliveries() == []
    assert other.deliveries(webhook_id=webhook["id"]) == []
    assert other.deliveries(event_type="incident.created") == []

    # Its publishes reach none of the first workspace's webhooks, and its idempotency keys
    # are its own.
    mine = other.publish(data={"id": "inc_1"}, headers={"Idempotency-Key": "shared-key"})
    assert mine["id"] != event["id"] and mine["delivery_count"] == 0
    assert mine["workspace_id"] != event["workspace_id"]
    assert [d["id"] for d in api.deliveries()] == [delivery["id"]]


# --- 10. event types --------------------------------------------------------------------------


def test_event_types_lists_the_twenty_catalog_types(api):
    response = api.get("/event-types")

    assert response.status_code == 200
    assert set(response.json) == {"data"}
    types = response.json["data"]
    assert len(types) == 20
    assert len({t["type"] for t in types}) == 20
    assert {t["category"] for t in types} == CATEGORIES
    for entry in types:
        assert {"type", "category", "description", "example"} <= set(entry)
        assert re.fullmatch(r"[a-z_]+\.[a-z_]+", entry["type"])
        assert isinstance(entry["description"], str) and entry["description"]
        assert isinstance(entry["example"], dict) and entry["example"]
    by_type = {t["type"]: t for t in types}
    assert by_type["incident.created"]["category"] == "incident"
    assert by_type["finding.created"]["category"] == "security"
    assert by_type["compliance.changed"]["category"] == "security"
    # Every listed type can be published.
    assert all(api.publish(t)["type"] == t for t in by_type)


# --- 11. secrets ----------------------------------------------------------------------------


def test_secret_can_be_read_rotated_and_removed(api):
    given = "my-own-plain-secret-1234"
    webhook = api.create_webhook(URL, secret=given)
    assert webhook["secret"] == given and webhook["has_secret"] is True
    path = f"/webhooks/{webhook['id']}"
    assert api.get(f"{path}/secret").json == {"secret": given}

    rotated_to = _whsec(32)
    response = api.post(f"{path}/rotate-secret", {"secret": rotated_to})
    assert response.status_code == 200, response.json
    assert response.json["secret"] == rotated_to
    assert response.json["webhook"]["has_secret"] is True
    assert "secret" not in response.json["webhook"]
    assert api.get(f"{path}/secret").json == {"secret": rotated_to}

    generated = api.post(f"{path}/rotate-secret").json["secret"]
    assert generated.startswith("whsec_") and generated != rotated_to
    assert len(base64.b64decode(generated.removeprefix("whsec_"), validate=True)) == 24
    assert api.get(f"{path}/secret").json == {"secret": generated}

    error_of(api.post(f"{path}/rotate-secret", {"secret": _whsec(10)}), 400, "invalid_secret")
    assert api.get(f"{path}/secret").json == {"secret": generated}

    unsigned = api.patch(path, {"secret": None})
    assert unsigned.status_code == 200 and unsigned.json["has_secret"] is False
    assert api.get(path).json["has_secret"] is False
    assert api.get(f"{path}/secret").json == {"secret": None}

    signed_again = api.patch(path, {"secret": "p" * 20}).json
    assert signed_again["has_secret"] is True
    assert api.get(f"{path}/secret").json == {"secret": "p" * 20}
    error_of(api.patch(path, {"secret": "short"}), 400, "invalid_secret", "secret")
    assert api.get(f"{path}/secret").json == {"secret": "p" * 20}


def test_webhook_created_with_null_secret_is_unsigned(api):
    webhook = api.create_webhook(URL, secret=None)

    assert webhook["secret"] is None and webhook["has_secret"] is False
    assert api.get(f"/webhooks/{webhook['id']}/secret").json == {"secret": None}


# --- 12. egress IPs ---------------------------------------------------------------------------


@with_config(WEBHOOK_EGRESS_IPS="203.0.113.7,203.0.113.8")
def test_egress_ips_lists_the_configured_addresses(config, api):
    response = api.get("/egress-ips")

    assert response.status_code == 200
    assert response.json == {"ips": ["203.0.113.7", "203.0.113.8"]}


def test_egress_ips_is_empty_when_none_are_configured(api):
    assert api.get("/egress-ips").json == {"ips": []}


@pytest.mark.parametrize(
    "path",
    [
        "/deliveries?webhook_id=%00",
        "/deliveries?event_type=a%00b",
        "/deliveries/dlv_%00",
        "/webhooks/wh_%00",
        "/events/evt_%00",
    ],
)
def test_a_nul_in_an_id_or_a_filter_is_a_clear_400(api, path):
    answer = api.get(path)

    assert answer.status_code == 400
    assert answer.json["error"]["code"] == "validation_error"
    assert "NUL" in answer.json["error"]["message"]


def test_the_dashboard_answers_a_nul_in_the_address_with_400(user):
    assert user.get("/settings/webhooks/logs?webhook_id=%00").status_code == 400
    assert user.get("/settings/webhooks/wh_%00").status_code == 400
