"""The API's shapes, each declared once: what an endpoint takes and what it answers.

A shape is a pydantic model. Its fields' types and `Field` limits describe it, and the OpenAPI
document is made from these classes (blueprints.openapi). The same declarations read input and
build answers, field by field rather than through a pydantic model's validation: the API's
messages are written for people, a webhook's problems are all answered at once (those that
need several fields too), and a stored row is shown without being checked again:

- `read` passes each given field through its `Check`, a domain function (webhooks.checks) that
  returns what to keep or raises Invalid with the API's code and a message for a person; every
  field's problem is recorded at once, in the shape's field order. A field declared without a
  Check is checked by its type and limits alone (pydantic, strict), in pydantic's words.
- `of` builds an answer from a row: each field is the row's attribute of the same name unless
  `Show` says how to get it (a credential masked, say), and a time is ISO 8601 UTC. A field
  declared with `sometimes` is in an answer only when given.

Adding an optional field to webhooks: a column, a migration, and one line in `WebhookInput`
(its type, limits, default and, for messages of our own, its check); create, PATCH, every
answer and the OpenAPI document follow.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from operator import attrgetter
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from webhooks import catalog, checks, credentials, flow, signing, templates
from webhooks.config import Settings
from webhooks.errors import FAILED, Invalid, Problems
from webhooks.models import DeliveryStatus
from webhooks.outgoing import iso
from webhooks.publishing import MAX_BATCH

# --------------------------------------------------------------------------- the machinery


@dataclass(frozen=True)
class Check:
    """How `read` takes an input field: `check(value)` (with `reading=True`, `check(value,
    reading)`) returns what to keep, or raises Invalid."""

    check: Callable[..., Any]
    reading: bool = False


@dataclass(frozen=True)
class Show:
    """How `of` shows a field of an answer: `show(row)`, or the row's attribute so named."""

    show: Callable[[Any], Any] | str


@dataclass
class Reading:
    """What reading one input needs besides it, and what it finds: the settings (the egress
    rules), the warnings (accepted, but worth saying) and every field's problem."""

    settings: Settings
    warnings: list[str] = field(default_factory=list)
    problems: Problems = field(default_factory=Problems)


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


# The default of a field that may be left out: of an input (the domain decides what that
# means), or of an answer (a field declared with `sometimes`).
ABSENT: Any = _Absent()


def sometimes(description: str) -> Any:
    """A field that an answer has only at times (`description` says when): left out unless
    given to `of`, and not required by the OpenAPI document."""
    return Field(default=ABSENT, description=description, exclude_if=_absent)


def _absent(value: Any) -> bool:
    return value is ABSENT


def one_of(values: Any) -> Any:
    """A string limited to `values` (known when the catalog is loaded, say)."""
    return Field(json_schema_extra={"enum": list(values)})


def each(shape: type[Shape], attribute: str) -> Show:
    """A list of `shape`s, one for each item of the row's `attribute`."""
    return Show(lambda row: [shape.of(item) for item in getattr(row, attribute)])


def _unknown_fields(payload: Mapping[str, Any], known: frozenset[str]) -> None:
    extra = sorted(set(payload) - known)
    if extra:
        msg = f"unknown field {extra[0]!r}"
        raise Invalid("validation_error", msg, dict.fromkeys(extra, "unknown field"))


def _shower(name: str, info: Any) -> Callable[[Any], Any]:
    show = next((m.show for m in info.metadata if isinstance(m, Show)), name)
    if callable(show):
        return show
    if datetime in (info.annotation, *get_args(info.annotation)):
        return lambda row: iso(getattr(row, show))
    return attrgetter(show)


class _ByType:
    """The check of a field declared without one: its type and limits, by pydantic (strict:
    no "5" for 5), its problem in pydantic's words. Made when first needed."""

    def __init__(self, name: str, info: FieldInfo) -> None:
        self.name, self.info = name, info
        self.adapter: TypeAdapter[Any] | None = None

    def __call__(self, value: Any) -> Any:
        if self.adapter is None:
            declared: Any = self.info.annotation
            # Field's limits (a length, a bound), as pydantic keeps them apart from the type.
            limits = self.info.metadata
            self.adapter = TypeAdapter(Annotated[declared, *limits] if limits else declared)
        try:
            return self.adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            msg = exc.errors(include_url=False)[0]["msg"]
            raise Invalid("validation_error", f"{self.name}: {msg}", {self.name: msg}) from None


def _checker(name: str, info: FieldInfo) -> Check:
    declared = next((m for m in info.metadata if isinstance(m, Check)), None)
    return declared or Check(_ByType(name, info))


class Shape(BaseModel):
    """A shape of the API; see the module's docstring."""

    # An answer has every field, but those declared with `sometimes`.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    # What `read` and `of` do with each field, worked out once from the declarations.
    _shows: ClassVar[tuple[tuple[str, Callable[[Any], Any]], ...]] = ()
    _checks: ClassVar[tuple[tuple[str, Check], ...]] = ()
    _required: ClassVar[frozenset[str]] = frozenset()
    _known: ClassVar[frozenset[str] | None] = None  # None: extra fields are ignored

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        fields = cls.model_fields
        cls._shows = tuple(
            (name, _shower(name, info)) for name, info in fields.items() if info.exclude_if is None
        )
        cls._checks = tuple((name, _checker(name, info)) for name, info in fields.items())
        cls._required = frozenset(name for name, info in fields.items() if info.is_required())
        cls._known = frozenset(fields) if cls.model_config.get("extra") == "forbid" else None

    @classmethod
    def order(cls) -> tuple[str, ...]:
        """The fields in their declared order, which ranks an input's problems."""
        return tuple(cls.model_fields)

    @classmethod
    def read(
        cls, payload: Mapping[str, Any], reading: Reading, *, partial: bool = False
    ) -> dict[str, Any]:
        """The given fields as their checks take them.

        A problem goes to `reading.problems` and its field reads as FAILED; a field the shape
        does not have is one, unless the shape ignores extra fields. A required field that is
        absent is read as null (its check says what is missing), unless `partial`."""
        if cls._known is not None:
            reading.problems.run(_unknown_fields, payload, cls._known)
        values: dict[str, Any] = {}
        for name, check in cls._checks:
            if name in payload:
                value = payload[name]
            elif name in cls._required and not partial:
                value = None
            else:
                continue
            try:
                values[name] = check.check(value, reading) if check.reading else check.check(value)
            except Invalid as exc:
                # A check that does not name its field (a plain type check) is named for it.
                fields = exc.fields or {name: exc.message}
                reading.problems.found.append(Invalid(exc.code, exc.message, fields, exc.status))
                values[name] = FAILED
        return values

    @classmethod
    def defaults(cls, *, leaving: Collection[str] = ()) -> dict[str, Any]:
        """The declared default of each optional field, but those named in `leaving`."""
        return {
            name: info.get_default(call_default_factory=True)
            for name, info in cls.model_fields.items()
            if name not in leaving and not info.is_required()
        }

    @classmethod
    def of(cls, row: Any = None, **given: Any) -> dict[str, Any]:
        """The answer for `row`; a value in `given` stands for the field so named."""
        if not given:
            return {name: show(row) for name, show in cls._shows}
        answer = {name: show(row) for name, show in cls._shows if name not in given}
        answer.update(given)
        return answer


# --------------------------------------------------------------------------- errors

ERROR_CODES = (
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
)


class ErrorDetail(Shape):
    code: Annotated[str, one_of(ERROR_CODES)]
    message: str
    fields: dict[str, str]


class Error(Shape):
    """Every refusal: a code a client can rely on, a message for a person, and the message
    of each field at fault."""

    error: Annotated[ErrorDetail, Show(ErrorDetail.of)]


# --------------------------------------------------------------------------- the catalog


class EventType(Shape):
    type: Annotated[str, one_of(e.type for e in catalog.CATALOG)]
    category: Annotated[str, one_of(key for key, _ in catalog.CATEGORIES)]
    description: str
    example: Annotated[dict[str, Any], Show(lambda entry: copy.deepcopy(entry.example))]


# --------------------------------------------------------------------------- webhooks


def _as_given(value: Any) -> Any:
    return value


# A field checked with others, by the domain (a template with its settings and the transform,
# in webhooks.management): `read` takes it as given.
TOGETHER = Check(_as_given)


def _url(url: Any, reading: Reading) -> str:
    return checks.check_url(url, reading.settings, reading.warnings)


def shown_transform(webhook: Any) -> dict[str, Any] | None:
    """The transform rendered for this webhook: its own, else its template's (as an editable
    copy: credentials are set on the body at send time and never shown)."""
    if webhook.transform is not None or webhook.template is None:
        transform: dict[str, Any] | None = webhook.transform
        return transform
    try:
        return templates.customised(webhook.template, webhook.template_params)
    except ValueError:
        return None


def transform_source(webhook: Any) -> str | None:
    """`custom` (its own transform), `template` (its template's, live), or None (the envelope)."""
    if webhook.transform is not None:
        return "custom"
    return "template" if shown_transform(webhook) is not None else None


def template_headers(webhook: Any) -> dict[str, str]:
    """The headers its template adds at send time, credentials masked."""
    if webhook.template is None:
        return {}
    try:
        headers = templates.apply(webhook.template, webhook.template_params)["headers"]
    except ValueError:
        return {}
    return credentials.mask_headers(headers)


class WebhookInput(Shape):
    """What `POST /webhooks` takes; `PATCH` takes any of it."""

    # The order of the fields ranks an input's problems: an error naming several takes the
    # code and message of the first. A field absent from a new webhook takes its default.
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=checks.MAX_NAME), Check(checks.check_name)]
    url: Annotated[
        str,
        Field(max_length=checks.MAX_URL_LENGTH, description="https:// only"),
        Check(_url, reading=True),
    ]
    events: Annotated[list[str], Field(min_length=1), Check(checks.check_events)]
    headers: Annotated[
        dict[str, str],
        Field(
            max_length=checks.MAX_HEADERS,
            description="its own custom headers; credential values masked (••••1234)",
        ),
        Check(checks.check_headers),
        Show(lambda webhook: credentials.mask_headers(webhook.headers)),
    ] = {}
    secret: Annotated[
        str | None,
        Field(
            default_factory=signing.generate_secret,
            description="omitted: one is generated; null: deliveries are not signed",
        ),
        Check(checks.check_secret),
    ]
    active: Annotated[bool, Check(partial(checks.check_bool, "active"))] = True
    template: Annotated[str | None, TOGETHER] = None
    template_params: Annotated[
        dict[str, Any] | None,
        Field(
            description="credentials (api_token, token, routing_key) masked; a masked value "
            "sent back keeps the stored one; PATCH merges (null removes a key)"
        ),
        TOGETHER,
        Show(lambda webhook: credentials.mask_params(webhook.template_params)),
    ] = None
    transform: Annotated[
        dict[str, Any] | None,
        Field(
            description="what is rendered: its own, or its template's (live; without "
            "credentials, which are set at send time)"
        ),
        TOGETHER,
        Show(shown_transform),
    ] = None
    rate_limit: Annotated[
        float | None,
        Field(
            ge=flow.MIN_RATE,
            le=flow.MAX_RATE,
            description="at most this many attempts start per second, in bursts of at most "
            "max(1, ceil(rate_limit)); null: no limit (the slack template sets 1)",
        ),
        Check(checks.check_rate_limit),
    ] = None
    ordering_key: Annotated[
        str | None,
        Field(
            max_length=flow.MAX_ORDERING_KEY,
            description="a template rendered against the envelope: deliveries whose keys are "
            "equal go one at a time, in publish order; null: no ordering (the pagerduty "
            "template sets its dedup_key)",
        ),
        Check(checks.check_ordering_key),
    ] = None


class Webhook(WebhookInput):
    """A webhook as the API shows it: its settings, credentials masked, and its state."""

    model_config = ConfigDict(extra="ignore")

    id: str
    disabled_reason: str | None
    has_secret: Annotated[
        bool, Show(lambda webhook: any(s.expires_at is None for s in webhook.secrets))
    ]
    template_headers: Annotated[
        dict[str, str],
        Field(description="headers its template adds when it sends; credentials masked"),
        Show(template_headers),
    ]
    transform_source: Annotated[
        Literal["template", "custom"] | None,
        Field(
            description="template: follows its template's settings; custom: its own "
            "(sending a transform other than the template's detaches; null follows again)"
        ),
        Show(transform_source),
    ]
    created_at: datetime
    updated_at: datetime
    secret: str | None = sometimes("only when created")


class Secret(Shape):
    secret: str | None


class RotateSecretInput(Shape):
    secret: str = ABSENT  # omitted: one is generated


class Rotated(Shape):
    secret: str
    webhook: Webhook


# --------------------------------------------------------------------------- events


class Envelope(Shape):
    """An event as receivers get it (POST /events' answer adds `delivery_count`)."""

    id: str
    type: str
    timestamp: datetime
    workspace_id: str
    data: dict[str, Any]
    test: bool = sometimes("a test event, sent to one webhook alone")
    delivery_count: int = sometimes("how many deliveries it made")


class PublishInput(Shape):
    type: str
    data: dict[str, Any] = ABSENT  # omitted: {}


class BatchEvent(Shape):
    model_config = ConfigDict(extra="forbid")

    type: str
    data: dict[str, Any] = ABSENT  # omitted: {}
    idempotency_key: Annotated[str | None, Field(max_length=255)] = None


class BatchInput(Shape):
    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[BatchEvent], Field(min_length=1, max_length=MAX_BATCH)]


class TestEventInput(Shape):
    type: str = ABSENT  # omitted: the webhook's first type


class TestSent(Shape):
    event: Envelope
    delivery_id: str


# --------------------------------------------------------------------------- deliveries


def _next_attempt_at(delivery: Any) -> str | None:
    # A delivery waiting for its turn has no time yet: it goes once the earlier one ends.
    return None if delivery.waiting == flow.ORDER else iso(delivery.next_attempt_at)


class Delivery(Shape):
    id: str
    event_id: str
    event_type: str
    webhook_id: str
    kind: Literal["event", "test", "redelivery", "recover", "replay"]
    status: Annotated[str, one_of(DeliveryStatus.ALL)]
    attempt_count: int
    max_attempts: int
    next_attempt_at: Annotated[datetime | None, Show(_next_attempt_at)]
    last_status_code: int | None
    last_error: str | None
    waiting: Annotated[
        Literal["rate_limit", "order"] | None,
        Field(
            description="why a pending delivery is not sent yet: its webhook's rate "
            "limit (it goes at next_attempt_at), or an earlier delivery with the same "
            "ordering key (waiting_for)"
        ),
    ]
    waiting_for: Annotated[
        str | None,
        Field(description="the earlier delivery with the same ordering key it waits for"),
    ]
    created_at: datetime
    updated_at: datetime


class AttemptRequest(Shape):
    url: Annotated[str, Show("request_url")]
    headers: Annotated[
        dict[str, Any], Show(lambda attempt: credentials.mask_headers(attempt.request_headers))
    ]
    body: Annotated[str, Show(lambda attempt: credentials.mask_body(attempt.request_body))]


class AttemptResponse(Shape):
    status_code: Annotated[int, Show("response_status")]
    headers: Annotated[dict[str, Any], Show(lambda attempt: attempt.response_headers or {})]
    body: Annotated[str | None, Show("response_body")]


def _response(attempt: Any) -> dict[str, Any] | None:
    return None if attempt.response_status is None else AttemptResponse.of(attempt)


class Attempt(Shape):
    number: int
    outcome: Literal["in_flight", "success", "failure", "lost"]
    started_at: datetime
    duration_ms: int | None
    request: Annotated[AttemptRequest, Show(AttemptRequest.of)]
    response: Annotated[AttemptResponse | None, Show(_response)]
    error: str | None


# --------------------------------------------------------------------------- bulk jobs


class RecoverInput(Shape):
    model_config = ConfigDict(extra="forbid")

    since: datetime
    until: datetime = ABSENT  # omitted: now


class ReplayInput(Shape):
    model_config = ConfigDict(extra="forbid")

    since: datetime


class BulkStarted(Shape):
    job_id: str
    count: Annotated[int, Field(description="deliveries it will create")]
    message: str = sometimes("when the 10,000 cap was reached")


class BulkJob(Shape):
    id: str
    kind: Annotated[
        Literal["recover", "replay", "redeliver"],
        Field(
            description="redeliver: the dashboard's Redeliver all matching, of the "
            "failed deliveries a logs filter matched when it started"
        ),
    ]
    status: Literal["queued", "running", "done", "failed"]
    done: Annotated[int, Field(description="deliveries created so far")]
    total: Annotated[int, Field(description="deliveries to create in all")]
    webhook_id: Annotated[
        str | None,
        Field(description="null for a redeliver job whose filter named no webhook"),
    ]
    created_at: datetime
    error: str | None


# --------------------------------------------------------------------------- notifications


class NotificationSettingsInput(Shape):
    model_config = ConfigDict(extra="forbid")

    emails: list[str] = ABSENT  # omitted: none
    alert_url: str | None = None


class NotificationSettings(Shape):
    emails: Annotated[
        list[Annotated[str, Field(json_schema_extra={"format": "email"})]],
        Field(max_length=checks.MAX_EMAILS),
        Show(lambda found: list(found.emails or [])),
    ]
    alert_url: Annotated[
        str | None,
        Field(description='gets a POST of {"text": …}; the same rules as a webhook URL'),
        # Its path is a credential (a Slack incoming webhook's, say): shown masked.
        Show(lambda found: credentials.mask_url(found.alert_url)),
    ]
    warnings: list[str] = sometimes("what was accepted but is worth saying")


# --------------------------------------------------------------------------- the signature debugger


def _needs(kind: type, message: str, value: Any) -> Any:
    """`value` when it is a `kind`; else `message` (which says what is needed)."""
    if not isinstance(value, kind):
        raise Invalid("validation_error", message)
    return value


def _is(kind: type, value: Any) -> Any:
    """`value` when it is null or a `kind`; else what it is instead."""
    if value is not None and not isinstance(value, kind):
        raise Invalid("validation_error", f"must be {kind.__name__}, got {value!r}")
    return value


def _received_headers(headers: Any) -> dict[str, str]:
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise Invalid(
            "validation_error", "required: an object of the headers as received, values strings"
        )
    return headers


def _string(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise Invalid("validation_error", f"must be a string, got {type(value).__name__}")
    return value


class SignatureCheckInput(Shape):
    # Every problem is named at once, in this order (Problems.raise_listed).

    body: Annotated[
        str,
        Check(partial(_needs, str, "required: the raw body as the receiver read it, as a string")),
    ]
    headers: Annotated[dict[str, str], Check(_received_headers)]
    secret: Annotated[str, Check(_string)] = ABSENT
    computed: Annotated[str, Check(_string)] = ABSENT


class SignatureCheck(Shape):
    header: str
    valid: bool
    reason: str


class SignatureReport(Shape):
    valid: bool
    checks: Annotated[list[SignatureCheck], each(SignatureCheck, "checks")]
    problems: Annotated[list[str], Show(lambda report: list(report.problems))]


# --------------------------------------------------------------------------- listeners


class ListenerInput(Shape):
    events: list[str] = ABSENT  # omitted: ["*"]


class Listener(Shape):
    id: str
    webhook_id: str
    secret: str
    stream_url: str


class ListenerResultInput(Shape):
    # Every problem is named at once, in this order (Problems.raise_listed).

    status_code: Annotated[int, Check(partial(_is, int))] = ABSENT
    headers: Annotated[dict[str, Any], Check(partial(_is, dict))] = ABSENT
    body: Annotated[str, Check(partial(_is, str))] = ABSENT
    duration_ms: Annotated[int, Check(partial(_is, int))] = ABSENT
    error: Annotated[str, Check(partial(_is, str))] = ABSENT
    delivery_id: Annotated[str, Check(partial(_needs, str, "required: the delivery id (dlv_…)"))]
    attempt: Annotated[int, Check(partial(_needs, int, "required: the attempt number"))]


class ListenerResult(Shape):
    delivery_id: str
    attempt: int
    accepted: bool


class EgressIps(Shape):
    ips: list[str]
