"""The event catalog: the 20 event types of the product documentation, with examples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_APP = "https://app.cloudthinker.io"
_ACCOUNT = "123456789012"


@dataclass(frozen=True)
class EventType:
    """One event type: its name, category key, one-line description and example `data`."""

    type: str
    category: str
    description: str
    example: dict[str, Any] = field(hash=False)


# The one approval that `approval.requested` and `approval.granted` show, asked for and then given.
_APPROVAL: dict[str, Any] = {
    "id": "apr_8e4b12",
    "title": "Stop 3 idle EC2 instances in us-west-2",
    "agent": "cost-optimizer",
    "action": "ec2:StopInstances",
    "resources": [
        f"arn:aws:ec2:us-west-2:{_ACCOUNT}:instance/i-07f3a9c2e1b4d5a60",
        f"arn:aws:ec2:us-west-2:{_ACCOUNT}:instance/i-0b2e8d4f6a1c3e597",
        f"arn:aws:ec2:us-west-2:{_ACCOUNT}:instance/i-0c9a1f7e3d5b2c846",
    ],
    "requested_by": "agent:cost-optimizer",
}

CATEGORIES: tuple[tuple[str, str], ...] = (
    ("recommendation", "Recommendation"),
    ("incident", "Incident"),
    ("security", "Security"),
    ("task", "Task"),
    ("agent", "Agent"),
    ("resource", "Resource"),
)

CATALOG: tuple[EventType, ...] = (
    # Recommendation events
    EventType(
        type="recommendation.created",
        category="recommendation",
        description="New recommendation generated.",
        example={
            "id": "rec_def456",
            "title": "Right-size EC2 instance i-0abc123",
            "potential_savings": 150.00,
            "effort": "low",
            "risk": "low",
            "status": "pending",
            "currency": "USD",
            "savings_period": "monthly",
            "provider": "aws",
            "region": "us-east-1",
            "resource": f"arn:aws:ec2:us-east-1:{_ACCOUNT}:instance/i-0abc123",
            "summary": "Average CPU 6% over 30 days on m5.2xlarge; m5.xlarge fits the load.",
            "url": f"{_APP}/recommendations/rec_def456",
        },
    ),
    EventType(
        type="recommendation.updated",
        category="recommendation",
        description="Recommendation status changed.",
        example={
            "id": "rec_9f2c71",
            "title": "Delete unattached EBS volume vol-0d4e5f6a7b8c9d0e1",
            "potential_savings": 48.00,
            "currency": "USD",
            "savings_period": "monthly",
            "effort": "low",
            "risk": "medium",
            "status": "approved",
            "previous_status": "pending",
            "provider": "aws",
            "region": "us-east-1",
            "resource": f"arn:aws:ec2:us-east-1:{_ACCOUNT}:volume/vol-0d4e5f6a7b8c9d0e1",
            "updated_by": "maya.chen@example.com",
            "url": f"{_APP}/recommendations/rec_9f2c71",
        },
    ),
    EventType(
        type="recommendation.implemented",
        category="recommendation",
        description="Recommendation marked complete.",
        example={
            "id": "rec_def456",
            "title": "Right-size EC2 instance i-0abc123",
            "potential_savings": 150.00,
            "currency": "USD",
            "savings_period": "monthly",
            "effort": "low",
            "risk": "low",
            "status": "implemented",
            "previous_status": "approved",
            "provider": "aws",
            "region": "us-east-1",
            "resource": f"arn:aws:ec2:us-east-1:{_ACCOUNT}:instance/i-0abc123",
            "implemented_by": "daniel.okafor@example.com",
            "implemented_at": "2024-01-16T14:05:00Z",
            "url": f"{_APP}/recommendations/rec_def456",
        },
    ),
    EventType(
        type="recommendation.comment",
        category="recommendation",
        description="Comment added to recommendation.",
        example={
            "id": "rec_5b8e20",
            "title": "Move S3 bucket acme-analytics-logs to S3 Intelligent-Tiering",
            "potential_savings": 312.40,
            "currency": "USD",
            "savings_period": "monthly",
            "effort": "medium",
            "risk": "low",
            "status": "pending",
            "provider": "aws",
            "region": "eu-west-1",
            "resource": "arn:aws:s3:::acme-analytics-logs",
            "comment_id": "cmt_3a91d4",
            "author": "Maya Chen",
            "comment": "Athena jobs read the last 7 days only; fine to tier everything older.",
            "url": f"{_APP}/recommendations/rec_5b8e20#comment-cmt_3a91d4",
        },
    ),
    # Incident events
    EventType(
        type="incident.created",
        category="incident",
        description="New incident created.",
        example={
            "id": "inc_4f7a21",
            "title": "Elevated 5xx error rate on checkout-api",
            "severity": "high",
            "status": "open",
            "service": "checkout-api",
            "provider": "aws",
            "region": "us-east-1",
            "source": "datadog",
            "started_at": "2024-01-15T10:12:00Z",
            "url": f"{_APP}/incidents/inc_4f7a21",
        },
    ),
    EventType(
        type="incident.updated",
        category="incident",
        description="Incident details changed.",
        example={
            "id": "inc_4f7a21",
            "title": "Elevated 5xx error rate on checkout-api",
            "severity": "critical",
            "previous_severity": "high",
            "status": "investigating",
            "service": "checkout-api",
            "provider": "aws",
            "region": "us-east-1",
            "source": "datadog",
            "started_at": "2024-01-15T10:12:00Z",
            "assignee": "Daniel Okafor",
            "url": f"{_APP}/incidents/inc_4f7a21",
        },
    ),
    EventType(
        type="incident.resolved",
        category="incident",
        description="Incident marked resolved.",
        example={
            "id": "inc_4f7a21",
            "title": "Elevated 5xx error rate on checkout-api",
            "severity": "critical",
            "status": "resolved",
            "service": "checkout-api",
            "provider": "aws",
            "region": "us-east-1",
            "source": "datadog",
            "started_at": "2024-01-15T10:12:00Z",
            "resolved_at": "2024-01-15T11:03:00Z",
            "root_cause": "RDS connection pool exhausted after v2.14.0 doubled the worker count.",
            "url": f"{_APP}/incidents/inc_4f7a21",
        },
    ),
    EventType(
        type="incident.comment",
        category="incident",
        description="Comment added to incident.",
        example={
            "id": "inc_4f7a21",
            "title": "Elevated 5xx error rate on checkout-api",
            "severity": "critical",
            "status": "investigating",
            "service": "checkout-api",
            "started_at": "2024-01-15T10:12:00Z",
            "comment_id": "cmt_8c20f7",
            "author": "Daniel Okafor",
            "comment": "Rolled back checkout-api to v2.13.2; error rate dropping.",
            "url": f"{_APP}/incidents/inc_4f7a21#comment-cmt_8c20f7",
        },
    ),
    # Security events
    EventType(
        type="finding.created",
        category="security",
        description="New security finding detected.",
        example={
            "id": "fnd_3c9e12",
            "title": "S3 bucket acme-prod-backups allows public read access",
            "severity": "critical",
            "status": "open",
            "provider": "aws",
            "region": "us-east-1",
            "resource": "arn:aws:s3:::acme-prod-backups",
            "rule": "s3-bucket-public-read-prohibited",
            "detected_at": "2024-01-15T09:47:00Z",
            "url": f"{_APP}/security/findings/fnd_3c9e12",
        },
    ),
    EventType(
        type="finding.resolved",
        category="security",
        description="Security finding resolved.",
        example={
            "id": "fnd_8d2b47",
            "title": "Firewall rule allow-ssh-all permits SSH from 0.0.0.0/0",
            "severity": "high",
            "status": "resolved",
            "provider": "gcp",
            "region": "global",
            "resource": "projects/acme-prod/global/firewalls/allow-ssh-all",
            "rule": "CIS GCP 3.6: SSH access is restricted from the internet",
            "detected_at": "2024-01-12T16:20:00Z",
            "resolved_at": "2024-01-15T08:31:00Z",
            "url": f"{_APP}/security/findings/fnd_8d2b47",
        },
    ),
    EventType(
        type="compliance.changed",
        category="security",
        description="Compliance status changed.",
        example={
            "id": "cmp_2e6d90",
            "title": "CIS Microsoft Azure Foundations Benchmark 2.0.0 is now non-compliant",
            "framework": "CIS Microsoft Azure Foundations Benchmark 2.0.0",
            "provider": "azure",
            "scope": "/subscriptions/6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
            "status": "non_compliant",
            "previous_status": "compliant",
            "score": 87.5,
            "previous_score": 92.3,
            "failed_controls": 6,
            "evaluated_at": "2024-01-15T06:00:00Z",
            "url": f"{_APP}/security/compliance/cmp_2e6d90",
        },
    ),
    # Task events
    EventType(
        type="task.started",
        category="task",
        description="Scheduled task began execution.",
        example={
            "id": "task_6b1d84",
            "run_id": "run_a93f0c",
            "title": "Nightly EC2 right-sizing scan (us-east-1)",
            "status": "running",
            "agent": "cost-optimizer",
            "schedule": "0 2 * * *",
            "timezone": "UTC",
            "started_at": "2024-01-15T02:00:03Z",
            "duration_seconds": None,
            "url": f"{_APP}/tasks/task_6b1d84/runs/run_a93f0c",
        },
    ),
    EventType(
        type="task.completed",
        category="task",
        description="Task finished successfully.",
        example={
            "id": "task_6b1d84",
            "run_id": "run_a93f0c",
            "title": "Nightly EC2 right-sizing scan (us-east-1)",
            "status": "completed",
            "agent": "cost-optimizer",
            "schedule": "0 2 * * *",
            "timezone": "UTC",
            "started_at": "2024-01-15T02:00:03Z",
            "completed_at": "2024-01-15T02:04:41Z",
            "duration_seconds": 278,
            "summary": "Analyzed 214 EC2 instances; created 9 right-sizing recommendations.",
            "url": f"{_APP}/tasks/task_6b1d84/runs/run_a93f0c",
        },
    ),
    EventType(
        type="task.failed",
        category="task",
        description="Task encountered an error.",
        example={
            "id": "task_2f7c33",
            "run_id": "run_d1e845",
            "title": "Weekly AWS cost anomaly report",
            "status": "failed",
            "agent": "cost-optimizer",
            "schedule": "0 8 * * MON",
            "timezone": "UTC",
            "started_at": "2024-01-15T08:00:02Z",
            "failed_at": "2024-01-15T08:00:19Z",
            "duration_seconds": 17,
            "error": (
                f"AccessDeniedException: arn:aws:sts::{_ACCOUNT}:assumed-role/"
                "CloudThinkerReadOnly/ct-session is not authorized to perform "
                "ce:GetCostAndUsage"
            ),
            "url": f"{_APP}/tasks/task_2f7c33/runs/run_d1e845",
        },
    ),
    # Agent events
    EventType(
        type="conversation.completed",
        category="agent",
        description="Agent conversation finished.",
        example={
            "id": "conv_1d7e55",
            "title": "Investigate checkout-api latency spike",
            "agent": "sre-agent",
            "started_by": "maya.chen@example.com",
            "status": "completed",
            "message_count": 14,
            "started_at": "2024-01-15T10:20:00Z",
            "completed_at": "2024-01-15T10:41:30Z",
            "duration_seconds": 1290,
            "summary": "p99 latency tracked RDS connection waits; advised raising max_connections.",
            "url": f"{_APP}/conversations/conv_1d7e55",
        },
    ),
    EventType(
        type="approval.requested",
        category="agent",
        description="Agent requests approval for action.",
        example={
            **_APPROVAL,
            "conversation_id": "conv_6a3f90",
            "status": "pending",
            "requested_at": "2024-01-15T12:30:00Z",
            "expires_at": "2024-01-16T12:30:00Z",
            "url": f"{_APP}/approvals/apr_8e4b12",
        },
    ),
    EventType(
        type="approval.granted",
        category="agent",
        description="User approved agent action.",
        example={
            **_APPROVAL,
            "approved_by": "daniel.okafor@example.com",
            "conversation_id": "conv_6a3f90",
            "status": "approved",
            "requested_at": "2024-01-15T12:30:00Z",
            "approved_at": "2024-01-15T12:42:10Z",
            "url": f"{_APP}/approvals/apr_8e4b12",
        },
    ),
    # Resource events
    EventType(
        type="resource.discovered",
        category="resource",
        description="New cloud resource found.",
        example={
            "id": "res_7a2c19",
            "title": "New RDS instance orders-db-replica-2",
            "provider": "aws",
            "region": "eu-west-1",
            "resource_type": "AWS::RDS::DBInstance",
            "resource": f"arn:aws:rds:eu-west-1:{_ACCOUNT}:db:orders-db-replica-2",
            "tags": {"env": "prod", "team": "orders"},
            "discovered_at": "2024-01-15T07:15:00Z",
            "url": f"{_APP}/resources/res_7a2c19",
        },
    ),
    EventType(
        type="resource.changed",
        category="resource",
        description="Resource configuration changed.",
        example={
            "id": "res_0e5b63",
            "title": "EC2 instance i-0abc123 configuration changed",
            "provider": "aws",
            "region": "us-east-1",
            "resource_type": "AWS::EC2::Instance",
            "resource": f"arn:aws:ec2:us-east-1:{_ACCOUNT}:instance/i-0abc123",
            "changes": [
                {"field": "instance_type", "from": "m5.2xlarge", "to": "m5.xlarge"},
                {"field": "tags.cost-center", "from": None, "to": "cc-1042"},
            ],
            "changed_at": "2024-01-16T14:03:12Z",
            "url": f"{_APP}/resources/res_0e5b63",
        },
    ),
    EventType(
        type="resource.deleted",
        category="resource",
        description="Resource no longer exists.",
        example={
            "id": "res_4d8f27",
            "title": "EBS volume vol-0d4e5f6a7b8c9d0e1 deleted",
            "provider": "aws",
            "region": "us-east-1",
            "resource_type": "AWS::EC2::Volume",
            "resource": f"arn:aws:ec2:us-east-1:{_ACCOUNT}:volume/vol-0d4e5f6a7b8c9d0e1",
            "last_seen_at": "2024-01-15T18:00:00Z",
            "deleted_at": "2024-01-15T18:22:47Z",
            "url": f"{_APP}/resources/res_4d8f27",
        },
    ),
)

BY_TYPE: dict[str, EventType] = {event.type: event for event in CATALOG}

_CATEGORY_KEYS = frozenset(key for key, _label in CATEGORIES)
# Name prefix ("finding") -> category key ("security"), so future types of a known family match.
_PREFIX_CATEGORY: dict[str, str] = {
    event.type.split(".", 1)[0]: event.category for event in CATALOG
}


def get(event_type: str) -> EventType | None:
    """The catalog entry for `event_type`, or None when it is not in the catalog."""
    return BY_TYPE.get(event_type)


def category_of(event_type: str) -> str | None:
    """The category key of a catalog type, or None when it is not in the catalog."""
    event = BY_TYPE.get(event_type)
    return event.category if event is not None else None


def matches(pattern: str, event_type: str) -> bool:
    """Whether a subscription pattern (`*`, `X.*` or an exact type) covers `event_type`."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        prefix = pattern[:-2]
        if not prefix:
            return False
        if event_type.startswith(prefix + "."):
            return True
        category = category_of(event_type)
        if category is None:
            category = _PREFIX_CATEGORY.get(event_type.split(".", 1)[0])
        return category == prefix
    return pattern == event_type


def is_valid_pattern(pattern: str) -> bool:
    """Whether `pattern` is `*`, `X.*` (X a category or a catalog prefix) or a catalog type."""
    if not isinstance(pattern, str):
        return False
    if pattern == "*" or pattern in BY_TYPE:
        return True
    if pattern.endswith(".*"):
        prefix = pattern[:-2]
        if not prefix:
            return False
        return prefix in _CATEGORY_KEYS or any(
            event.type.startswith(prefix + ".") for event in CATALOG
        )
    return False


def types_in_category(category: str) -> list[EventType]:
    """The catalog entries of one category key, in catalog order."""
    return [event for event in CATALOG if event.category == category]


def families(category: str) -> list[str]:
    """The name prefixes of a category's types that are not the category's own key, in
    catalog order: `security` holds `finding.*` and `compliance.*`, `incident` none."""
    prefixes = dict.fromkeys(event.type.split(".", 1)[0] for event in types_in_category(category))
    return [prefix for prefix in prefixes if prefix != category]
