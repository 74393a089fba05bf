"""Fuzzing the REST API from its OpenAPI description: no 5xx, errors in the contract shape."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

EXAMPLES = 30


def check(case, response) -> None:  # type: ignore[no-untyped-def]
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    assert response.status_code < 500, where
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, where
        assert {"code", "message", "fields"} <= set(body["error"]), where


def test_api_never_fails_and_answers_in_the_contract_shape(app, workspace, webhook):
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    auth = {"Authorization": f"Bearer {workspace['key']}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case) -> None:  # type: ignore[no-untyped-def]
            case.headers = {**(case.headers or {}), **auth}
            check(case, case.call())

        fuzz()
