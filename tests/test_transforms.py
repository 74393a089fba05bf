"""The transform engine and the built-in templates (pure unit tests: no app, Redis or database).

Template outputs are validated against JSON Schemas written from each target's public API
documentation (tests/schemas/*.json).
"""

from __future__ import annotations

import base64
import copy
import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from webhooks import catalog, templates, transforms
from webhooks.transforms import TransformError, compile_transform, render

SCHEMAS = Path(__file__).parent / "schemas"
ROUTING_KEY = "e93facc04764012d7bfb002500d5d1a6"
ALL_TYPES = [event.type for event in catalog.CATALOG]

ENVELOPE: dict[str, Any] = {
    "id": "evt_abc123",
    "type": "recommendation.created",
    "timestamp": "2024-01-15T10:30:00Z",
    "workspace_id": "ws_xyz789",
    "data": {
        "id": "rec_def456",
        "title": "Right-size EC2 instance i-0abc123",
        "potential_savings": 150.0,
        "count": 3,
        "approved": True,
        "rejected": False,
        "owner": None,
        "tags": {"env": "prod", "team": "orders"},
        "resources": ["i-1", "i-2"],
    },
}


def envelope_for(event_type: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The envelope of a catalog event, with its example data unless `data` is given."""
    example = catalog.BY_TYPE[event_type].example if event_type in catalog.BY_TYPE else {}
    return {
        "id": "evt_abc123",
        "type": event_type,
        "timestamp": "2024-01-15T10:30:00Z",
        "workspace_id": "ws_xyz789",
        "data": copy.deepcopy(example if data is None else data),
    }


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def assert_valid(name: str, body: Any) -> None:
    errors = sorted(validator(name).iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def render_one(source: Any, envelope: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    return render({"x": source}, ENVELOPE if envelope is None else envelope, **kwargs)["x"]


# --------------------------------------------------------------------------- interpolation


def test_interpolation_of_envelope_fields() -> None:
    transform = {"text": "New {{type}}: {{data.title}} ({{ id }}, {{workspace_id}}, {{timestamp}})"}
    assert render(transform, ENVELOPE) == {
        "text": "New recommendation.created: Right-size EC2 instance i-0abc123 "
        "(evt_abc123, ws_xyz789, 2024-01-15T10:30:00Z)"
    }


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ data }}", ENVELOPE["data"]),
        ("{{ data.tags }}", {"env": "prod", "team": "orders"}),
        ("{{ data.resources }}", ["i-1", "i-2"]),
        ("{{ data.count }}", 3),
        ("{{ data.potential_savings }}", 150.0),
        ("{{ data.approved }}", True),
        ("{{ data.rejected }}", False),
        ("{{ data.owner }}", None),
        ("{{ none }}", None),
        ("{{ data.title }}", "Right-size EC2 instance i-0abc123"),
        ("  {{ data.count }}\n", 3),
        ("{{- data.count -}}", 3),
        ("{{ data.count * 2 }}", 6),
        ("{{ [data.count, data.tags.env] }}", [3, "prod"]),
        ("{{ {'a': data.count, 'b': [1, none]} }}", {"a": 3, "b": [1, None]}),
        ("{{ (1, 2) }}", [1, 2]),
        ("{{ range(3) }}", [0, 1, 2]),
        ("{{ data.tags.items()|list }}", [["env", "prod"], ["team", "orders"]]),
    ],
)
def test_a_single_expression_keeps_its_json_type(source: str, expected: Any) -> None:
    value = render_one(source)
    assert value == expected
    assert type(value) is type(expected)


def test_a_typed_value_is_a_copy_of_the_envelope() -> None:
    envelope = copy.deepcopy(ENVELOPE)
    body = render({"payload": "{{ data }}"}, envelope)
    body["payload"]["tags"]["env"] = "changed"
    assert envelope["data"]["tags"]["env"] == "prod"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("tags: {{ data.tags }}", 'tags: {"env":"prod","team":"orders"}'),
        ("ids: {{ data.resources }}", 'ids: ["i-1","i-2"]'),
        ("owner: [{{ data.owner }}]", "owner: []"),
        ("flags: {{ data.approved }} {{ data.rejected }}", "flags: true false"),
        ("{{ data.count }}{{ data.count }}", "33"),
        ("n={{ data.count }}", "n=3"),
        ("{% if data.approved %}yes{% endif %}", "yes"),
        ("{{ data|tojson }}", json.dumps(ENVELOPE["data"], separators=(",", ":"))),
        ("{{ '<&>'|tojson }}", '"<&>"'),
        ("{{ data.title|upper }}", "RIGHT-SIZE EC2 INSTANCE I-0ABC123"),
        ("{{ 'abcdef'|truncate(4, true, '…') }}", "abc…"),
        ("{{ '%.2f'|format(data.potential_savings) }}", "150.00"),
    ],
)
def test_other_strings_are_interpolated(source: str, expected: str) -> None:
    assert render_one(source) == expected


def test_nested_objects_and_lists_are_rendered_and_keys_are_not() -> None:
    transform = {
        "{{ type }}": "key stays",
        "outer": {
            "list": ["{{ data.count }}", "n={{ data.count }}", 7, 1.5, True, None, ["{{ id }}"]],
            "deep": {"deeper": {"value": "{{ data.tags }}"}},
        },
        "number": 42,
        "flag": False,
        "nothing": None,
        "empty": "",
    }
    assert render(transform, ENVELOPE) == {
        "{{ type }}": "key stays",
        "outer": {
            "list": [3, "n=3", 7, 1.5, True, None, ["evt_abc123"]],
            "deep": {"deeper": {"value": {"env": "prod", "team": "orders"}}},
        },
        "number": 42,
        "flag": False,
        "nothing": None,
        "empty": "",
    }


def test_plain_strings_are_kept_exactly() -> None:
    for text in ["plain", "line\n", "  spaced  ", "{ not a template }", "100% } {"]:
        assert render_one(text) == text


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ data.missing }}", None),
        ("{{ data.missing.deeper }}", None),
        ("{{ data.missing.deeper['x'].y }}", None),
        ("{{ nothing_at_all }}", None),
        ("a{{ data.missing.deeper }}b", "ab"),
        ("{{ data.missing }}", None),
        ("{% if data.missing.deeper %}yes{% else %}no{% endif %}", "no"),
        ("{{ data.missing|default('fallback') }}", "fallback"),
        ("{{ data.missing is defined }}", False),
        ("{{ data.missing|length }}", 0),
        ("{% for x in data.missing %}{{ x }}{% endfor %}", ""),
        ("{{ [data.missing] }}", [None]),
    ],
)
def test_missing_fields_render_empty_or_null(source: str, expected: Any) -> None:
    assert render_one(source) == expected


def test_missing_data_altogether() -> None:
    body = render({"a": "{{ data.title }}", "b": "x{{ data.title }}"}, {"type": "t"})
    assert body == {"a": None, "b": "x"}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "{% for x in data.resources %}{{ loop.index }}/{{ loop.length }}:{{ x }}"
            "{% if not loop.last %},{% endif %}{% endfor %}",
            "1/2:i-1,2/2:i-2",
        ),
        ("{% for x in [] %}{% else %}empty{% endfor %}", "empty"),
        ("{% for x in data.resources if x != 'i-1' %}{{ x }}{% endfor %}", "i-2"),
        (
            "{% for k, v in data.tags|dictsort %}{{ k }}={{ v }};{% endfor %}",
            "env=prod;team=orders;",
        ),
        (
            "{% for n in [{'n': 1, 'c': [{'n': 2, 'c': []}]}] recursive %}"
            "{{ n.n }}[{{ loop(n.c) }}]{% endfor %}",
            "1[2[]]",
        ),
        (
            "{% set ns = namespace(total=0) %}{% for r in data.resources %}"
            "{% set ns.total = ns.total + 1 %}{% endfor %}{{ ns.total }}",
            "2",
        ),
        ("{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m(1) }}{{ m('a') }}", "<1><a>"),
        ("{{ data.resources|join(', ') }}", "i-1, i-2"),
        ("{{ data.resources|map('upper')|list }}", ["I-1", "I-2"]),
        ("{{ data.resources[1:] }}", ["i-2"]),
        ("{{ dict(a=data.count) }}", {"a": 3}),
        ("{{ 'a,b'.split(',') }}", ["a", "b"]),
        ("{{ type.split('.')[0] }}", "recommendation"),
        ("{{ '{:,.2f}'.format(1234.5) }}", "1,234.50"),
        ("{{ '%s-%s' % (1, 2) }}", "1-2"),
        ("{{ 'x' * 3 }}", "xxx"),
        ("{{ 2 ** 10 }}", 1024),
    ],
)
def test_ordinary_jinja_still_works(source: str, expected: Any) -> None:
    assert render_one(source) == expected


# --------------------------------------------------------------------------- compile errors


def test_compile_accepts_a_valid_transform() -> None:
    assert (
        compile_transform({"text": "{{ data.title }}", "n": [1, {"a": "{% if x %}{% endif %}"}]})
        is None
    )


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        ({"data": {"title": "{{ data.title }"}}, "data.title: line 1: unexpected '}'"),
        (
            {"text": "first\nsecond\n{% if data.x %}open"},
            "text: line 3: Unexpected end of template. Jinja was looking for the following tags:"
            " 'elif' or 'else' or 'endif'. The innermost block that needs to be closed is 'if'.",
        ),
        ({"blocks": [{"a": 1}, {"text": "ok", "b": "{{ 1 + }}"}]}, "blocks[1].b: line 1: "),
        ({"x": "{{ data|no_such_filter }}"}, "x: line 1: No filter named 'no_such_filter'."),
        ({"odd key": "{% endfor %}"}, '["odd key"]: line 1: '),
    ],
)
def test_compile_errors_name_the_path_and_the_line(transform: dict, message: str) -> None:
    with pytest.raises(TransformError) as raised:
        compile_transform(transform)
    assert str(raised.value).startswith(message)


def test_render_reports_compile_errors_too() -> None:
    with pytest.raises(TransformError, match=r"^text: line 1: unexpected '}'$"):
        render({"text": "{{ data.title }"}, ENVELOPE)


@pytest.mark.parametrize("transform", [None, [], "text", 3, ["{{ type }}"]])
def test_a_transform_must_be_an_object(transform: Any) -> None:
    with pytest.raises(TransformError, match="must be a JSON object"):
        compile_transform(transform)
    with pytest.raises(TransformError, match="must be a JSON object"):
        render(transform, ENVELOPE)


def test_a_transform_over_64_kib_is_refused() -> None:
    compile_transform({"text": "x" * (64 * 1024 - 20)})
    with pytest.raises(TransformError, match="over 64 KiB"):
        compile_transform({"text": "x" * (64 * 1024)})


@pytest.mark.parametrize(
    "transform",
    [{"a": {1: "x"}}, {"a": object()}, {"a": float("nan")}, {"a": {"b": b"bytes"}}],
)
def test_a_transform_must_be_json(transform: dict) -> None:
    with pytest.raises(TransformError):
        compile_transform(transform)


# --------------------------------------------------------------------------- runtime errors


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ 1 / 0 }}", "x: line 1: ZeroDivisionError: division by zero"),
        ("a\nb {{ data.missing + 1 }}", "x: line 2: 'dict object' has no attribute 'missing'"),
        ("{{ data.title.nope() }}", "x: line 1: "),
        ("{% include 'other' %}", "x: line 1: "),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "x: "),
    ],
)
def test_render_errors_are_transform_errors(source: str, message: str) -> None:
    with pytest.raises(TransformError) as raised:
        render({"x": source}, ENVELOPE)
    assert str(raised.value).startswith(message)


# --------------------------------------------------------------------------- sandbox


ESCAPES = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "x {{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ range.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ '{0.__globals__}'.format(cycler.__init__) }}",
    "{{ dict.mro() }}",
    "{{ data.__class__.__base__.__subclasses__() }}",
    "{{ data.items.__self__ }}",
    "{{ (data|attr('__class__')) }}",
    "{{ data|map(attribute='__class__')|list }}",
    "{{ request.application.__globals__ }}",
    "{{ config.__class__.__init__.__globals__ }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ [].append(1) }}",
    "{{ data.update({'title': 'changed'}) }}",
    "{{ data.pop('title') }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escapes_are_refused_or_inert(source: str) -> None:
    envelope = copy.deepcopy(ENVELOPE)
    try:
        body = render({"x": source}, envelope)
    except TransformError:
        pass
    else:
        text = json.dumps(body)
        for leak in ("<class", "<function", "<module", "<built-in", "__", "builtins", "Popen"):
            assert leak not in text, text
    assert envelope == ENVELOPE  # nothing was modified


def test_an_unsafe_attribute_says_so() -> None:
    with pytest.raises(
        TransformError, match=r"^x: line 1: access to attribute '__class__'.*unsafe"
    ):
        render({"x": "{{ ''.__class__.__mro__ }}"}, ENVELOPE)


# --------------------------------------------------------------------------- bounds


def test_a_huge_range_is_refused_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(TransformError, match=r"range\(\) is limited to 10000 items"):
        render({"x": "{% for i in range(10**9) %}{% endfor %}"}, ENVELOPE)
    assert time.monotonic() - started < 0.5


def test_a_range_within_the_limit_works() -> None:
    assert render_one("{{ range(10000)|length }}") == 10000


def test_nested_loops_stop_at_the_deadline() -> None:
    source = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(TransformError, match="rendering took longer than 1 s"):
        render({"x": source}, ENVELOPE)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    "source",
    [
        "{% for x in 'x' * 200000 %}{% for y in 'x' * 200000 %}{% endfor %}{% endfor %}",
        "{% filter upper %}{% for i in range(10000) %}{% for j in range(10000) %}x"
        "{% endfor %}{% endfor %}{% endfilter %}",
        "{% set ns = namespace(n=0) %}{% for i in range(10000) %}{% for j in range(10000) %}"
        "{% set ns.n = ns.n + 1 %}{% endfor %}{% endfor %}{{ ns.n }}",
        "{% macro f(n) %}{% for i in range(10000) %}{{ f(n) if n else '' }}{% endfor %}"
        "{% endmacro %}{{ f(1) }}",
    ],
)
def test_other_long_renders_stop_at_the_deadline(source: str) -> None:
    started = time.monotonic()
    # (a `{% filter %}` body that keeps growing meets the size bound first)
    with pytest.raises(TransformError, match="longer than 0.2 s|recursion|over 256 KiB"):
        render({"x": source}, ENVELOPE, timeout=0.2)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 10**9 }}",
        "{{ ['x'] * 10**9 }}",
        "{{ 2 ** 10000000 }}",
        "{{ 'x'|center(10**9) }}",
        "{{ 'x'.center(10**9) }}",
        "{{ 'x'.ljust(10**9) }}",
        "{{ ('\t' * 1000).expandtabs(10**6) }}",
        "{{ ('x\n' * 100000)|indent(1000) }}",
        "{{ ('a' * 1000)|replace('a', 'b' * 1000) }}",
        "{{ ('a' * 1000).replace('a', 'b' * 1000) }}",
        "{{ range(10000)|join('x' * 100000) }}",
        "{{ ('x' * 100000).join(range(10000)|map('string')) }}",
        "{{ '%999999999s'|format('x') }}",
        "{{ '%999999999s' % 'x' }}",
        "{{ '%*s' % (10**9, 'x') }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ '{:>{w}}'.format(1, w=10**9) }}",
        "{{ [1, 2]|batch(10**9, 'x')|list }}",
        "{{ [1, 2]|slice(10**9)|list }}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s|length }}",
        "{% macro f(s, n) %}{{ f(s ~ s, n - 1) if n else s|length }}{% endmacro %}{{ f('x', 64) }}",
        "{{ ('x' * 200000)|list|map('center', 100000)|join }}",
    ],
)
def test_values_that_would_explode_memory_are_refused(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(TransformError):
        render({"x": source}, ENVELOPE)
    assert time.monotonic() - started < 1.0


def test_the_rendered_body_is_at_most_256_kib() -> None:
    assert len(render_one("{{ 'x' * 200000 }}")) == 200000
    with pytest.raises(TransformError, match="^rendered body is over 256 KiB$"):
        render({"a": "{{ 'x' * 200000 }}", "b": "{{ 'y' * 200000 }}"}, ENVELOPE)
    with pytest.raises(TransformError, match="^rendered body is over 256 KiB$"):
        render({"a": "{% for i in range(10000) %}{{ 'x' * 100 }}{% endfor %}"}, ENVELOPE)
    big = {f"k{i}": "{{ data }}" for i in range(2000)}
    with pytest.raises(TransformError, match="^rendered body is over 256 KiB$"):
        render(big, ENVELOPE)


def test_compiled_templates_are_cached() -> None:
    transform = {"text": "cache check {{ data.title }} {{ id }}", "v": "{{ data.count }}"}
    render(transform, ENVELOPE)
    hits = transforms._compile.cache_info().hits
    render(transform, ENVELOPE)
    assert transforms._compile.cache_info().hits == hits + 2


# --------------------------------------------------------------------------- the templates


def params_for(name: str) -> dict[str, str]:
    return {
        "slack": {},
        "jira": {"project_key": "OPS", "email": "maya.chen@example.com", "api_token": "s3cr3t"},
        "pagerduty": {"routing_key": ROUTING_KEY},
        "github": {"token": "ghp_exampletoken"},
        "generic": {},
    }[name]


def render_template(name: str, envelope: dict[str, Any], **params: str) -> Any:
    applied = templates.apply(name, {**params_for(name), **params})
    return render(applied["transform"], envelope)


def valid_output(name: str, event_type: str) -> tuple[dict[str, Any], Any]:
    """The envelope of an example event of this type, and what the template makes of it,
    checked against the receiving service's schema."""
    envelope = envelope_for(event_type)
    body = render_template(name, envelope)
    assert_valid(name, body)
    return envelope, body


def test_the_templates_as_data() -> None:
    assert list(templates.TEMPLATES) == ["slack", "jira", "pagerduty", "github", "generic"]
    labels = {name: t.label for name, t in templates.TEMPLATES.items()}
    assert labels == {
        "slack": "Slack",
        "jira": "Jira",
        "pagerduty": "PagerDuty",
        "github": "GitHub Actions",
        "generic": "Generic",
    }
    assert templates.TEMPLATES["jira"].url_hint == "https://<site>/rest/api/2/issue"
    assert templates.TEMPLATES["pagerduty"].url_hint == "https://events.pagerduty.com/v2/enqueue"
    assert (
        templates.TEMPLATES["github"].url_hint
        == "https://api.github.com/repos/<owner>/<repo>/dispatches"
    )
    for template in templates.TEMPLATES.values():
        assert template.description
        for pattern in template.default_events:
            assert catalog.is_valid_pattern(pattern), pattern
        for name, label, required, default in template.params:
            assert name and label and isinstance(required, bool)
            assert default is None or isinstance(default, str)
        assert json.dumps(template.as_dict())
    jira_params = {p.name: p for p in templates.TEMPLATES["jira"].params}
    assert jira_params["issue_type"].default == "Task"
    assert [p.name for p in jira_params.values() if p.required] == [
        "project_key",
        "email",
        "api_token",
    ]


@pytest.mark.parametrize("name", ["slack", "jira", "pagerduty", "github"])
def test_every_template_transform_compiles(name: str) -> None:
    applied = templates.apply(name, params_for(name))
    compile_transform(applied["transform"])
    assert applied["events"] == list(templates.TEMPLATES[name].default_events)


def test_apply_returns_fresh_objects() -> None:
    first = templates.apply("slack")
    first["transform"]["blocks"].clear()
    first["events"].clear()
    assert templates.apply("slack")["transform"]["blocks"]
    assert templates.apply("slack")["events"]


def test_generic() -> None:
    assert templates.apply("generic", {}) == {"events": ["*"], "transform": None, "headers": {}}
    assert templates.apply("generic") == {"events": ["*"], "transform": None, "headers": {}}


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nope", {}, "unknown template 'nope'"),
        ("jira", {"email": "a@b.c", "api_token": "t"}, "template_params.project_key"),
        ("jira", {"project_key": "OPS", "api_token": "t"}, "template_params.email"),
        ("jira", {"project_key": "OPS", "email": "a@b.c", "api_token": "  "}, "api_token"),
        ("pagerduty", {}, "template_params.routing_key"),
        ("pagerduty", {"routing_key": None}, "template_params.routing_key"),
        ("github", {}, "template_params.token"),
        ("github", {"token": "t", "repo": "x"}, "no parameter repo"),
        ("slack", {"channel": "#ops"}, "takes no parameters"),
        ("github", {"token": 123}, "must be a string"),
        ("github", {"token": "t\r\nX-Evil: 1"}, "line breaks"),
        ("jira", {"project_key": "{{ data }}", "email": "a", "api_token": "t"}, "must not"),
        ("slack", ["not", "an", "object"], "must be an object"),
    ],
)
def test_apply_refuses_bad_params(name: str, params: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        templates.apply(name, params)


# slack


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_slack_output_is_a_valid_message_for_every_type(event_type: str) -> None:
    envelope, body = valid_output("slack", event_type)
    data = envelope["data"]
    assert body["text"].strip()
    assert data["title"] in body["text"]
    header, section, context = body["blocks"]
    assert header["text"]["text"] == data["title"]
    details = section["text"]["text"]
    assert f"`{event_type}`" in details
    assert ("*Severity:*" in details) == ("severity" in data)
    assert ("*Potential savings:*" in details) == ("potential_savings" in data)
    assert ("*Resource:*" in details) == ("resource" in data)
    assert ("*Status:*" in details) == ("status" in data)
    link = context["elements"][0]["text"]
    assert (f"<{data['url']}|View in CloudThinker>" in link) == ("url" in data)


def test_slack_shows_the_key_values() -> None:
    rec = render_template("slack", envelope_for("recommendation.created"))
    details = rec["blocks"][1]["text"]["text"]
    assert "*Potential savings:* 150.00 USD (monthly)" in details
    assert "*Resource:* `arn:aws:ec2:us-east-1:123456789012:instance/i-0abc123`" in details
    assert "*Status:* pending" in details
    incident = render_template("slack", envelope_for("incident.updated"))
    details = incident["blocks"][1]["text"]["text"]
    assert "*Severity:* critical" in details
    assert "*Status:* investigating" in details


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"title": "x" * 5000, "summary": "y" * 10000, "resource": "r" * 4000},
        {"title": "<script> & <b>", "severity": ["high"], "potential_savings": "lots"},
        {"title": 12345, "status": {"nested": True}, "url": "https://example.com/a?b=1&c=<2>"},
        {"title": "   ", "potential_savings": 1234567.891, "currency": "EUR"},
    ],
)
def test_slack_output_stays_valid_for_odd_data(data: dict[str, Any]) -> None:
    body = render_template("slack", envelope_for("future.event", data))
    assert_valid("slack", body)
    mrkdwn = [body["text"], body["blocks"][1]["text"]["text"]]
    assert not any("<script>" in text or "['" in text for text in mrkdwn)


def test_slack_without_a_link() -> None:
    data = {k: v for k, v in catalog.BY_TYPE["incident.created"].example.items() if k != "url"}
    body = render_template("slack", envelope_for("incident.created", data))
    assert_valid("slack", body)
    assert "View in CloudThinker" not in json.dumps(body)


# jira


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_jira_output_is_a_valid_create_issue_request(event_type: str) -> None:
    envelope, body = valid_output("jira", event_type)
    fields = body["fields"]
    assert fields["project"] == {"key": "OPS"}
    assert fields["issuetype"] == {"name": "Task"}
    assert fields["labels"] == ["cloudthinker", catalog.category_of(event_type)]
    assert envelope["data"]["title"] in fields["summary"]
    assert envelope["data"]["id"] in fields["description"]


def test_jira_headers_and_params() -> None:
    applied = templates.apply(
        "jira",
        {"project_key": "SEC", "issue_type": "Bug", "email": "a@b.c", "api_token": "tok:en"},
    )
    assert applied["events"] == ["recommendation.created"]
    assert applied["headers"] == {
        "Authorization": "Basic " + base64.b64encode(b"a@b.c:tok:en").decode()
    }
    body = render(applied["transform"], envelope_for("finding.created"))
    assert body["fields"]["project"] == {"key": "SEC"}
    assert body["fields"]["issuetype"] == {"name": "Bug"}
    assert body["fields"]["labels"] == ["cloudthinker", "security"]


def test_jira_summary_is_one_line_of_at_most_255_characters() -> None:
    data = {"id": "rec_1", "title": "line one\nline two\r\n" + "z" * 400}
    body = render_template("jira", envelope_for("recommendation.created", data))
    assert_valid("jira", body)
    summary = body["fields"]["summary"]
    assert len(summary) <= 255 and "\n" not in summary and "\r" not in summary
    assert summary.startswith("[CloudThinker] line one line two")


# pagerduty


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_pagerduty_output_is_a_valid_event(event_type: str) -> None:
    body = render_template("pagerduty", envelope_for(event_type))
    assert_valid("pagerduty", body)
    assert body["routing_key"] == ROUTING_KEY
    expected = "resolve" if event_type in {"incident.resolved", "finding.resolved"} else "trigger"
    assert body["event_action"] == expected
    assert body["payload"]["custom_details"] == catalog.BY_TYPE[event_type].example


@pytest.mark.parametrize("family", ["incident", "finding"])
def test_pagerduty_resolved_resolves_what_created_triggered(family: str) -> None:
    data = copy.deepcopy(catalog.BY_TYPE[f"{family}.created"].example)
    created = render_template("pagerduty", envelope_for(f"{family}.created", data))
    resolved_data = {
        **copy.deepcopy(catalog.BY_TYPE[f"{family}.resolved"].example),
        "id": data["id"],
    }
    resolved = render_template("pagerduty", envelope_for(f"{family}.resolved", resolved_data))
    assert_valid("pagerduty", created)
    assert_valid("pagerduty", resolved)
    assert created["event_action"] == "trigger"
    assert resolved["event_action"] == "resolve"
    assert created["dedup_key"] == resolved["dedup_key"] == f"cloudthinker-{data['id']}"


def test_pagerduty_catalog_incident_shares_its_dedup_key() -> None:
    created = render_template("pagerduty", envelope_for("incident.created"))
    resolved = render_template("pagerduty", envelope_for("incident.resolved"))
    assert created["dedup_key"] == resolved["dedup_key"] == "cloudthinker-inc_4f7a21"


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        ("critical", "critical"),
        ("high", "error"),
        ("HIGH", "error"),
        ("medium", "warning"),
        ("low", "info"),
        ("unknown", "info"),
        (None, "info"),
        (3, "info"),
    ],
)
def test_pagerduty_severity_mapping(severity: Any, expected: str) -> None:
    data = {"id": "inc_1", "title": "t", "severity": severity}
    body = render_template("pagerduty", envelope_for("incident.created", data))
    assert_valid("pagerduty", body)
    assert body["payload"]["severity"] == expected


def test_pagerduty_summary_is_truncated_to_1024() -> None:
    data = {"id": "inc_1", "title": "w " * 2000, "severity": "high"}
    body = render_template("pagerduty", envelope_for("incident.created", data))
    assert_valid("pagerduty", body)
    assert len(body["payload"]["summary"]) <= 1024
    assert body["payload"]["summary"].startswith("[HIGH] w w")


def test_pagerduty_without_data_id_still_has_a_dedup_key() -> None:
    body = render_template("pagerduty", envelope_for("incident.created", {"title": "t"}))
    assert_valid("pagerduty", body)
    assert body["dedup_key"] == "cloudthinker-evt_abc123"


# github


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_github_output_is_a_valid_repository_dispatch(event_type: str) -> None:
    envelope, body = valid_output("github", event_type)
    assert body["event_type"] == event_type.replace(".", "-")
    assert len(json.dumps(body).encode()) < 64 * 1024
    payload = body["client_payload"]
    data = envelope["data"]
    if len(data) <= 10:
        assert payload == data
    else:
        assert len(payload) == 10
        assert list(payload)[:9] == list(data)[:9]
    assert payload["title"] == data["title"]  # ${{ github.event.client_payload.title }}


def test_github_recommendation_created() -> None:
    applied = templates.apply("github", {"token": "ghp_abc"})
    assert applied["events"] == ["recommendation.created"]
    assert applied["headers"]["Authorization"] == "Bearer ghp_abc"
    assert applied["headers"]["Accept"] == "application/vnd.github+json"
    body = render(applied["transform"], envelope_for("recommendation.created"))
    assert body["event_type"] == "recommendation-created"


def test_github_client_payload_has_at_most_10_keys() -> None:
    data = {f"key{i:02d}": i for i in range(15)}
    body = render_template("github", envelope_for("recommendation.created", data))
    assert_valid("github", body)
    payload = body["client_payload"]
    assert len(payload) == 10
    assert list(payload)[:9] == [f"key{i:02d}" for i in range(9)]
    assert payload["more"] == {f"key{i:02d}": i for i in range(9, 15)}
    exactly_ten = {f"key{i:02d}": i for i in range(10)}
    body = render_template("github", envelope_for("recommendation.created", exactly_ten))
    assert body["client_payload"] == exactly_ten


# the schemas themselves catch mistakes


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("slack", {}),
        ("slack", {"text": ""}),
        (
            "slack",
            {"text": "t", "blocks": [{"type": "header", "text": {"type": "mrkdwn", "text": "x"}}]},
        ),
        (
            "slack",
            {
                "text": "t",
                "blocks": [{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}],
            },
        ),
        ("slack", {"text": "t", "blocks": [{"type": "section"}]}),
        (
            "slack",
            {"text": "t", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": ""}}]},
        ),
        ("slack", {"text": "t", "blocks": [{"type": "context", "elements": []}]}),
        ("slack", {"text": "t", "blocks": [{"type": "banner", "text": "x"}]}),
        ("jira", {"fields": {"project": {"key": "OPS"}, "issuetype": {"name": "Task"}}}),
        (
            "jira",
            {
                "fields": {
                    "project": {"key": "OPS"},
                    "summary": "x" * 256,
                    "issuetype": {"name": "Task"},
                }
            },
        ),
        (
            "jira",
            {
                "fields": {
                    "project": {"key": "OPS"},
                    "summary": "a\nb",
                    "issuetype": {"name": "Task"},
                }
            },
        ),
        (
            "jira",
            {
                "fields": {
                    "project": {"key": "OPS"},
                    "summary": "s",
                    "issuetype": {"name": "Task"},
                    "labels": ["has space"],
                }
            },
        ),
        ("pagerduty", {"routing_key": ROUTING_KEY, "event_action": "trigger"}),
        ("pagerduty", {"routing_key": ROUTING_KEY, "event_action": "resolve"}),
        (
            "pagerduty",
            {
                "routing_key": ROUTING_KEY,
                "event_action": "trigger",
                "payload": {"summary": "s", "source": "x", "severity": "high"},
            },
        ),
        (
            "pagerduty",
            {
                "routing_key": ROUTING_KEY,
                "event_action": "trigger",
                "payload": {"summary": "s" * 1025, "source": "x", "severity": "info"},
            },
        ),
        ("github", {"client_payload": {}}),
        ("github", {"event_type": "x" * 101}),
        ("github", {"event_type": "x", "client_payload": {str(i): i for i in range(11)}}),
        ("github", {"event_type": "x", "client_payload": [1]}),
    ],
)
def test_the_schemas_catch_mistakes(name: str, body: Any) -> None:
    assert list(validator(name).iter_errors(body))
