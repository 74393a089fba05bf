"""Bounded transforms: the sandbox's size bound on every value built while rendering (docs/API.md
section 4, "Bounds"). Pure unit tests: no app, Redis or database."""

from __future__ import annotations

import time
from typing import Any

import pytest

from webhooks.transforms import TransformError, render

ENVELOPE: dict[str, Any] = {
    "id": "evt_abc123",
    "type": "incident.created",
    "timestamp": "2024-01-15T10:30:00Z",
    "workspace_id": "ws_xyz789",
    "data": {"title": "Disk full", "tags": ["a", "b"]},
}
BIG = "{% set a = 'x' * 200000 %}"  # a value just under the bound
REFS = BIG + "{% set l = [a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a] %}"
FIELDS = "%s" * 40
ARGS = ", ".join(["a"] * 40)

# Each of these builds (or, before the bound, built) a value far over 256 KiB from a transform
# of a few dozen characters.
PROBES = {
    "the issue's probe: ~ over set values": BIG
    + "{% set b=a~a~a~a~a %}{% set c=b~b~b~b~b %}{% set d=c~c~c~c~c %}{{ d|length }}",
    "set block": BIG + "{% set b %}{% for i in range(100) %}{{ a }}{% endfor %}{% endset %}",
    "macro body": BIG + "{% macro m() %}{% for i in range(100) %}{{ a }}{% endfor %}"
    "{% endmacro %}{{ m()|length }}",
    "call block": BIG + "{% macro m() %}{{ caller()|length }}{% endmacro %}"
    "{% call m() %}{% for i in range(100) %}{{ a }}{% endfor %}{% endcall %}",
    "filter block": BIG + "{% filter length %}{% for i in range(100) %}{{ a }}{% endfor %}"
    "{% endfilter %}",
    "loop building a value": BIG + "{% set ns = namespace(s='') %}"
    "{% for i in range(100) %}{% set ns.s = ns.s ~ a %}{% endfor %}{{ ns.s|length }}",
    "loop building a list": BIG + "{% set ns = namespace(l=[]) %}"
    "{% for i in range(100) %}{% set ns.l = ns.l + [a] %}{% endfor %}{{ ns.l|length }}",
    "urlencode": "{{ ('\u00e9' * 200000)|urlencode|length }}",
    "format filter": BIG + "{{ '" + FIELDS + "'|format(" + ARGS + ")|length }}",
    "str.format": BIG + "{{ ('{0}' * 40).format(a)|length }}",
    "printf %": BIG + "{{ ('" + FIELDS + "' % (" + ARGS + "))|length }}",
    "join": REFS + "{{ l|join|length }}",
    "join with a separator": "{{ range(5000)|join('x' * 1000)|length }}",
    "string of a list": REFS + "{{ l|string|length }}",
    "tojson": REFS + "{{ l|tojson|length }}",
    "tojson indent": "{{ range(10000)|list|tojson(indent=1000)|length }}",
    "a list printed": REFS + "{{ l }}",
    "a list as the body": "{{ [" + ", ".join(["'x' * 200000"] * 20) + "] }}",
    "list repetition": "{{ (['x' * 1000] * 1000)|length }}",
    "string repetition": "{{ ('x' * 1000) * 1000 }}",
    "replace": BIG + "{{ a.replace('x', 'yyyyy')|length }}",
    "replace filter": BIG + "{{ a|replace('x', 'yyyyy')|length }}",
    "center": "{{ 'x'|center(10000000)|length }}",
    "indent": "{{ ('\n' * 100000)|indent(1000)|length }}",
    "wordwrap": "{{ ('x ' * 100000)|wordwrap(1, wrapstring='y' * 1000)|length }}",
    "translate": BIG + "{{ a.translate({120: 'yyyyyyyy'})|length }}",
    "urlize": "{{ ('a.co ' * 50000)|urlize(target='t' * 10000)|length }}",
}


@pytest.mark.parametrize("source", PROBES.values(), ids=PROBES.keys())
def test_values_built_along_the_way_stop_at_the_bound(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(TransformError, match=r"over 256 KiB"):
        render({"text": source}, ENVELOPE)
    assert time.monotonic() - started < 0.5


def test_the_same_constructs_within_the_bound_render() -> None:
    source = (
        "{% set a = 'x' * 1000 %}{% set b %}{{ a }}{{ a }}{% endset %}"
        "{% macro m(x) %}[{{ x }}]{% endmacro %}"
        "{% set ns = namespace(s='') %}"
        "{% for t in data.tags %}{% set ns.s = ns.s ~ t %}{% endfor %}"
        "{{ (a ~ b)|length }} {{ m(data.title) }} {{ ns.s }} {{ '%s-%s'|format(type, id) }} "
        "{{ '{0}/{1}'.format(type, id) }} {{ data.tags|join(', ') }} "
        "{{ data|tojson(indent=2)|length }}"
    )
    assert render({"text": source}, ENVELOPE) == {
        "text": "3000 [Disk full] ab incident.created-evt_abc123 incident.created/evt_abc123 "
        "a, b 60"
    }
