"""The OpenAPI 3.1 description of the REST API, served at /api/v1/openapi.json.

Its schemas are made from the shapes that the API reads and answers with (webhooks.schemas);
this module says which shape each operation takes and answers with, and in what words.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from flask import Blueprint
from flask.typing import ResponseReturnValue
from pydantic.json_schema import GenerateJsonSchema, models_json_schema
from pydantic_core import core_schema

from webhooks import schemas
from webhooks.models import DeliveryStatus
from webhooks.publishing import MAX_BATCH
from webhooks.schemas import Shape

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")


class Body:
    """A request body's shape: described as the API reads it."""

    def __init__(self, shape: type[Shape], *, required: bool = True) -> None:
        self.shape, self.required = shape, required


# The shapes named in components/schemas; the others are written out where they are used.
COMPONENTS = (
    schemas.Error,
    schemas.EventType,
    schemas.Webhook,
    Body(schemas.WebhookInput),
    schemas.Envelope,
    schemas.Delivery,
    schemas.Attempt,
    schemas.BulkStarted,
    schemas.BulkJob,
    schemas.NotificationSettings,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Any) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _answer(description: str, schema: Any = None) -> dict[str, Any]:
    return {"description": description, **(_json(schema) if schema else {})}


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "invalid input",
        401: "no or bad API key",
        403: "quota exceeded: the workspace already has as many as its limit allows",
        404: "not found in this workspace",
        409: "conflict",
        413: "request body too large",
        429: "rate limited",
    }
    return {str(c): _answer(words[c], schemas.Error) for c in (401, 429, *codes)}


def _id(name: str, prefix: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": f"`{prefix}_…`",
    }


# The prefix of each id a path may name: `/webhooks/{webhook_id}` takes a `wh_…`.
ID_PREFIXES = {
    "webhook_id": "wh",
    "event_id": "evt",
    "delivery_id": "dlv",
    "job_id": "job",
    "listener_id": "lst",
}


def _with_ids(paths: dict[str, Any]) -> dict[str, Any]:
    """Each path item, with its path's `{…_id}` parameters described first."""
    described = {}
    for path, item in paths.items():
        names = re.findall(r"{(\w+)}", path)
        ids = [_id(name, ID_PREFIXES[name]) for name in names]
        described[path] = {"parameters": ids, **item} if ids else item
    return described


def _list_of(shape: type[Shape], paged: bool = False) -> dict[str, Any]:
    """A collection: `{"data": […]}`, plus `next_cursor` where it pages."""
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "array", "items": shape}},
    }
    if paged:
        schema["properties"]["next_cursor"] = {"type": ["string", "null"]}
    return schema


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema or {"type": "string"},
        "description": description,
    }


def _action(summary: str, responses: dict[str, Any], body: Body | None = None) -> dict[str, Any]:
    """A path that is one POST on a resource: what it reads, and answers."""
    post: dict[str, Any] = {"summary": summary}
    if body is not None:
        post["requestBody"] = body
    post["responses"] = responses
    return {"post": post}


# What recover and replay answer: a bulk job to poll.
BULK_STARTED = {"202": _answer("a bulk job was started", schemas.BulkStarted)}

PATHS: dict[str, Any] = {
    "/event-types": {
        "get": {
            "summary": "The event catalog",
            "responses": {
                "200": _answer("the 20 types", _list_of(schemas.EventType)),
                **_errors(),
            },
        }
    },
    "/webhooks": {
        "post": {
            "summary": "Create a webhook",
            "requestBody": Body(schemas.WebhookInput),
            "responses": {
                "201": _answer("created, with its secret", schemas.Webhook),
                **_errors(400, 403),
            },
        },
        "get": {
            "summary": "List webhooks",
            "responses": {"200": _answer("newest first", _list_of(schemas.Webhook)), **_errors()},
        },
    },
    "/webhooks/{webhook_id}": {
        "get": {
            "summary": "One webhook",
            "responses": {"200": _answer("it", schemas.Webhook), **_errors(404)},
        },
        "patch": {
            "summary": "Change any field; active false pauses",
            "requestBody": {"required": True, **_json(_ref("WebhookPatch"))},
            "responses": {"200": _answer("changed", schemas.Webhook), **_errors(400, 404)},
        },
        "delete": {
            "summary": "Delete with its logs",
            "responses": {"204": {"description": "deleted"}, **_errors(404)},
        },
    },
    "/webhooks/{webhook_id}/secret": {
        "get": {
            "summary": "The current secret",
            "responses": {"200": _answer("it", schemas.Secret), **_errors(404)},
        },
    },
    "/webhooks/{webhook_id}/rotate-secret": _action(
        "New secret; the old one signs alongside for 24 h",
        {"200": _answer("rotated", schemas.Rotated), **_errors(400, 404)},
        Body(schemas.RotateSecretInput, required=False),
    ),
    "/webhooks/{webhook_id}/test": _action(
        "Send a catalog example to this webhook alone, once",
        {"202": _answer("queued", schemas.TestSent), **_errors(400, 404)},
        Body(schemas.TestEventInput, required=False),
    ),
    "/webhooks/{webhook_id}/recover": _action(
        "A new delivery for each failed one in a window whose event never got through "
        "(at most 10,000 per call)",
        {**BULK_STARTED, **_errors(400, 404, 409)},
        Body(schemas.RecoverInput),
    ),
    "/webhooks/{webhook_id}/replay-missed": _action(
        "A delivery for every event of its types since a time that it never got "
        "(at most 10,000 per call)",
        {**BULK_STARTED, **_errors(400, 404, 409)},
        Body(schemas.ReplayInput),
    ),
    "/jobs/{job_id}": {
        "get": {
            "summary": "A bulk job's progress",
            "responses": {"200": _answer("it", schemas.BulkJob), **_errors(404)},
        },
    },
    "/notifications": {
        "get": {
            "summary": "Where the workspace is told about failing webhooks",
            "responses": {"200": _answer("them", schemas.NotificationSettings), **_errors()},
        },
        "put": {
            "summary": "Replace the e-mail addresses and the alert URL",
            "requestBody": Body(schemas.NotificationSettingsInput),
            "responses": {
                "200": _answer("saved", schemas.NotificationSettings),
                **_errors(400),
            },
        },
    },
    "/events": {
        "post": {
            "summary": "Publish an event",
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 255},
                }
            ],
            "requestBody": Body(schemas.PublishInput),
            "responses": {
                "202": _answer("stored and queued", schemas.Envelope),
                "200": _answer("the same key and body again: nothing sent", schemas.Envelope),
                **_errors(400, 409, 413),
            },
        }
    },
    "/events/batch": {
        "post": {
            "summary": f"Publish up to {MAX_BATCH} events at once: all stored, or none",
            "description": "Each event is checked as `POST /events` checks its body "
            "(`WEBHOOK_MAX_PAYLOAD_BYTES` applies to each event's `{type, data}` as compact "
            f"JSON); the whole body may be {MAX_BATCH} times that. One bad event refuses the "
            "batch and `fields` names every bad one by index (`events[3].type`). An "
            "`idempotency_key` used before with the same body, or earlier in the same batch, "
            "answers as that publish and sends nothing again; with another body the batch is "
            "a 409. The batch counts as one request against the API rate limit.",
            "requestBody": Body(schemas.BatchInput),
            "responses": {
                "202": _answer(
                    "stored and queued: what POST /events answers for each event, in order",
                    _list_of(schemas.Envelope),
                ),
                **_errors(400, 409, 413),
            },
        }
    },
    "/events/{event_id}": {
        "get": {
            "summary": "An event with its deliveries",
            "responses": {"200": _answer("it", schemas.Envelope), **_errors(404)},
        },
    },
    "/deliveries": {
        "get": {
            "summary": "Deliveries, newest first, keyset-paged",
            "parameters": [
                _query("webhook_id", "only this webhook's"),
                _query(
                    "status",
                    "pending, succeeded or failed; or retrying (pending, failed at least once)",
                    type="string",
                    enum=[*DeliveryStatus.ALL, "retrying"],
                ),
                _query(
                    "q",
                    "an event id or a delivery id (exact), or words of the event's data.title",
                    type="string",
                    maxLength=200,
                ),
                _query("event_type", "only this type"),
                _query(
                    "since", "created at or after (ISO 8601)", type="string", format="date-time"
                ),
                _query("until", "created before (ISO 8601)", type="string", format="date-time"),
                _query("limit", "1-100, default 50", type="integer", minimum=1, maximum=100),
                _query("cursor", "next_cursor of the previous page"),
            ],
            "responses": {
                "200": _answer("a page", _list_of(schemas.Delivery, paged=True)),
                **_errors(400),
            },
        }
    },
    "/deliveries/{delivery_id}": {
        "get": {
            "summary": "A delivery with its event and attempts",
            "responses": {"200": _answer("it", schemas.Delivery), **_errors(404)},
        },
    },
    "/deliveries/{delivery_id}/redeliver": _action(
        "A new delivery of the same event to the same webhook",
        {"202": _answer("queued", schemas.Delivery), **_errors(404)},
    ),
    "/webhooks/{webhook_id}/verify-signature": _action(
        "The signature debugger: does what a receiver got verify, and why not",
        {"200": _answer("the checks", schemas.SignatureReport), **_errors(400, 404)},
        Body(schemas.SignatureCheckInput),
    ),
    "/listeners": {
        "post": {
            "summary": "Open a listener for `flask listen`: a webhook whose deliveries go to "
            "its stream",
            "requestBody": Body(schemas.ListenerInput, required=False),
            "responses": {"201": _answer("opened", schemas.Listener), **_errors(400)},
        },
    },
    "/listeners/{listener_id}/stream": {
        "get": {
            "summary": "Server-Sent Events: one `delivery` event per attempt",
            "responses": {
                "200": {
                    "description": "the stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **_errors(404),
            },
        },
    },
    "/listeners/{listener_id}/results": {
        "post": {
            "summary": "The outcome of an attempt the listener made",
            "requestBody": Body(schemas.ListenerResultInput),
            "responses": {
                "202": _answer("recorded", schemas.ListenerResult),
                **_errors(400, 404),
            },
        },
    },
    "/listeners/{listener_id}": {
        "delete": {
            "summary": "Close a listener; its webhook goes with it",
            "responses": {"204": _answer("closed"), **_errors(404)},
        },
    },
    "/egress-ips": {
        "get": {
            "summary": "Addresses deliveries come from",
            "responses": {"200": _answer("them", schemas.EgressIps), **_errors()},
        }
    },
}


class _Plain(GenerateJsonSchema):
    """The shapes' JSON Schema without defaults: what an absent field means is said in words
    (some defaults are the domain's to choose: a generated secret, a template's events)."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> dict[str, Any]:
        return self.generate_inner(schema["schema"])


def _shapes(node: Any) -> list[tuple[type[Shape], Any]]:
    """Every shape in the table, with the mode it is described in."""
    if isinstance(node, Body):
        return [(node.shape, "validation")]
    if isinstance(node, type) and issubclass(node, Shape):
        return [(node, "serialization")]
    if isinstance(node, dict):
        return [found for value in node.values() for found in _shapes(value)]
    if isinstance(node, list | tuple):
        return [found for value in node for found in _shapes(value)]
    return []


NAMED = [shape.__name__ for shape, _ in _shapes(COMPONENTS)]


def _tidy(node: Any, defs: dict[str, Any]) -> Any:
    """A generated schema as this document writes it: no titles; a shape that is not a
    component written out in place; a nullable type as a list of types, `["string", "null"]`."""
    if isinstance(node, list):
        return [_tidy(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref", "").rsplit("/", 1)[-1]
    if ref in defs and ref not in NAMED:
        return _tidy({**defs[ref], **{k: v for k, v in node.items() if k != "$ref"}}, defs)
    tidy: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" or (key == "additionalProperties" and value is True):
            continue
        if key == "properties":
            tidy[key] = {name: _tidy(prop, defs) for name, prop in value.items()}
        else:
            tidy[key] = _tidy(value, defs)
    return _nullable(tidy)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`anyOf: [X, null]` as X with "null" among its types (and its values, for an enum)."""
    options = schema.get("anyOf", [])
    others = [option for option in options if option != {"type": "null"}]
    if len(options) != 2 or len(others) != 1 or not isinstance(others[0].get("type"), str):
        return schema
    (other,) = others
    rest = {key: value for key, value in schema.items() if key != "anyOf"}
    merged = {**other, **rest, "type": [other["type"], "null"]}
    if "enum" in other:
        merged["enum"] = [*other["enum"], None]
    return merged


def _resolved(node: Any, schema_of: dict[type[Any], Any]) -> Any:
    """The table with each shape in it replaced by its schema."""
    if isinstance(node, Body):
        return {"required": node.required, **_json(schema_of[node.shape])}
    if isinstance(node, type) and issubclass(node, Shape):
        return schema_of[node]
    if isinstance(node, dict):
        return {key: _resolved(value, schema_of) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolved(item, schema_of) for item in node]
    return node


def _schemas() -> tuple[dict[str, Any], dict[type[Any], Any]]:
    """(components/schemas, each shape's schema where the table uses it)."""
    used = dict.fromkeys([*_shapes(COMPONENTS), *_shapes(PATHS)])
    refs, found = models_json_schema(
        list(used),
        ref_template="#/components/schemas/{model}",
        schema_generator=_Plain,
    )
    defs = found["$defs"]
    components = {name: _tidy(defs[name], defs) for name in NAMED}
    # PATCH takes any of the fields POST takes.
    components["WebhookPatch"] = {
        key: value for key, value in components["WebhookInput"].items() if key != "required"
    }
    return components, {shape: _tidy(ref, defs) for (shape, _), ref in refs.items()}


@functools.cache
def spec() -> dict[str, Any]:
    components, schema_of = _schemas()
    return {
        "openapi": "3.1.0",
        "info": {"title": "CloudThinker Webhooks", "version": "1.0.0"},
        "servers": [{"url": "/api/v1"}],
        "security": [{"apiKey": []}],
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": components,
        },
        "paths": _resolved(_with_ids(PATHS), schema_of),
    }


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    """The OpenAPI description (no key needed)."""
    return spec()
