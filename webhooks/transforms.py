"""Transforms: JSON objects whose string values are Jinja templates over the event envelope.

A transform is rendered against the envelope's keys (`type`, `id`, `timestamp`, `workspace_id`,
`data`) as template variables, in an immutable Jinja sandbox (docs/API.md section 4):

* a string that is exactly one `{{ expression }}` (whitespace around it allowed) keeps the
  expression's JSON type: object, list, number, bool, or null (an undefined value is null);
* any other string is interpolated: objects and lists appear as compact JSON text, `None` and
  undefined values as nothing, booleans as `true` / `false`;
* dict keys, numbers, booleans and nulls are copied as they are.

Undefined names are lenient: `{{ data.missing.deeper }}` renders empty (and is falsy), never an
error. The work is bounded: `range()` is capped, loops, calls and filters check a deadline,
repetition, padding and formatting that would build oversized values are refused, and the
rendered body may not exceed `MAX_RENDERED_BYTES`. Every failure is a `TransformError` whose
message starts with the JSON path of the string that failed (`blocks[0].text.text: ...`).

This module is pure domain code: no Flask, no I/O.
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
import string
import time
from collections.abc import Callable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Template, TemplateExpression
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.runtime import ChainableUndefined, Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

__all__ = [
    "MAX_RANGE",
    "MAX_RENDERED_BYTES",
    "MAX_TRANSFORM_BYTES",
    "RENDER_TIMEOUT",
    "TransformError",
    "compile_transform",
    "render",
    "render_noting_undefined",
]

MAX_TRANSFORM_BYTES = 64 * 1024  # the transform itself, as compact UTF-8 JSON
MAX_RENDERED_BYTES = 256 * 1024  # the rendered body, as compact UTF-8 JSON
RENDER_TIMEOUT = 1.0  # seconds for one render
MAX_RANGE = 10_000  # items that one range() may produce
MAX_VALUE = MAX_RENDERED_BYTES  # rough size of any one value built while rendering
MAX_WIDTH = 100_000  # widths / precisions in format strings
MAX_INT_BITS = 65_536  # integers built by * and **
MAX_DEPTH = 64  # nesting of the transform and of rendered values
CACHE_SIZE = 1024  # compiled template strings kept

_SIZE_MESSAGE = f"rendered body is over {MAX_RENDERED_BYTES // 1024} KiB"
_VALUE_MESSAGE = f"a value is over {MAX_VALUE // 1024} KiB"


class TransformError(Exception):
    """A transform that does not compile, is too large, or fails to render.

    `str(error)` is a readable message prefixed with the JSON path of the failing string, e.g.
    ``data.title: line 1: unexpected '}'``; `path` holds that path alone ("" when the error is
    about the whole transform or body).
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


# --------------------------------------------------------------------------- limits


class _LimitExceeded(Exception):
    """A render bound was hit (time, size or count). Not a subclass of anything Jinja catches."""


class _BodyTooLarge(_LimitExceeded):
    pass


@dataclass
class _Limits:
    deadline: float
    timeout: float
    budget: int  # characters the body may still take (a lower bound of its JSON bytes)


_LIMITS: contextvars.ContextVar[_Limits | None] = contextvars.ContextVar(
    "webhooks_transform_limits", default=None
)


@dataclass
class _Undefined:
    """While a preview asks: the names of undefined values printed, and a note per string."""

    names: list[str]
    notes: list[str]


_UNDEFINED: contextvars.ContextVar[_Undefined | None] = contextvars.ContextVar(
    "webhooks_transform_undefined", default=None
)


def _note_undefined(value: Undefined) -> None:
    """Remember that an undefined value was printed (a preview says so; sending does not)."""
    seen = _UNDEFINED.get()
    if seen is not None:
        name = getattr(value, "_undefined_name", None)
        seen.names.append(name if isinstance(name, str) else "a value")


def _tick() -> None:
    """Raise once the current render is past its deadline."""
    limits = _LIMITS.get()
    if limits is not None and time.monotonic() > limits.deadline:
        raise _LimitExceeded(f"rendering took longer than {limits.timeout:g} s")


def _charge(size: int) -> None:
    """Count `size` characters of output against the body bound."""
    limits = _LIMITS.get()
    if limits is not None:
        limits.budget -= size
        if limits.budget < 0:
            raise _BodyTooLarge(_SIZE_MESSAGE)


def _approx_size(value: Any, limit: int = MAX_VALUE, depth: int = 0) -> int:
    """A cheap estimate of a value's size in characters; stops counting once over `limit`."""
    if isinstance(value, str | bytes):
        return len(value)
    if value is None or isinstance(value, bool | float):
        return 5
    if isinstance(value, int):
        return value.bit_length() // 3 + 1
    if depth > MAX_DEPTH:
        return 8
    if isinstance(value, range):
        return len(value) * 2
    if isinstance(value, Mapping):
        total = 2
        for key, item in value.items():
            total += _approx_size(key, limit, depth + 1) + _approx_size(item, limit, depth + 1) + 2
            if total > limit:
                break
        return total
    if isinstance(value, list | tuple | set | frozenset):
        total = 2
        for item in value:
            total += _approx_size(item, limit, depth + 1) + 1
            if total > limit:
                break
        return total
    return 8


def _check_value(value: Any) -> None:
    """Refuse a value built while rendering that is too large to be worth keeping."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > MAX_INT_BITS:
            raise _LimitExceeded(f"an integer is over {MAX_INT_BITS} bits")
    elif isinstance(value, str | bytes | list | tuple | Mapping | set | frozenset):
        if _approx_size(value) > MAX_VALUE:
            raise _LimitExceeded(_VALUE_MESSAGE)


def _check_values(values: Any) -> None:
    for value in values:
        _check_value(value)


def _check_estimate(size: int) -> None:
    if size > MAX_VALUE:
        raise _LimitExceeded(f"a value would be over {MAX_VALUE // 1024} KiB")


def _materialize(iterable: Any) -> list[Any]:
    """A one-shot iterator as a list, checking the deadline and the size as it goes."""
    items: list[Any] = []
    total = 0
    for item in iterable:
        _tick()
        total += _approx_size(item) + 1
        if total > MAX_VALUE:
            raise _LimitExceeded(f"a sequence is over {MAX_VALUE // 1024} KiB")
        items.append(item)
    return items


def _is_iterator(value: Any) -> bool:
    return isinstance(value, Iterator) and not isinstance(value, str | bytes)


# printf-style conversions: %[(key)][flags][width][.precision]type
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _largest(values: Any) -> int:
    """The approximate size of the largest of `values` (a mapping's values, or a sequence)."""
    if isinstance(values, Mapping):
        values = values.values()
    elif not isinstance(values, tuple | list):
        values = (values,)
    return max((_approx_size(value) for value in values), default=0)


def _check_printf(fmt: str, args: Any) -> None:
    """Refuse `fmt % args` when a width, a precision or the number of conversions would build
    a huge string."""
    conversions = sum(1 for match in _PRINTF.finditer(fmt) if not match.group().endswith("%"))
    _check_estimate(len(fmt) + conversions * _largest(args))
    star = False
    for match in _PRINTF.finditer(fmt):
        for part in match.groups():
            if part == "*":
                star = True
            elif part is not None and int(part) > MAX_WIDTH:
                raise _LimitExceeded(f"a format width is over {MAX_WIDTH}")
    if star:
        values = args if isinstance(args, tuple) else (args,)
        if any(_is_big_int(value) for value in values):
            raise _LimitExceeded(f"a format width is over {MAX_WIDTH}")


def _is_big_int(value: Any) -> bool:
    return isinstance(value, int) and abs(value) > MAX_WIDTH


def _check_format_string(fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse `fmt.format(...)` when a width or precision would build a huge string."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format will report the malformed string itself
    # Each replacement field may repeat any argument ("{0}{0}{0}…").
    replaced = sum(1 for _literal, field, _spec, _conversion in fields if field is not None)
    _check_estimate(len(fmt) + replaced * max(_largest(args), _largest(kwargs)))
    for _literal, _field, spec, _conversion in fields:
        if not spec:
            continue
        if any(int(digits) > MAX_WIDTH for digits in re.findall(r"\d+", spec)):
            raise _LimitExceeded(f"a format width is over {MAX_WIDTH}")
        if "{" in spec and any(_is_big_int(v) for v in (*args, *kwargs.values())):
            raise _LimitExceeded(f"a format width is over {MAX_WIDTH}")


def _replace_estimate(text: str | bytes, old: Any, new: Any, count: Any) -> int:
    kind = bytes if isinstance(text, bytes) else str
    if not isinstance(old, kind) or not isinstance(new, kind):
        return len(text)
    hits = text.count(old) if old else len(text) + 1  # type: ignore[arg-type]  # old is text's kind
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * len(new)


def _join_estimate(separator: Any, items: Any) -> int:
    if not isinstance(items, Sized) or _is_iterator(items):
        return 0
    sep = len(separator) if isinstance(separator, str) else 0
    return _approx_size(items) + sep * len(items)


def _check_str_method(owner: str | bytes, name: str, args: tuple[Any, ...], kwargs: dict) -> None:
    """Size checks for the str methods that can build a much larger string than their input."""
    first = args[0] if args else None
    if name == "translate" and isinstance(first, Mapping):
        _check_estimate(len(owner) * max(_largest(first), 1))
    elif name in {"center", "ljust", "rjust", "zfill"} and isinstance(first, int):
        _check_estimate(max(len(owner), first))
    elif name == "expandtabs":
        tabsize = first if isinstance(first, int) else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            _check_estimate(len(owner) * max(tabsize, 1))
    elif name == "replace" and len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        _check_estimate(_replace_estimate(owner, args[0], args[1], count))
    elif name == "join":
        _check_estimate(_join_estimate(owner, first))


# --------------------------------------------------------------------------- sandbox


class _LenientUndefined(ChainableUndefined):
    """Undefined that renders as "", is falsy, and whose attributes and items are undefined too.

    An undefined standing for an attribute that the sandbox refused (`__class__`, ...) is not
    lenient: any use of it raises the SecurityError.
    """

    __slots__ = ()

    def _refuse_if_unsafe(self) -> None:
        exc = self._undefined_exception
        if isinstance(exc, type) and issubclass(exc, SecurityError):
            self._fail_with_undefined_error()

    def __str__(self) -> str:
        self._refuse_if_unsafe()
        _note_undefined(self)
        return ""

    def __bool__(self) -> bool:
        self._refuse_if_unsafe()
        return False

    def __len__(self) -> int:
        self._refuse_if_unsafe()
        return 0

    def __iter__(self) -> Iterator[Any]:
        self._refuse_if_unsafe()
        yield from ()

    def __html__(self) -> str:
        return str(self)

    def __getattr__(self, name: str) -> Any:
        if name[:2] == "__":
            raise AttributeError(name)
        self._refuse_if_unsafe()
        return self

    def __getitem__(self, key: Any) -> Any:
        self._refuse_if_unsafe()
        return self


def _to_json(value: Any, depth: int = 0) -> Any:
    """A template value as plain JSON data (dict / list / str / int / float / bool / None)."""
    if depth > MAX_DEPTH:
        raise _LimitExceeded(f"a value is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Undefined):
        str(value)  # raises for an attribute the sandbox refused
        return None
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return str(value)  # Markup and other subclasses become plain str
    _tick()
    if isinstance(value, Mapping):
        return {_json_key(key): _to_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset | range):
        return [_to_json(item, depth + 1) for item in value]
    if _is_iterator(value):
        return [_to_json(item, depth + 1) for item in _materialize(value)]
    return str(value)


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return str(key)
    if isinstance(key, Undefined):
        return str(key)
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)
    return str(key)


def _dumps(value: Any, indent: Any = None) -> str:
    """Compact JSON text of a template value (for interpolation and `tojson`)."""
    separators = (",", ":") if indent is None else (",", ": ")
    _check_value(value)
    if indent:
        _check_estimate(_indented_size(value, len(indent) if isinstance(indent, str) else indent))
    return json.dumps(_to_json(value), ensure_ascii=False, separators=separators, indent=indent)


def _indented_size(value: Any, indent: int, depth: int = 1) -> int:
    """About how long JSON text indented by `indent` is; stops counting once over MAX_VALUE."""
    if isinstance(value, Mapping):
        children: Any = value.values()
    elif isinstance(value, list | tuple):
        children = value
    else:
        return _approx_size(value)
    total = 2
    if depth > MAX_DEPTH:
        return total
    for child in children:
        total += 2 + max(indent, 0) * depth + _indented_size(child, indent, depth + 1)
        if total > MAX_VALUE:
            break
    return total


def _finalize(value: Any) -> Any:
    """How `{{ value }}` prints inside a longer string."""
    if isinstance(value, Undefined):
        return str(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list | tuple):
        return _dumps(value)
    return value


def _tojson(value: Any, indent: Any = None) -> str:
    """`tojson`: plain JSON text (no HTML escaping, key order kept, undefined as null)."""
    return _dumps(value, indent)


def _safe_range(*args: int) -> range:
    """`range()` limited to MAX_RANGE items."""
    _tick()
    rng = range(*args)
    try:
        size = len(rng)
    except OverflowError:
        size = MAX_RANGE + 1
    if size > MAX_RANGE:
        raise _LimitExceeded(f"range() is limited to {MAX_RANGE} items")
    return rng


def _bounded_iter(value: Any) -> Iterator[Any]:
    """Wrapped around every `{% for %}` iterable so that loops check the deadline."""
    _tick()
    for item in value:
        _tick()
        yield item


class _BoundedNamespace(Namespace):
    """`namespace()` whose attributes cannot be set to oversized values."""

    def __setitem__(self, name: str, value: Any) -> None:
        _tick()
        _check_value(value)
        super().__setitem__(name, value)


def _filter_estimate(name: str, value: Any, args: tuple[Any, ...], kwargs: dict) -> None:
    """Size checks for the filters that can build a much larger value than their input."""

    def arg(index: int, key: str, default: Any) -> Any:
        return args[index] if len(args) > index else kwargs.get(key, default)

    text = value if isinstance(value, str) else None
    if name == "center" and text is not None:
        width = arg(0, "width", 80)
        if isinstance(width, int):
            _check_estimate(max(len(text), width))
    elif name == "indent" and text is not None:
        width = arg(0, "width", 4)
        pad = width if isinstance(width, int) else len(str(width))
        _check_estimate(len(text) + (text.count("\n") + 1) * max(pad, 0))
    elif name == "wordwrap" and text is not None:
        wrapstring = arg(2, "wrapstring", None)
        extra = len(wrapstring) if isinstance(wrapstring, str) else 1
        _check_estimate(len(text) * (1 + extra))
    elif name == "replace" and text is not None and len(args) >= 2:
        _check_estimate(_replace_estimate(text, args[0], args[1], arg(2, "count", None)))
    elif name == "join":
        _check_estimate(_join_estimate(arg(0, "d", ""), value))
    elif name == "format" and text is not None:
        _check_printf(text, kwargs or args)
    elif name == "urlize" and text is not None:
        # `target`, `rel` and `extra_schemes` are repeated in every link.
        extra = sum(len(a) for a in (*args, *kwargs.values()) if isinstance(a, str))
        _check_estimate(len(text) + (len(text) // 4 + 1) * extra)
    elif name in {"batch", "slice"}:
        count = arg(0, "linecount" if name == "batch" else "slices", 1)
        if isinstance(count, int) and count > MAX_RANGE:
            raise _LimitExceeded(f"{name} is limited to {MAX_RANGE}")


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter with a deadline check, bounded inputs and a size check on its result."""
    # Filters marked pass_context / pass_environment / pass_eval_context get that first.
    offset = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if len(args) > offset:
            value = args[offset]
            if _is_iterator(value):
                value = _materialize(value)
                args = (*args[:offset], value, *args[offset + 1 :])
            # No filter gets an input over the bound (a list of many references to one large
            # string is small in memory, and huge once joined, printed or dumped).
            _check_values((value, *args[offset + 1 :], *kwargs.values()))
            _filter_estimate(name, value, args[offset + 1 :], kwargs)
        result = func(*args, **kwargs)
        _check_value(result)
        return result

    return guarded


_ITER_FILTER = "_transform_iter"


class _BoundedBuffer(list):
    """Where the output of a `{% set %}…{% endset %}` block, a macro, a `{% filter %}` or a
    `{% call %}` body collects: refused as soon as it grows past the value bound."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def _grow(self, item: Any) -> None:
        _tick()
        self.size += _approx_size(item)
        if self.size > MAX_VALUE:
            raise _LimitExceeded(_VALUE_MESSAGE)

    def append(self, item: Any) -> None:
        self._grow(item)
        super().append(item)

    def extend(self, items: Any) -> None:
        items = tuple(items)
        for item in items:
            self._grow(item)
        super().extend(items)


def _bounded_concat(items: tuple[Any, ...]) -> str:
    """Jinja's `~`, refused once the joined string would be over the value bound."""
    _tick()
    parts = []
    total = 0
    for item in items:
        _check_value(item)  # str() of a list of references to one large string is huge
        text = str(item)
        total += len(text)
        if total > MAX_VALUE:
            raise _LimitExceeded(_VALUE_MESSAGE)
        parts.append(text)
    return "".join(parts)


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with `~` and every output buffer bounded in size."""

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.bounded_buffer()")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with bounded time and memory."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _BoundedCodeGenerator
    bounded_buffer = _BoundedBuffer
    bounded_concat = staticmethod(_bounded_concat)

    def __init__(self) -> None:
        super().__init__(  # autoescape stays off, its default: the output is JSON, not HTML
            undefined=_LenientUndefined,
            finalize=_finalize,
            keep_trailing_newline=True,
            auto_reload=False,
            cache_size=0,
        )
        self.policies["truncate.leeway"] = 0  # `truncate(n)` never returns more than n
        self.globals.pop("lipsum", None)
        self.globals["range"] = _safe_range
        self.globals["namespace"] = _BoundedNamespace
        filters = dict(self.filters)
        filters["tojson"] = _tojson
        self.filters = {name: _guard_filter(name, func) for name, func in filters.items()}
        self.filters[_ITER_FILTER] = _bounded_iter

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Parse, then route every `{% for %}` iterable through the deadline-checking filter."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(
                loop.iter, _ITER_FILTER, [], [], None, None, lineno=loop.iter.lineno
            )
        return tree

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if left.bit_length() * right > MAX_INT_BITS:
                    raise _LimitExceeded(f"an integer would be over {MAX_INT_BITS} bits")
        elif operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise _LimitExceeded(f"an integer would be over {MAX_INT_BITS} bits")
            else:
                seq, times = (left, right) if isinstance(right, int) else (right, left)
                if isinstance(times, int) and isinstance(seq, str | bytes | list | tuple):
                    _check_estimate(_approx_size(seq) * max(times, 0))
        elif operator == "%" and isinstance(left, str):
            _check_printf(left, right)
        result = self.binop_table[operator](left, right)
        _check_value(result)
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        is_format_map = value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            _tick()
            if is_format_map and len(args) == 1 and isinstance(args[0], Mapping):
                _check_format_string(fmt, (), args[0])
            else:
                _check_format_string(fmt, args, kwargs)
            result = wrapped(*args, **kwargs)
            _check_value(result)
            return result

        return functools.update_wrapper(checked, wrapped)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        if isinstance(obj, Macro):
            for arg in (*args, *kwargs.values()):
                _check_value(arg)
        else:
            if any(_is_iterator(arg) for arg in args):
                args = tuple(_materialize(a) if _is_iterator(a) else a for a in args)
            _check_values((*args, *kwargs.values()))
            owner = getattr(obj, "__self__", None)
            if isinstance(owner, str | bytes):
                _check_str_method(owner, getattr(obj, "__name__", ""), args, kwargs)
        result = super().call(context, obj, *args, **kwargs)
        _check_value(result)
        return result


_ENV = _Sandbox()


# --------------------------------------------------------------------------- compiling

_TEXT, _EXPR, _TEMPLATE = "text", "expr", "template"


@dataclass(frozen=True)
class _Compiled:
    kind: str
    expression: TemplateExpression | None = None
    template: Template | None = None
    line: int = 0  # for an expression: the line it is on


def has_markup(source: str) -> bool:
    return "{{" in source or "{%" in source or "{#" in source


def _single_expression(tree: nodes.Template) -> nodes.Expr | None:
    """The expression of a template that is exactly one `{{ expression }}`, else None."""
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    expressions = []
    for node in tree.body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            if node.data.strip():
                return None
        else:
            expressions.append(node)
    return expressions[0] if len(expressions) == 1 else None


@functools.lru_cache(maxsize=CACHE_SIZE)
def _compile(source: str) -> _Compiled:
    """Compile one template string (cached by source). Raises TemplateSyntaxError."""
    if not has_markup(source):
        return _Compiled(_TEXT)
    tree = _ENV.parse(source)
    expression = _single_expression(tree)
    if expression is not None:
        # What Environment.compile_expression builds, from the expression already parsed.
        body = [nodes.Assign(nodes.Name("result", "store"), expression, lineno=expression.lineno)]
        template = _ENV.from_string(nodes.Template(body, lineno=1))
        return _Compiled(
            _EXPR, expression=TemplateExpression(template, False), line=expression.lineno
        )
    return _Compiled(_TEMPLATE, template=_ENV.from_string(tree))


def _syntax_message(error: TemplateSyntaxError) -> str:
    message = error.message or type(error).__name__
    return f"line {error.lineno}: {message}" if error.lineno else message


_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


def _child_path(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = str(key)
    if _SIMPLE_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def compile_transform(transform: dict) -> None:
    """Check that `transform` is a JSON object of at most 64 KiB whose strings all compile.

    Raises TransformError naming the first problem (`"data.title: line 1: unexpected '}'"`).
    """
    if not isinstance(transform, dict):
        raise TransformError("transform must be a JSON object")
    _check_structure(transform, "", 0)
    _check_json_size(transform, "transform", MAX_TRANSFORM_BYTES)
    _compile_strings(transform, "")


def _check_json_size(value: Any, what: str, limit: int) -> None:
    """Raise TransformError unless `value` is JSON of at most `limit` bytes as compact UTF-8."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise TransformError(f"{what} is not valid JSON: {exc}") from None
    if size > limit:
        raise TransformError(f"{what} is over {limit // 1024} KiB")


def _check_structure(value: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise TransformError(f"transform is nested deeper than {MAX_DEPTH} levels", path)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TransformError("object keys must be strings", path)
            _check_structure(item, _child_path(path, key), depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_structure(item, _child_path(path, index), depth + 1)
    elif not (value is None or isinstance(value, str | bool | int | float)):
        raise TransformError(f"{type(value).__name__} is not a JSON value", path)


def _compile_strings(value: Any, path: str) -> None:
    if isinstance(value, str):
        try:
            _compile(value)
        except TemplateSyntaxError as exc:
            raise TransformError(_syntax_message(exc), path) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _compile_strings(item, _child_path(path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _compile_strings(item, _child_path(path, index))


# --------------------------------------------------------------------------- rendering


def render(transform: dict, envelope: Mapping[str, Any], *, timeout: float = RENDER_TIMEOUT) -> Any:
    """Render `transform` against `envelope` (its keys are the template variables).

    Returns plain JSON data (usually a dict). Raises TransformError for a template that does not
    compile, any error while rendering, a render over `timeout` seconds, or a body over 256 KiB.
    """
    if not isinstance(transform, dict):
        raise TransformError("transform must be a JSON object")
    if not isinstance(envelope, Mapping):
        raise TransformError("envelope must be a JSON object")
    variables = {str(key): value for key, value in envelope.items()}
    limits = _Limits(
        deadline=time.monotonic() + timeout, timeout=timeout, budget=MAX_RENDERED_BYTES
    )
    token = _LIMITS.set(limits)
    try:
        result = _render_value(transform, variables, "", 0)
    finally:
        _LIMITS.reset(token)
    _check_json_size(result, "rendered body", MAX_RENDERED_BYTES)
    return result


def render_noting_undefined(transform: dict, envelope: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """`render`, and a note for each string where an undefined value reached the body (such as
    `text: titel is undefined for this event, so it renders as empty text`), for a preview."""
    seen = _Undefined(names=[], notes=[])
    token = _UNDEFINED.set(seen)
    try:
        result = render(transform, envelope)
    finally:
        _UNDEFINED.reset(token)
    return result, seen.notes


def _render_value(value: Any, variables: dict[str, Any], path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise TransformError(f"transform is nested deeper than {MAX_DEPTH} levels", path)
    if isinstance(value, str):
        return _render_string(value, variables, path)
    try:
        _tick()
    except _LimitExceeded as exc:
        raise TransformError(str(exc), path) from None
    if isinstance(value, dict):
        return {
            str(key): _render_value(item, variables, _child_path(path, key), depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [
            _render_value(item, variables, _child_path(path, index), depth + 1)
            for index, item in enumerate(value)
        ]
    if value is None or isinstance(value, bool | int | float):
        return value
    raise TransformError(f"{type(value).__name__} is not a JSON value", path)


def _render_string(source: str, variables: dict[str, Any], path: str) -> Any:
    seen = _UNDEFINED.get()
    if seen is None:
        return _render_source(source, variables, path)
    before = len(seen.names)
    value = _render_source(source, variables, path)
    names = ", ".join(dict.fromkeys(seen.names[before:]))
    if names:
        shown = "null" if value is None else "empty text"
        are = (
            "is undefined for this event, so it renders"
            if "," not in names
            else ("are undefined for this event, so they render")
        )
        seen.notes.append(f"{path or 'body'}: {names} {are} as {shown}")
    return value


def _render_source(source: str, variables: dict[str, Any], path: str) -> Any:
    try:
        compiled = _compile(source)
    except TemplateSyntaxError as exc:
        raise TransformError(_syntax_message(exc), path) from None
    try:
        if compiled.kind == _TEXT:
            _charge(len(source))
            return source
        if compiled.kind == _EXPR:
            assert compiled.expression is not None
            value = _to_json(compiled.expression(variables))
            _charge(len(json.dumps(value, ensure_ascii=False, separators=(",", ":"))))
            return value
        assert compiled.template is not None
        parts: list[str] = []
        for chunk in compiled.template.generate(variables):
            _charge(len(chunk))
            _tick()
            parts.append(chunk)
        return "".join(parts)
    except _BodyTooLarge:
        raise TransformError(_SIZE_MESSAGE) from None
    except _LimitExceeded as exc:
        raise TransformError(str(exc), path) from None
    except TemplateError as exc:
        message = exc.message or type(exc).__name__
        raise TransformError(_runtime_message(compiled, exc, message), path) from None
    except RecursionError:
        raise TransformError("recursion is too deep", path) from None
    except MemoryError:
        raise  # the render process's memory bound: its caller reports it
    except Exception as exc:  # every render failure is a TransformError
        message = f"{type(exc).__name__}: {exc}"
        raise TransformError(_runtime_message(compiled, exc, message), path) from None


def _runtime_message(compiled: _Compiled, exc: BaseException, message: str) -> str:
    """`message`, prefixed with the template line where `exc` was raised when it is known."""
    line = compiled.line or None
    if compiled.kind == _TEMPLATE:
        # Jinja rewrites tracebacks so that template frames carry the template's line numbers.
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<template>":
                line = tb.tb_lineno
            tb = tb.tb_next
    return f"line {line}: {message}" if line else message
