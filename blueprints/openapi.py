"""The OpenAPI 3.1 description of the REST API, served at /api/v1/openapi.json."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask.typing import ResponseReturnValue

from webhooks import catalog
from webhooks.models import DeliveryStatus
from webhooks.publishing import MAX_BATCH

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")

ERROR_CODES = [
    "invalid_json",
    "validation_error",
    "invalid_url",
    "target_not_allowed",
    "invalid_headers",
    "invalid_secret",
    "invalid_transform",
    "invalid_rate_limit",
    "invalid_ordering_key",
    "unknown_event_type",
    "idempotency_conflict",
    "payload_too_large",
    "webhook_inactive",
    "not_found",
    "unauthorized",
    "rate_limited",
    "quota_exceeded",
    "method_not_allowed",
    "bad_request",
    "internal_error",
    "unavailable",
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
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
    return {str(c): _answer(words[c], _ref("Error")) for c in (401, 429, *codes)}


def _id(name: str, prefix: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": f"`{prefix}_…`",
    }


TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
# Flow control (API.md section 8).
RATE_LIMIT = {
    "type": ["number", "null"],
    "minimum": 0.01,
    "maximum": 10000,
    "description": "at most this many attempts start per second, in bursts of at most "
    "max(1, ceil(rate_limit)); null: no limit (the slack template sets 1)",
}
ORDERING_KEY = {
    "type": ["string", "null"],
    "maxLength": 1000,
    "description": "a template rendered against the envelope: deliveries whose keys are equal "
    "go one at a time, in publish order; null: no ordering (the pagerduty template sets its "
    "dedup_key)",
}

WEBHOOK_INPUT = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "url": {"type": "string", "maxLength": 2048, "description": "https:// only"},
        "events": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "secret": {"type": ["string", "null"]},
        "headers": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "maxProperties": 20,
        },
        "active": {"type": "boolean"},
        "template": {"type": ["string", "null"]},
        "template_params": {"type": ["object", "null"]},
        "transform": {"type": ["object", "null"]},
        "rate_limit": RATE_LIMIT,
        "ordering_key": ORDERING_KEY,
    },
    "additionalProperties": False,
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "fields"],
                "properties": {
                    "code": {"type": "string", "enum": ERROR_CODES},
                    "message": {"type": "string"},
                    "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            }
        },
    },
    "EventType": {
        "type": "object",
        "required": ["type", "category", "description", "example"],
        "properties": {
            "type": {"type": "string", "enum": [e.type for e in catalog.CATALOG]},
            "category": {"type": "string", "enum": [key for key, _ in catalog.CATEGORIES]},
            "description": {"type": "string"},
            "example": {"type": "object"},
        },
    },
    "Webhook": {
        "type": "object",
        "required": [
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
        ],  # fmt: skip
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "url": {"type": "string"},
            "events": {"type": "array", "items": {"type": "string"}},
            "headers": {
                "type": "object",
                "description": "its own custom headers; credential values masked (••••1234)",
            },
            "template_headers": {
                "type": "object",
                "description": "headers its template adds when it sends; credentials masked",
            },
            "active": {"type": "boolean"},
            "disabled_reason": {"type": ["string", "null"]},
            "has_secret": {"type": "boolean"},
            "template": {"type": ["string", "null"]},
            "template_params": {
                "type": ["object", "null"],
                "description": "credentials (api_token, token, routing_key) masked; a masked "
                "value sent back keeps the stored one; PATCH merges (null removes a key)",
            },
            "transform": {
                "type": ["object", "null"],
                "description": "what is rendered: its own, or its template's (live; without "
                "credentials, which are set at send time)",
            },
            "transform_source": {
                "type": ["string", "null"],
                "enum": ["template", "custom", None],
                "description": "template: follows its template's settings; custom: its own "
                "(sending a transform other than the template's detaches; null follows again)",
            },
            "rate_limit": RATE_LIMIT,
            "ordering_key": ORDERING_KEY,
            "created_at": TIME,
            "updated_at": TIME,
            "secret": {"type": ["string", "null"], "description": "only when created"},
        },
    },
    "WebhookInput": {**WEBHOOK_INPUT, "required": ["name", "url", "events"]},
    "WebhookPatch": WEBHOOK_INPUT,
    "Envelope": {
        "type": "object",
        "required": ["id", "type", "timestamp", "workspace_id", "data"],
        "properties": {
            "id": {"type": "string"},
            "type": {"type": "string"},
            "timestamp": TIME,
            "workspace_id": {"type": "string"},
            "data": {"type": "object"},
            "test": {"type": "boolean"},
            "delivery_count": {"type": "integer"},
        },
    },
    "Delivery": {
        "type": "object",
        "required": [
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
        ],  # fmt: skip
        "properties": {
            "id": {"type": "string"},
            "event_id": {"type": "string"},
            "event_type": {"type": "string"},
            "webhook_id": {"type": "string"},
            "kind": {
                "type": "string",
                "enum": ["event", "test", "redelivery", "recover", "replay"],
            },
            "status": {"type": "string", "enum": list(DeliveryStatus.ALL)},
            "attempt_count": {"type": "integer"},
            "max_attempts": {"type": "integer"},
            "next_attempt_at": NULLABLE_TIME,
            "last_status_code": {"type": ["integer", "null"]},
            "last_error": {"type": ["string", "null"]},
            "waiting": {
                "type": ["string", "null"],
                "enum": ["rate_limit", "order", None],
                "description": "why a pending delivery is not sent yet: its webhook's rate "
                "limit (it goes at next_attempt_at), or an earlier delivery with the same "
                "ordering key (waiting_for)",
            },
            "waiting_for": {
                "type": ["string", "null"],
                "description": "the earlier delivery with the same ordering key it waits for",
            },
            "created_at": TIME,
            "updated_at": TIME,
        },
    },
    "Attempt": {
        "type": "object",
        "required": ["number", "started_at", "duration_ms", "request", "response", "error"],
        "properties": {
            "number": {"type": "integer"},
            "outcome": {"type": "string", "enum": ["in_flight", "success", "failure", "lost"]},
            "started_at": TIME,
            "duration_ms": {"type": ["integer", "null"]},
            "request": {
                "type": "object",
                "properties": {
                    "url": {"type": "string"},
                    "headers": {"type": "object"},
                    "body": {"type": "string"},
                },
            },
            "response": {
                "type": ["object", "null"],
                "properties": {
                    "status_code": {"type": "integer"},
                    "headers": {"type": "object"},
                    "body": {"type": ["string", "null"]},
                },
            },
            "error": {"type": ["string", "null"]},
        },
    },
}

SCHEMAS.update(
    {
        "BulkStarted": {
            "type": "object",
            "required": ["job_id", "count"],
            "properties": {
                "job_id": {"type": "string"},
                "count": {"type": "integer", "description": "deliveries it will create"},
                "message": {"type": "string", "description": "when the 10,000 cap was reached"},
            },
        },
        "BulkJob": {
            "type": "object",
            "required": ["id", "kind", "status", "done", "total", "webhook_id", "created_at"],
            "properties": {
                "id": {"type": "string"},
                "kind": {
                    "type": "string",
                    "enum": ["recover", "replay", "redeliver"],
                    "description": "redeliver: the dashboard's Redeliver all matching, of the "
                    "failed deliveries a logs filter matched when it started",
                },
                "status": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
                "done": {"type": "integer", "description": "deliveries created so far"},
                "total": {"type": "integer", "description": "deliveries to create in all"},
                "webhook_id": {
                    "type": ["string", "null"],
                    "description": "null for a redeliver job whose filter named no webhook",
                },
                "created_at": TIME,
                "error": {"type": ["string", "null"]},
            },
        },
        "NotificationSettings": {
            "type": "object",
            "required": ["emails", "alert_url"],
            "properties": {
                "emails": {
                    "type": "array",
                    "items": {"type": "string", "format": "email"},
                    "maxItems": 20,
                },
                "alert_url": {
                    "type": ["string", "null"],
                    "description": 'gets a POST of {"text": …}; the same rules as a webhook URL',
                },
                "warnings": {"type": "array", "items": {"type": "string"}},
            },
        },
    }
)

WEBHOOK_ID = [_id("webhook_id", "wh")]
DELIVERY_ID = [_id("delivery_id", "dlv")]
LISTENER_ID = [_id("listener_id", "lst")]
LIST = {"type": "object", "required": ["data"]}


def _list_of(name: str, paged: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {
        **LIST,
        "properties": {"data": {"type": "array", "items": _ref(name)}},
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


PATHS: dict[str, Any] = {
    "/event-types": {
        "get": {
            "summary": "The event catalog",
            "responses": {"200": _answer("the 20 types", _list_of("EventType")), **_errors()},
        }
    },
    "/webhooks": {
        "post": {
            "summary": "Create a webhook",
            "requestBody": {"required": True, **_json(_ref("WebhookInput"))},
            "responses": {
                "201": _answer("created, with its secret", _ref("Webhook")),
                **_errors(400, 403),
            },
        },
        "get": {
            "summary": "List webhooks",
            "responses": {"200": _answer("newest first", _list_of("Webhook")), **_errors()},
        },
    },
    "/webhooks/{webhook_id}": {
        "parameters": WEBHOOK_ID,
        "get": {
            "summary": "One webhook",
            "responses": {"200": _answer("it", _ref("Webhook")), **_errors(404)},
        },
        "patch": {
            "summary": "Change any field; active false pauses",
            "requestBody": {"required": True, **_json(_ref("WebhookPatch"))},
            "responses": {"200": _answer("changed", _ref("Webhook")), **_errors(400, 404)},
        },
        "delete": {
            "summary": "Delete with its logs",
            "responses": {"204": {"description": "deleted"}, **_errors(404)},
        },
    },
    "/webhooks/{webhook_id}/secret": {
        "parameters": WEBHOOK_ID,
        "get": {
            "summary": "The current secret",
            "responses": {
                "200": _answer(
                    "it", {"type": "object", "properties": {"secret": {"type": ["string", "null"]}}}
                ),
                **_errors(404),
            },
        },
    },
    "/webhooks/{webhook_id}/rotate-secret": {
        "parameters": WEBHOOK_ID,
        "post": {
            "summary": "New secret; the old one signs alongside for 24 h",
            "requestBody": {
                "required": False,
                **_json({"type": "object", "properties": {"secret": {"type": "string"}}}),
            },
            "responses": {
                "200": _answer(
                    "rotated",
                    {
                        "type": "object",
                        "properties": {"secret": {"type": "string"}, "webhook": _ref("Webhook")},
                    },
                ),
                **_errors(400, 404),
            },
        },
    },
    "/webhooks/{webhook_id}/test": {
        "parameters": WEBHOOK_ID,
        "post": {
            "summary": "Send a catalog example to this webhook alone, once",
            "requestBody": {
                "required": False,
                **_json({"type": "object", "properties": {"type": {"type": "string"}}}),
            },
            "responses": {
                "202": _answer(
                    "queued",
                    {
                        "type": "object",
                        "properties": {
                            "event": _ref("Envelope"),
                            "delivery_id": {"type": "string"},
                        },
                    },
                ),
                **_errors(400, 404),
            },
        },
    },
    "/webhooks/{webhook_id}/recover": {
        "parameters": WEBHOOK_ID,
        "post": {
            "summary": "A new delivery for each failed one in a window whose event never got "
            "through (at most 10,000 per call)",
            "requestBody": {
                "required": True,
                **_json(
                    {
                        "type": "object",
                        "required": ["since"],
                        "properties": {"since": TIME, "until": TIME},
                        "additionalProperties": False,
                    }
                ),
            },
            "responses": {
                "202": _answer("a bulk job was started", _ref("BulkStarted")),
                **_errors(400, 404, 409),
            },
        },
    },
    "/webhooks/{webhook_id}/replay-missed": {
        "parameters": WEBHOOK_ID,
        "post": {
            "summary": "A delivery for every event of its types since a time that it never got "
            "(at most 10,000 per call)",
            "requestBody": {
                "required": True,
                **_json(
                    {
                        "type": "object",
                        "required": ["since"],
                        "properties": {"since": TIME},
                        "additionalProperties": False,
                    }
                ),
            },
            "responses": {
                "202": _answer("a bulk job was started", _ref("BulkStarted")),
                **_errors(400, 404, 409),
            },
        },
    },
    "/jobs/{job_id}": {
        "parameters": [_id("job_id", "job")],
        "get": {
            "summary": "A bulk job's progress",
            "responses": {"200": _answer("it", _ref("BulkJob")), **_errors(404)},
        },
    },
    "/notifications": {
        "get": {
            "summary": "Where the workspace is told about failing webhooks",
            "responses": {"200": _answer("them", _ref("NotificationSettings")), **_errors()},
        },
        "put": {
            "summary": "Replace the e-mail addresses and the alert URL",
            "requestBody": {
                "required": True,
                **_json(
                    {
                        "type": "object",
                        "properties": {
                            "emails": {"type": "array", "items": {"type": "string"}},
                            "alert_url": {"type": ["string", "null"]},
                        },
                        "additionalProperties": False,
                    }
                ),
            },
            "responses": {
                "200": _answer("saved", _ref("NotificationSettings")),
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
            "requestBody": {
                "required": True,
                **_json(
                    {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"type": "string"}, "data": {"type": "object"}},
                    }
                ),
            },
            "responses": {
                "202": _answer("stored and queued", _ref("Envelope")),
                "200": _answer("the same key and body again: nothing sent", _ref("Envelope")),
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
            "requestBody": {
                "required": True,
                **_json(
                    {
                        "type": "object",
                        "required": ["events"],
                        "properties": {
                            "events": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": MAX_BATCH,
                                "items": {
                                    "type": "object",
                                    "required": ["type"],
                                    "properties": {
                                        "type": {"type": "string"},
                                        "data": {"type": "object"},
                                        "idempotency_key": {
                                            "type": ["string", "null"],
                                            "maxLength": 255,
                                        },
                                    },
                                    "additionalProperties": False,
                                },
                            }
                        },
                        "additionalProperties": False,
                    }
                ),
            },
            "responses": {
                "202": _answer(
                    "stored and queued: what POST /events answers for each event, in order",
                    _list_of("Envelope"),
                ),
                **_errors(400, 409, 413),
            },
        }
    },
    "/events/{event_id}": {
        "parameters": [_id("event_id", "evt")],
        "get": {
            "summary": "An event with its deliveries",
            "responses": {"200": _answer("it", _ref("Envelope")), **_errors(404)},
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
                "200": _answer("a page", _list_of("Delivery", paged=True)),
                **_errors(400),
            },
        }
    },
    "/deliveries/{delivery_id}": {
        "parameters": DELIVERY_ID,
        "get": {
            "summary": "A delivery with its event and attempts",
            "responses": {"200": _answer("it", _ref("Delivery")), **_errors(404)},
        },
    },
    "/deliveries/{delivery_id}/redeliver": {
        "parameters": DELIVERY_ID,
        "post": {
            "summary": "A new delivery of the same event to the same webhook",
            "responses": {"202": _answer("queued", _ref("Delivery")), **_errors(404)},
        },
    },
    "/webhooks/{webhook_id}/verify-signature": {
        "parameters": WEBHOOK_ID,
        "post": {
            "summary": "The signature debugger: does what a receiver got verify, and why not",
            "requestBody": {
                "required": True,
                **_json(
                    {
                        "type": "object",
                        "required": ["body", "headers"],
                        "properties": {
                            "body": {"type": "string"},
                            "headers": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "secret": {"type": "string"},
                            "computed": {"type": "string"},
                        },
                    }
                ),
            },
            "responses": {
                "200": _answer(
                    "the checks",
                    {
                        "type": "object",
                        "required": ["valid", "checks", "problems"],
                        "properties": {
                            "valid": {"type": "boolean"},
                            "checks": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "header": {"type": "string"},
                                        "valid": {"type": "boolean"},
                                        "reason": {"type": "string"},
                                    },
                                },
                            },
                            "problems": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                ),
                **_errors(400, 404),
            },
        },
    },
    "/listeners": {
        "post": {
            "summary": "Open a listener for `flask listen`: a webhook whose deliveries go to "
            "its stream",
            "requestBody": {
                "required": False,
                **_json(
                    {
                        "type": "object",
                        "properties": {"events": {"type": "array", "items": {"type": "string"}}},
                    }
                ),
            },
            "responses": {
                "201": _answer(
                    "opened",
                    {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "webhook_id": {"type": "string"},
                            "secret": {"type": "string"},
                            "stream_url": {"type": "string"},
                        },
                    },
                ),
                **_errors(400),
            },
        },
    },
    "/listeners/{listener_id}/stream": {
        "parameters": LISTENER_ID,
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
        "parameters": LISTENER_ID,
        "post": {
            "summary": "The outcome of an attempt the listener made",
            "requestBody": {
                "required": True,
                **_json(
                    {
                        "type": "object",
                        "required": ["delivery_id", "attempt"],
                        "properties": {
                            "delivery_id": {"type": "string"},
                            "attempt": {"type": "integer"},
                            "status_code": {"type": "integer"},
                            "headers": {"type": "object"},
                            "body": {"type": "string"},
                            "duration_ms": {"type": "integer"},
                            "error": {"type": "string"},
                        },
                    }
                ),
            },
            "responses": {
                "202": _answer(
                    "recorded",
                    {
                        "type": "object",
                        "properties": {
                            "delivery_id": {"type": "string"},
                            "attempt": {"type": "integer"},
                            "accepted": {"type": "boolean"},
                        },
                    },
                ),
                **_errors(400, 404),
            },
        },
    },
    "/listeners/{listener_id}": {
        "parameters": LISTENER_ID,
        "delete": {
            "summary": "Close a listener; its webhook goes with it",
            "responses": {"204": _answer("closed"), **_errors(404)},
        },
    },
    "/egress-ips": {
        "get": {
            "summary": "Addresses deliveries come from",
            "responses": {
                "200": _answer(
                    "them",
                    {
                        "type": "object",
                        "properties": {"ips": {"type": "array", "items": {"type": "string"}}},
                    },
                ),
                **_errors(),
            },
        }
    },
}


def spec() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "CloudThinker Webhooks", "version": "1.0.0"},
        "servers": [{"url": "/api/v1"}],
        "security": [{"apiKey": []}],
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
        "paths": PATHS,
    }


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    """The OpenAPI description (no key needed)."""
    return spec()
