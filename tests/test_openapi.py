"""The OpenAPI description stays true: every route is in it, and answers match its schemas."""

from __future__ import annotations

import re

import pytest

jsonschema = pytest.importorskip("jsonschema")


def api_routes(app) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    routes = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.endpoint == "openapi.openapi":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule[len("/api/v1") :])
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((method.lower(), path))
    return routes


def test_every_route_is_described_and_nothing_else(app, client):
    spec = client.get("/api/v1/openapi.json").json
    described = {
        (method, path)
        for path, item in spec["paths"].items()
        for method in item
        if method in {"get", "post", "patch", "put", "delete"}
    }
    assert described == api_routes(app)


def resolve(spec, schema):  # type: ignore[no-untyped-def]
    return {**schema, "components": spec["components"]} if "$ref" in schema else schema


def check(spec, path, method, response) -> None:  # type: ignore[no-untyped-def]
    answer = spec["paths"][path][method]["responses"][str(response.status_code)]
    schema = answer["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator(
        {"$defs": {}, "components": spec["components"], **schema}
    )
    errors = list(validator.iter_errors(response.json))
    assert not errors, (path, method, response.status_code, errors[0].message)


def test_answers_match_the_description(client, api, webhook, receiver, service):
    spec = client.get("/api/v1/openapi.json").json
    published = api.post("/events", {"type": "incident.created", "data": {"id": "inc_1"}})
    service.run_until(lambda: receiver.requests)
    delivery_id = api.get("/deliveries").json["data"][0]["id"]

    check(spec, "/event-types", "get", api.get("/event-types"))
    check(spec, "/webhooks", "get", api.get("/webhooks"))
    check(spec, "/webhooks/{webhook_id}", "get", api.get(f"/webhooks/{webhook['id']}"))
    check(spec, "/events", "post", published)
    check(spec, "/deliveries", "get", api.get("/deliveries"))
    check(spec, "/deliveries/{delivery_id}", "get", api.get(f"/deliveries/{delivery_id}"))
    check(
        spec,
        "/webhooks",
        "post",
        api.post("/webhooks", {"name": "x", "url": "ftp://x", "events": ["*"]}),
    )
    check(spec, "/webhooks/{webhook_id}", "get", api.get("/webhooks/wh_missing"))
    check(spec, "/event-types", "get", client.get("/api/v1/event-types"))
