"""The outer bound of transforms: render processes under RLIMIT_AS and a CPU bound, replaced when
they overrun, and renders that never hold the claim's transaction (docs/API.md section 4,
"Bounds"; DESIGN.md invariant 7)."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import wait_until
from tests.processes import Processes
from tests.render_hooks import hog_memory, spin_in_c, spin_in_python
from tests.test_render_bounds import ENVELOPE
from webhooks import renderpool, transforms
from webhooks.renderpool import Limits, RenderPool
from webhooks.transforms import TransformError

SIMPLE = {"text": "{{ type }}: {{ data.title }}"}
ISSUE_PROBE = (
    "{% set a='x'*200000 %}{% set b=a~a~a~a~a %}{% set c=b~b~b~b~b %}{% set d=c~c~c~c~c %}"
    "{{ d|length }}"
)
# The errors a render may end with when it hits a bound.
BOUND = re.compile(
    r"over 256 KiB|longer than 1 s|s of CPU|MiB of memory|limited to|over \d+ bits"
    r"|format width|nested deeper|recursion"
)


@pytest.fixture
def pool():  # type: ignore[no-untyped-def]
    render_pool = RenderPool(Limits(processes=1))
    yield render_pool
    render_pool.close()


def test_the_issues_probe_fails_with_the_bound_in_a_render_process() -> None:
    started = time.monotonic()
    with pytest.raises(TransformError, match="a value is over 256 KiB"):
        renderpool.render({"text": ISSUE_PROBE}, ENVELOPE)
    with pytest.raises(TransformError, match="a value is over 256 KiB"):
        renderpool.render({"text": "{{ ('\u00e9' * 200000)|urlencode }}"}, ENVELOPE)
    assert time.monotonic() - started < 1.0
    assert renderpool.render(SIMPLE, ENVELOPE) == {"text": "incident.created: Disk full"}


def test_a_render_that_exhausts_memory_is_stopped_and_the_next_render_works(pool) -> None:
    first, second = pool.call([(hog_memory, ()), (transforms.render, (SIMPLE, ENVELOPE))])
    assert isinstance(first, TransformError)
    assert str(first) == "rendering needed more than 64 MiB of memory"
    assert second == {"text": "incident.created: Disk full"}
    assert pool.replaced == 1  # the child that ran out was not used again


def test_a_render_that_burns_cpu_is_stopped_after_a_second(pool) -> None:
    started = time.monotonic()
    first, second = pool.call([(spin_in_python, ()), (transforms.render, (SIMPLE, ENVELOPE))])
    assert str(first) == "rendering used more than 1 s of CPU"
    assert second == {"text": "incident.created: Disk full"}
    assert time.monotonic() - started < 5.0


def test_a_render_stuck_in_c_code_is_killed_by_the_kernel_and_replaced() -> None:
    # The parent would wait 120 s: what stops the child is RLIMIT_CPU (2 s of CPU, which on a
    # loaded machine may take several times as long on the clock).
    pool = RenderPool(Limits(processes=1, wall=120))
    try:
        started = time.monotonic()
        first, second = pool.call([(spin_in_c, ()), (transforms.render, (SIMPLE, ENVELOPE))])
        assert str(first) == "rendering used more than 1 s of CPU"
        assert second == {"text": "incident.created: Disk full"}
        assert pool.replaced == 1
        assert time.monotonic() - started < 60
    finally:
        pool.close()


# --------------------------------------------------------------------------- random transforms

NUMBERS = st.sampled_from([0, 1, 2, 5, 1000, 100000, 10**7])
LEAVES = st.sampled_from(["'x'", "'ab'", "data.title", "type", "v"])


def _strings(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Expressions of string type built from `children` by what the sandbox allows."""
    two = st.tuples(children, children)
    return st.one_of(
        two.map(lambda p: f"({p[0]} ~ {p[1]})"),
        two.map(lambda p: f"({p[0]} + {p[1]})"),
        st.tuples(children, NUMBERS).map(lambda p: f"({p[0]} * {p[1]})"),
        children.map(lambda s: f"({s}|upper)"),
        children.map(lambda s: f"({s}|urlencode)"),
        children.map(lambda s: f"({s}|tojson)"),
        st.tuples(children, NUMBERS).map(lambda p: f"({p[0]}|center({p[1]}))"),
        st.tuples(children, NUMBERS).map(lambda p: f"({p[0]}|indent({p[1]}))"),
        two.map(lambda p: f"({p[0]}|replace('x', {p[1]}))"),
        two.map(lambda p: f"({p[0]}|wordwrap(2, wrapstring={p[1]}))"),
        two.map(lambda p: f"('%s%s'|format({p[0]}, {p[1]}))"),
        st.tuples(children, children, NUMBERS).map(lambda p: f"(([{p[0]}] * {p[2]})|join({p[1]}))"),
        st.tuples(children, NUMBERS).map(lambda p: f"('{{0}}{{0}}'.format({p[0]}) * {p[1]})"),
    )


EXPRESSIONS = st.recursive(LEAVES, _strings, max_leaves=8)


def _statement(expr: str, kind: int, count: int) -> str:
    return [
        f"{{% set v = {expr} %}}",
        f"{{% set v %}}{{% for i in range({count}) %}}{{{{ {expr} }}}}{{% endfor %}}{{% endset %}}",
        f"{{% set ns = namespace(s='') %}}{{% for i in range({count}) %}}"
        f"{{% set ns.s = ns.s ~ {expr} %}}{{% endfor %}}{{% set v = ns.s %}}",
        f"{{% macro m(x) %}}{{{{ x }}}}{{{{ {expr} }}}}{{% endmacro %}}{{% set v = m(v) ~ v %}}",
        f"{{{{ {expr} }}}}",
    ][kind]


TRANSFORMS = st.lists(
    st.tuples(EXPRESSIONS, st.integers(0, 4), st.sampled_from([1, 3, 100, 10000])),
    min_size=1,
    max_size=4,
).map(lambda parts: "{% set v = 'v' %}" + "".join(_statement(*p) for p in parts) + "{{ v }}")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(source=TRANSFORMS)
def test_random_transforms_end_within_the_bounds_or_fail_with_a_bound(source: str) -> None:
    started = time.monotonic()
    try:
        body = renderpool.render({"text": source, "n": "{{ v|length }}"}, ENVELOPE)
    except TransformError as exc:
        assert BOUND.search(str(exc)), f"{source!r} failed with {exc}"
    else:
        assert len(body["text"].encode()) <= 256 * 1024
    assert time.monotonic() - started < 4.0, source
    # The render processes survive whatever the transform did.
    assert renderpool.render(SIMPLE, ENVELOPE) == {"text": "incident.created: Disk full"}


# --------------------------------------------------------------------------- in a real worker

SLOW = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}done"


def test_a_slow_transform_renders_while_another_connection_takes_the_write_lock(
    app, config, api, receiver, tmp_path, postgres_url
):
    if postgres_url:
        pytest.skip("SQLite's one write lock")
    for n in range(2):
        api.create_webhook(
            receiver.url(f"/slow{n}"), name=f"Slow {n}", events=["task.*"], transform={"text": SLOW}
        )
    path = config["DATABASE_URL"].removeprefix("sqlite:///")
    waits: list[float] = []
    stop = threading.Event()

    def take_the_write_lock() -> None:
        connection = sqlite3.connect(path, timeout=30, isolation_level=None)
        while not stop.is_set():
            started = time.monotonic()
            connection.execute("BEGIN IMMEDIATE")
            waits.append(time.monotonic() - started)
            connection.execute("COMMIT")
            time.sleep(0.02)
        connection.close()

    processes = Processes(config, tmp_path / "instance")
    writer = threading.Thread(target=take_the_write_lock)
    try:
        processes.start("worker")
        api.publish("task.failed", {"n": 1})
        writer.start()
        try:
            wait_until(lambda: _errors(api) == 2, 60)
        except AssertionError:
            states = [(d["status"], d["attempt_count"], d["last_error"]) for d in _rows(api)]
            raise AssertionError(f"both renders did not stop at a bound: {states}") from None
    finally:
        stop.set()
        if writer.is_alive():
            writer.join()
        processes.stop_all()

    assert waits and max(waits) < 0.5, f"the write lock waited {max(waits):.2f} s for a render"


def _rows(api) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return api.get("/deliveries").json["data"]  # type: ignore[no-any-return]


def _errors(api) -> int:  # type: ignore[no-untyped-def]
    """Deliveries whose render stopped at its 1 s bound: the sandbox's clock or, on a loaded
    machine where the render gets less than its share of a core, the process's CPU bound."""
    bounds = ("rendering took longer than 1 s", "rendering used more than 1 s of CPU")
    return sum(1 for d in _rows(api) if any(b in (d["last_error"] or "") for b in bounds))


def test_other_webhooks_arrive_on_time_while_a_transform_hits_its_bounds_every_time(
    app, config, api, receiver, tmp_path
):
    api.create_webhook(receiver.url("/fine"), name="Fine", events=["task.*"])
    processes = Processes(config, tmp_path / "instance")
    try:
        processes.start("worker", "--lane", "normal")
        processes.start("worker:slow", "--lane", "slow")
        processes.start("scheduler")
        api.publish("task.started", {})
        receiver.wait_for(1, timeout=30)  # the workers are up
        bad = {"text": SLOW}  # 1 s of rendering, every time
        api.create_webhook(receiver.url("/bad"), name="Bad", events=["task.*"], transform=bad)
        for n in range(8):
            published = time.monotonic()
            api.publish("task.failed", {"n": n})
            receiver.wait_for(n + 2, timeout=10)
            assert time.monotonic() - published < 2.0, f"delivery {n} to Fine waited"
        wait_until(lambda: len(_bad_failures(api)) == 8, 60)
    finally:
        processes.stop_all()

    assert all(r.path == "/fine" for r in receiver.requests)
    errors = _bad_failures(api)
    assert all(BOUND.search(e) and e.startswith("transform failed: text: ") for e in errors), errors


def _bad_failures(api) -> list[str]:  # type: ignore[no-untyped-def]
    bad = next(w["id"] for w in api.get("/webhooks").json["data"] if w["name"] == "Bad")
    rows = api.get(f"/deliveries?webhook_id={bad}&status=failed").json["data"]
    return [d["last_error"] for d in rows]
