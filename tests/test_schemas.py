"""The API's shapes, declared once (webhooks.schemas): they read input, build answers and make
the OpenAPI document, so that a field added to a shape is taken, shown and described at once."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import Field

from blueprints.serialize import envelope_json
from tests.test_openapi import check
from webhooks import schemas
from webhooks.config import Settings
from webhooks.errors import FAILED, Invalid
from webhooks.schemas import ABSENT, Check, Reading, Shape, Show, sometimes


@pytest.fixture
def reading(app) -> Reading:  # type: ignore[no-untyped-def]
    return Reading(Settings.from_config(app.config))


def _words(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid("validation_error", "note is required", {"note": "Note is required"})
    return value.strip()


def _number(value: Any) -> int:
    if not isinstance(value, int):
        raise Invalid("validation_error", "a whole number, please")  # names no field
    return value


class Sample(Shape):
    model_config = {"extra": "forbid"}

    note: Annotated[str, Field(max_length=10), Check(_words)]
    count: Annotated[int, Check(_number)] = ABSENT
    plain: Annotated[str | None, Field(max_length=3)] = ABSENT  # checked by its type and limits


class Answer(Shape):
    id: str
    shouted: Annotated[str, Show(lambda row: row.name.upper())]
    secret: str = sometimes("only when created")


class Row:
    id = "x_1"
    name = "quiet"


def test_a_shape_reads_every_field_and_records_every_problem_at_once(reading):
    read = Sample.read({"count": "7", "plain": "long", "bogus": 1}, reading)

    assert read == {"note": FAILED, "count": FAILED, "plain": FAILED}
    with pytest.raises(Invalid) as refused:
        reading.problems.raise_any(Sample.order())
    assert refused.value.code == "validation_error"
    assert refused.value.message == "unknown field 'bogus'"  # a field it does not have comes first
    assert refused.value.fields == {
        "bogus": "unknown field",
        "note": "Note is required",  # absent and required: checked as null
        "count": "a whole number, please",  # a check that names no field is named for it
        "plain": "String should have at most 3 characters",  # without a check: pydantic's words
    }


def test_a_partial_reading_checks_only_what_is_given(reading):
    read = Sample.read({"count": 2, "plain": None}, reading, partial=True)

    assert read == {"count": 2, "plain": None} and not reading.problems.found


def test_an_answer_shows_each_field_and_a_sometimes_field_only_when_given():
    assert Answer.of(Row()) == {"id": "x_1", "shouted": "QUIET"}
    assert Answer.of(Row(), secret=None) == {"id": "x_1", "shouted": "QUIET", "secret": None}


def test_a_field_declared_without_a_check_is_checked_by_its_declared_type(reading):
    for given in (5, "5", None):
        fresh = Reading(reading.settings)
        Sample.read({"note": "n", "count": 1, "plain": given}, fresh)
        assert bool(fresh.problems.found) is (given == 5), given


def test_every_setting_a_webhook_takes_is_in_its_answer_and_in_the_description(api, client):
    spec = client.get("/api/v1/openapi.json").json
    settings = set(schemas.WebhookInput.model_fields)

    created = api.post(
        "/webhooks", {"name": "Ops", "url": "https://example.com/h", "events": ["*"]}
    )

    assert created.status_code == 201, created.json
    assert settings <= set(created.json)
    assert settings == set(spec["components"]["schemas"]["WebhookInput"]["properties"])
    assert settings == set(spec["components"]["schemas"]["WebhookPatch"]["properties"])
    assert settings <= set(spec["components"]["schemas"]["Webhook"]["properties"])
    check(spec, "/webhooks", "post", created)


def test_a_new_webhook_takes_the_declared_default_of_what_it_leaves_out(api):
    created = api.post(
        "/webhooks", {"name": "Ops", "url": "https://example.com/h", "events": ["*"]}
    )

    defaults = schemas.WebhookInput.defaults(leaving={"secret"})
    assert {name: created.json[name] for name in defaults} == defaults
    assert created.json["secret"].startswith("whsec_")  # its default: a generated one


def test_the_publish_answer_written_out_for_speed_keeps_to_its_declaration(app, workspace):
    from webhooks.models import Event, utcnow

    event = Event(
        id="evt_1", workspace_id=workspace["id"], type="task.started", data={}, occurred_at=utcnow()
    )
    event.is_test = False

    assert set(envelope_json(event)) <= set(schemas.Envelope.model_fields)


def test_the_description_has_no_titles_defaults_or_unnamed_references(client):
    spec = client.get("/api/v1/openapi.json").json
    named = set(spec["components"]["schemas"])
    described = [spec["components"]["schemas"], spec["paths"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            assert "title" not in node and "default" not in node and "anyOf" not in node, node
            ref = node.get("$ref")
            assert ref is None or ref.rsplit("/", 1)[-1] in named, ref
            for key, value in node.items():
                walk(value if key != "properties" else list(value.values()))
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(described)
