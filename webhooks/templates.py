"""Built-in webhook templates: slack, jira, pagerduty, github (repository_dispatch), generic.

Each template is data: a label, a description, the form of its target URL, the events it
subscribes to by default, its parameters, and (through `apply`) the transform and headers that
make the delivery acceptable to the real API it targets (docs/API.md section 4):

* slack: Slack incoming webhooks with Block Kit (https://api.slack.com/messaging/webhooks);
* jira: Jira Cloud REST v2 create issue (`POST /rest/api/2/issue`);
* pagerduty: PagerDuty Events API v2 (`POST https://events.pagerduty.com/v2/enqueue`);
* github: GitHub `POST /repos/{owner}/{repo}/dispatches` (repository_dispatch);
* generic: the envelope unchanged.

Transforms are rendered by `webhooks.transforms`. Pure domain code: no Flask, no I/O.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from webhooks import catalog

__all__ = [
    "TEMPLATES",
    "Outgoing",
    "Param",
    "ParamsError",
    "Template",
    "apply",
    "customised",
    "follows",
    "get",
    "outgoing",
]


class Param(NamedTuple):
    """One template parameter (`template_params` key)."""

    name: str
    label: str
    required: bool
    default: str | None = None


@dataclass(frozen=True)
class Template:
    """A built-in template. `secret_params` names the params that are credentials."""

    name: str
    label: str
    description: str
    url_hint: str
    default_events: tuple[str, ...]
    params: tuple[Param, ...] = ()
    secret_params: tuple[str, ...] = ()
    hints: Mapping[str, str] = field(default_factory=dict)  # a line under a param's field
    # Flow control a webhook made from it starts with (API.md section 8); None: none.
    rate_limit: float | None = None
    ordering_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The template as the API and dashboard list it (no transform, no secrets)."""
        return {
            "name": self.name,
            "label": self.label,
            "description": self.description,
            "url_hint": self.url_hint,
            "default_events": list(self.default_events),
            "rate_limit": self.rate_limit,
            "ordering_key": self.ordering_key,
            "params": [
                {
                    "name": param.name,
                    "label": param.label,
                    "required": param.required,
                    "default": param.default,
                    "secret": param.name in self.secret_params,
                }
                for param in self.params
            ],
        }


# --------------------------------------------------------------------------- shared snippets

# The event's title (trimmed), or its type when it has none.
_TITLE = "((data.title|trim if data.title is string else data.title) or type)"
# Slack mrkdwn: &, < and > must be escaped (https://api.slack.com/reference/surfaces/formatting).
_ESCAPE = "replace('&', '&amp;')|replace('<', '&lt;')|replace('>', '&gt;')"
# Event-name prefix -> category key of the catalog ("finding" -> "security").
_CATEGORIES = {event.type.split(".", 1)[0]: event.category for event in catalog.CATALOG}
_PREFIX = "(type|string).split('.')[0]"


def _limit(length: int, inner: str, end: str = "…", escape: bool = False) -> str:
    """A template string: `inner` (template text) rendered, then cut to `length` characters.

    With `escape`, the rendered text is escaped for Slack mrkdwn first.
    """
    filters = (_ESCAPE + "|" if escape else "") + f"truncate({length}, true, {end!r}, 0)"
    return f"{{% filter {filters} %}}{inner}{{% endfilter %}}"


# --------------------------------------------------------------------------- slack

# One mrkdwn string, so that the block list stays the same for every event: each line is there
# only when its value is present; the event type line is always there (text may not be empty).
# Values print as they do in any interpolated string (lists and objects as JSON), and the whole
# text is escaped for mrkdwn.
_SLACK_DETAILS = (
    "*Event:* `{{ type }}`"
    "{% if data.severity %}\n*Severity:* {{ data.severity }}{% endif %}"
    "{% if data.potential_savings is number %}"
    "\n*Potential savings:* {{ '{:,.2f}'.format(data.potential_savings) }}"
    "{% if data.currency %} {{ data.currency }}{% endif %}"
    "{% if data.savings_period %} ({{ data.savings_period }}){% endif %}"
    "{% elif data.potential_savings %}"
    "\n*Potential savings:* {{ data.potential_savings }}"
    "{% endif %}"
    "{% if data.resource %}\n*Resource:* `{{ data.resource }}`{% endif %}"
    "{% if data.status %}\n*Status:* {{ data.status }}"
    "{% if data.previous_status %} (was {{ data.previous_status }}){% endif %}"
    "{% endif %}"
    "{% set detail = data.summary or data.comment or data.error or data.root_cause %}"
    "{% if detail is string %}\n\n{{ detail|truncate(1000, true, '…', 0) }}"
    "{% elif detail %}\n\n{{ detail }}{% endif %}"
)

# The link is mrkdwn markup itself, so only the values in it are escaped.
_SLACK_CONTEXT = (
    "CloudThinker · `{{ id|string|" + _ESCAPE + " }}`"
    "{% if data.url %} · <{{ data.url|string|" + _ESCAPE + " }}|View in CloudThinker>{% endif %}"
)

_SLACK_TRANSFORM: dict[str, Any] = {
    # The notification / fallback text (Slack's `text` is mrkdwn too).
    "text": _limit(3000, "{{ type }}: {{ " + _TITLE + " }}", escape=True),
    "blocks": [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _limit(150, "{{ " + _TITLE + " }}"),
                "emoji": True,
            },
        },
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": _limit(3000, _SLACK_DETAILS, escape=True)},
        },
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _limit(3000, _SLACK_CONTEXT)}]},
    ],
}


def _slack(_params: dict[str, str | None]) -> tuple[dict[str, Any], dict[str, str]]:
    return copy.deepcopy(_SLACK_TRANSFORM), {}


# --------------------------------------------------------------------------- jira

# Jira v2 `description` is wiki markup: the details go in a {noformat} block, shown literally.
_JIRA_DESCRIPTION = _limit(
    30000,
    "{% set detail = data.summary or data.comment or data.error or data.root_cause %}"
    "{% if detail %}{{ detail }}\n\n{% endif %}"
    "{noformat}\n"
    "{% if data is mapping %}{% for key, value in data.items() %}"
    "{% if value is not none %}{{ key }}: {{ value }}\n{% endif %}"
    "{% endfor %}{% endif %}"
    "{noformat}\n"
    "{% if data.url %}\n[View in CloudThinker|{{ data.url }}]\n{% endif %}"
    "\nCloudThinker event {{ type }} ({{ id }}) at {{ timestamp }}",
)


def _jira(params: dict[str, str | None]) -> tuple[dict[str, Any], dict[str, str]]:
    category = (
        "{{ "
        + json.dumps(_CATEGORIES)
        + f".get({_PREFIX}, {_PREFIX} or 'event')|replace(' ', '_') }}}}"
    )
    transform = {
        "fields": {
            "project": {"key": params["project_key"]},
            # Jira refuses line breaks in a summary and more than 255 characters.
            "summary": "{{ ('[CloudThinker] ' ~ "
            + _TITLE
            + ")|replace('\\r', ' ')|replace('\\n', ' ')|truncate(250, true, '…', 0) }}",
            "issuetype": {"name": params["issue_type"]},
            "description": _JIRA_DESCRIPTION,
            "labels": ["cloudthinker", category],
        }
    }
    credentials = f"{params['email']}:{params['api_token']}".encode()
    headers = {"Authorization": "Basic " + base64.b64encode(credentials).decode("ascii")}
    return transform, headers


# --------------------------------------------------------------------------- pagerduty

_PAGERDUTY_SEVERITY = {
    "critical": "critical",
    "high": "error",
    "error": "error",
    "medium": "warning",
    "warning": "warning",
    "low": "info",
    "info": "info",
}


# The same for every event of one incident or finding, so resolved resolves created; also the
# webhook's ordering key, so that a resolve is never sent before its trigger.
_PAGERDUTY_DEDUP_KEY = "{{ ('cloudthinker-' ~ (data.id or id))|truncate(255, true, '', 0) }}"


def _pagerduty(params: dict[str, str | None]) -> tuple[dict[str, Any], dict[str, str]]:
    transform = {
        "routing_key": params["routing_key"],
        "event_action": "{{ 'resolve' if (type|string).endswith('.resolved') else 'trigger' }}",
        "dedup_key": _PAGERDUTY_DEDUP_KEY,
        "payload": {
            "summary": _limit(
                1024,
                "{% if data.severity %}[{{ data.severity|string|upper }}] {% endif %}"
                "{{ " + _TITLE + " }}",
            ),
            "source": _limit(
                255,
                "{% if data.resource %}{{ data.resource }}"
                "{% elif data.service %}{{ data.service }}"
                "{% else %}cloudthinker{% endif %}",
            ),
            "severity": "{{ "
            + json.dumps(_PAGERDUTY_SEVERITY)
            + ".get((data.severity|string|lower), 'info') }}",
            "timestamp": "{{ timestamp }}",
            "class": "{{ type }}",
            "custom_details": "{{ data if data is mapping else {} }}",
        },
        "client": "CloudThinker",
        "links": "{{ [{'href': data.url|string, 'text': 'View in CloudThinker'}]"
        " if data.url else [] }}",
    }
    return transform, {}


# --------------------------------------------------------------------------- github

# GitHub allows at most 10 top-level client_payload properties: keep the first 9, fold the rest
# under "more".
_GITHUB_PAYLOAD = (
    "{{ {} if data is not mapping else (data if data|length <= 10 else "
    "dict((data.items()|list)[:9], more=dict((data.items()|list)[9:]))) }}"
)


def _github(params: dict[str, str | None]) -> tuple[dict[str, Any], dict[str, str]]:
    transform = {
        "event_type": "{{ (type|string)|replace('.', '-')|truncate(100, true, '', 0) }}",
        "client_payload": _GITHUB_PAYLOAD,
    }
    headers = {
        "Authorization": f"Bearer {params['token']}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
    }
    return transform, headers


def _generic(_params: dict[str, str | None]) -> tuple[dict[str, Any] | None, dict[str, str]]:
    return None, {}


# --------------------------------------------------------------------------- the templates

TEMPLATES: dict[str, Template] = {
    "slack": Template(
        name="slack",
        label="Slack",
        description=(
            "Posts a Block Kit message (title, key details and a link) to a Slack channel "
            "through an incoming webhook."
        ),
        url_hint="https://hooks.slack.com/services/…",
        default_events=("recommendation.created", "incident.created", "finding.created"),
        rate_limit=1.0,  # Slack's documented limit for an incoming webhook
    ),
    "jira": Template(
        name="jira",
        label="Jira",
        description=(
            "Creates a Jira issue for each event (REST API v2), labelled cloudthinker and the "
            "event's category."
        ),
        url_hint="https://<site>/rest/api/2/issue",
        default_events=("recommendation.created",),
        params=(
            Param("project_key", "Project key", True),
            Param("issue_type", "Issue type", False, "Task"),
            Param("email", "Email", True),
            Param("api_token", "API token", True),
        ),
        secret_params=("api_token",),
        hints={
            "email": "The Atlassian account the API token belongs to.",
            "api_token": "An Atlassian API token; sent as Authorization: Basic with the email.",
        },
    ),
    "pagerduty": Template(
        name="pagerduty",
        label="PagerDuty",
        description=(
            "Triggers a PagerDuty alert (Events API v2) for incidents and security findings; "
            "their resolved events resolve it."
        ),
        url_hint="https://events.pagerduty.com/v2/enqueue",
        default_events=(
            "incident.created",
            "incident.resolved",
            "finding.created",
            "finding.resolved",
        ),
        params=(Param("routing_key", "Routing key", True),),
        secret_params=("routing_key",),
        hints={"routing_key": "The integration key of a PagerDuty service (Events API v2)."},
        ordering_key=_PAGERDUTY_DEDUP_KEY,
    ),
    "github": Template(
        name="github",
        label="GitHub Actions",
        description=(
            "Starts GitHub Actions workflows with a repository_dispatch event: the event type "
            "with '.' turned into '-', the event data as client_payload."
        ),
        url_hint="https://api.github.com/repos/<owner>/<repo>/dispatches",
        default_events=("recommendation.created",),
        params=(Param("token", "Token", True),),
        secret_params=("token",),
        hints={"token": "A GitHub token with contents: write on the repository."},
    ),
    "generic": Template(
        name="generic",
        label="Generic",
        description="Sends the standard event envelope unchanged.",
        url_hint="https://…",
        default_events=("*",),
    ),
}

_BUILDERS: dict[str, Callable[[dict[str, str | None]], tuple[Any, dict[str, str]]]] = {
    "slack": _slack,
    "jira": _jira,
    "pagerduty": _pagerduty,
    "github": _github,
    "generic": _generic,
}

# Params whose value is written into the transform (where a template delimiter would be code).
_IN_TRANSFORM = frozenset({"project_key", "issue_type", "routing_key"})


def get(name: str) -> Template | None:
    """The built-in template called `name`, or None."""
    return TEMPLATES.get(name)


class ParamsError(ValueError):
    """Template parameters that cannot be used.

    `str()` says what is wrong with the first of them, as a developer reads it; `problems` maps
    the name of every parameter with a problem (a missing one, a bad one, one the template does
    not take) to what is wrong with it, in words for a person (its label: "Project key is
    required").
    """

    def __init__(self, message: str, problems: dict[str, str]) -> None:
        super().__init__(message)
        self.problems = problems


_DELIMITERS = "must not contain '{{', '{%' or '{#'"
_LINE_BREAKS = "must not contain line breaks or NUL"


def _param_problem(template: str, param: Param, raw: Any) -> tuple[str, str] | None:
    """What is wrong with one parameter's value, for a developer and for a person, or None."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if not param.required:
            return None
        return (
            f"template {template!r} needs template_params.{param.name} ({param.label})",
            f"{param.label} is required",
        )
    if not isinstance(raw, str):
        return f"template_params.{param.name} must be a string", f"{param.label} must be text"
    value = raw.strip()
    if any(char in value for char in "\r\n\x00"):
        return f"template_params.{param.name} {_LINE_BREAKS}", f"{param.label} {_LINE_BREAKS}"
    if param.name in _IN_TRANSFORM and any(d in value for d in ("{{", "{%", "{#")):
        return f"template_params.{param.name} {_DELIMITERS}", f"{param.label} {_DELIMITERS}"
    return None


def apply(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a webhook made from template `name` with `params` gets.

    Returns ``{"events": [...], "transform": dict | None, "headers": dict}`` (fresh objects).
    Raises ValueError for an unknown template or params that are not an object, and ParamsError
    (a ValueError) naming every unknown, missing or malformed parameter.
    """
    template = TEMPLATES.get(name) if isinstance(name, str) else None
    if template is None:
        raise ValueError(f"unknown template {name!r}; expected one of: {', '.join(TEMPLATES)}")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ValueError("template_params must be an object")
    known = [param.name for param in template.params]
    unknown = sorted(str(key) for key in params if key not in known)
    messages: list[str] = []
    problems: dict[str, str] = {}
    if unknown:
        takes = f"it takes {', '.join(known)}" if known else "it takes no parameters"
        messages.append(f"template {name!r} has no parameter {', '.join(unknown)}; {takes}")
        labels = ", ".join(param.label for param in template.params)
        has = f"its settings are {labels}" if labels else "it has no settings"
        for key in unknown:
            problems[key] = f"The {template.label} template has no setting {key!r}; {has}"
    values: dict[str, str | None] = {}
    for param in template.params:
        raw = params.get(param.name)
        problem = _param_problem(name, param, raw)
        if problem is not None:
            messages.append(problem[0])
            problems[param.name] = problem[1]
        elif isinstance(raw, str) and raw.strip():
            values[param.name] = raw.strip()
        else:
            values[param.name] = param.default
    if problems:
        raise ParamsError(messages[0], problems)
    transform, headers = _BUILDERS[name](values)
    return {"events": list(template.default_events), "transform": transform, "headers": headers}


# --------------------------------------------------------------------------- live templates

# Credentials a template writes into the body rather than a header. A customised body does not
# carry them: they are set on the rendered body at send time, from `template_params`.
_BODY_CREDENTIALS: dict[str, tuple[str, ...]] = {"pagerduty": ("routing_key",)}


@dataclass(frozen=True)
class Outgoing:
    """What a webhook sends: the transform to render (None: the envelope), the custom headers,
    and fields set on the rendered body; `error` when its template cannot be applied."""

    transform: dict[str, Any] | None
    headers: dict[str, str]
    body_fields: dict[str, Any]
    error: str | None = None


def outgoing(
    template: str | None,
    params: Mapping[str, Any] | None,
    transform: dict[str, Any] | None,
    headers: Mapping[str, str] | None,
) -> Outgoing:
    """What a webhook with these settings sends, derived now (a template is live).

    Without a transform of its own, the template's transform is used; the template's headers
    are sent under the webhook's own (which win on a name clash), and its body credentials are
    set on a customised body.
    """
    own = dict(headers or {})
    if template is None or template not in TEMPLATES:
        return Outgoing(transform, own, {})
    try:
        applied = apply(template, params)
    except ValueError as exc:
        return Outgoing(transform, own, {}, error=f"the {template} template: {exc}")
    fields: dict[str, Any] = {}
    if transform is not None and applied["transform"] is not None:
        fields = {
            name: applied["transform"][name]
            for name in _BODY_CREDENTIALS.get(template, ())
            if name in applied["transform"]
        }
    return Outgoing(
        transform=applied["transform"] if transform is None else transform,
        headers={**applied["headers"], **own},
        body_fields=fields,
    )


def customised(template: str, params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The template's transform as an editable copy: its body credentials left out (they are
    still set at send time). Raises ValueError like `apply`."""
    transform = apply(template, params)["transform"]
    return without_body_credentials(template, transform)


def without_body_credentials(
    template: str | None, transform: dict[str, Any] | None
) -> dict[str, Any] | None:
    """A custom transform without the fields that the template sets from its credentials."""
    names = _BODY_CREDENTIALS.get(template or "", ())
    if transform is None or not any(name in transform for name in names):
        return transform
    return {key: value for key, value in transform.items() if key not in names}


def follows(template: str | None, params: Mapping[str, Any] | None, transform: Any) -> bool:
    """True when `transform` is the template's own (as derived, or as an editable copy)."""
    if template not in TEMPLATES or transform is None:
        return False
    try:
        derived = apply(template, params)["transform"]
    except ValueError:
        return False
    return transform in (derived, without_body_credentials(template, derived))
