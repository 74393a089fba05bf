"""Configuration from the environment: every variable, its default and its check, in one place."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class ConfigError(ValueError):
    """A configuration variable has a value the service cannot use."""


def _decimal(name: str, raw: str, *, minimum: float = 0.0) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value != value or value < minimum:  # NaN or below the floor
        raise ConfigError(f"{name} must be a number >= {minimum:g}, got {raw!r}")
    return value


def _heartbeat(name: str, raw: str) -> float:
    """API.md: a listener's stream sends a comment line at least every 15 s."""
    value = _decimal(name, raw, minimum=0.1)
    if value > 15:
        raise ConfigError(f"{name} must be at most 15 (seconds), got {raw!r}")
    return value


def _integer(name: str, raw: str, *, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {raw!r}")
    return value


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0, got {raw!r}")


def _schedule(name: str, raw: str) -> tuple[float, ...]:
    parts = [p.strip() for p in raw.split(",")]
    if not parts or any(p == "" for p in parts):
        raise ConfigError(f"{name} must be comma-separated seconds like 0,60,300, got {raw!r}")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(
                f"{name} must be comma-separated seconds like 0,60,300, got {raw!r}"
            ) from None
        if value != value or value < 0:
            raise ConfigError(f"{name} delays must be >= 0, got {part!r} in {raw!r}")
        values.append(value)
    return tuple(values)


def _networks(name: str, raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"{name} must list CIDRs like 10.0.0.0/8, got {part!r}") from None
    return tuple(nets)


def _ips(name: str, raw: str) -> tuple[str, ...]:
    ips = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            ips.append(str(ipaddress.ip_network(part, strict=False)).removesuffix("/32"))
        except ValueError:
            raise ConfigError(f"{name} must list IP addresses, got {part!r}") from None
    return tuple(ips)


def _url(schemes: tuple[str, ...]) -> Callable[[str, str], str | None]:
    def parse(name: str, raw: str) -> str | None:
        raw = raw.strip()
        if not raw:
            return None
        if not raw.startswith(tuple(f"{s}://" for s in schemes)):
            raise ConfigError(f"{name} must start with {' or '.join(schemes)}://, got {raw!r}")
        return raw

    return parse


def _ports(name: str, raw: str) -> tuple[tuple[int, int], ...]:
    """Ports and ranges like `443,1024-65535`, as (first, last) pairs."""
    ranges = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            low = high = -1
        if not 1 <= low <= high <= 65535:
            raise ConfigError(
                f"{name} must list ports and ranges from 1 to 65535 like 443,1024-65535, "
                f"got {part!r} in {raw!r}"
            )
        ranges.append((low, high))
    if not ranges:
        raise ConfigError(f"{name} must list at least one port, like 443,1024-65535")
    return tuple(ranges)


def _proxy_url(name: str, raw: str) -> str | None:
    # A SOCKS proxy resolves the name again itself (socks5h) or is handed it by urllib3's SOCKS
    # classes, which bypass the checked-address pinning: only a CONNECT proxy keeps it.
    if raw.strip().lower().startswith("socks"):
        scheme = raw.strip().partition(":")[0]
        raise ConfigError(
            f"{name} must be an http:// or https:// proxy that supports CONNECT; "
            f"{scheme}:// (SOCKS) proxies are not supported, got {_without_password(raw)!r}"
        )
    return _url(("http", "https"))(name, raw)


def _without_password(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.password is None:
        return raw.strip()
    netloc = f"{parts.username}:****@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


def _existing_file(name: str, raw: str) -> str | None:
    raw = raw.strip()
    if not raw:
        return None
    if not Path(raw).is_file():
        raise ConfigError(f"{name} must be a readable file, got {raw!r}")
    return raw


# Flask-Limiter's rate syntax ("100 per minute", "10/second; 1000/day"), checked here without
# importing it (with asyncio, 1.6 MB that a worker never uses); a subset of what it accepts.
_ONE_RATE = r"\s*\d+\s*(?:/|\s+per\s+)\s*(?:\d+\s*)?(?:second|minute|hour|day|month|year)s?\s*"
_RATES = re.compile(rf"^{_ONE_RATE}(?:[,;|]{_ONE_RATE})*$", re.IGNORECASE)


def _rate(name: str, raw: str) -> str:
    if not _RATES.match(raw):
        raise ConfigError(f"{name} must be a rate like '100 per minute', got {raw!r}")
    return raw.strip()


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _public_url(name: str, raw: str) -> str:
    raw = raw.strip().rstrip("/")
    if not raw:
        return f"http://127.0.0.1:{os.environ.get('PORT') or '8000'}"
    if not raw.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must start with http:// or https://, got {raw!r}")
    return raw


# The two commonest rules: a count (threads, batch rows, bytes) and a duration in seconds.
_count = partial(_integer, minimum=1)
_seconds = partial(_decimal, minimum=0.1)
_interval = partial(_decimal, minimum=0.05)  # a scan's period
_wait = partial(_decimal, minimum=1)  # before something is tried again
_days = partial(_decimal, minimum=0.001)
_megabytes = partial(_integer, minimum=16)
_redis_url = _url(("redis", "rediss", "unix"))
_smtp_url = _url(("smtp", "smtps"))


@dataclass(frozen=True)
class Var:
    name: str
    default: str
    parse: Callable[[str, str], Any]
    help: str


# The contract's variables (docs/API.md section 3), then our own tuning knobs.
VARIABLES: tuple[Var, ...] = (
    Var(
        "DATABASE_URL",
        "",
        _text,
        "any SQLAlchemy URL; default SQLite in the instance folder",
    ),
    Var(
        "REDIS_URL",
        "redis://127.0.0.1:6379/0",
        _redis_url,
        "RQ broker",
    ),
    Var(
        "SECRET_KEY",
        "",
        _text,
        "Flask sessions and CSRF; with SQLite, generated once in the instance folder when unset",
    ),
    Var(
        "REDIS_URL_PARAMS",
        "",
        _text,
        "redis-py query parameters added to REDIS_URL, for a URL a provider sets and keeps "
        "(e.g. ssl_cert_reqs=none for a self-signed certificate)",
    ),
    Var(
        "WEBHOOK_SECRETS_KEY",
        "",
        _text,
        "keys that encrypt webhook secrets at rest, newest first, comma-separated; "
        "default: derived from SECRET_KEY",
    ),
    Var(
        "WEBHOOK_RETRY_SCHEDULE",
        "0,60,300,1800,7200,28800",
        _schedule,
        "seconds before each attempt; its length is the attempt count",
    ),
    Var(
        "WEBHOOK_TIMEOUT_SECONDS",
        "30",
        _seconds,
        "whole exchange per attempt",
    ),
    Var(
        "WEBHOOK_ALLOW_HTTP",
        "0",
        _flag,
        "1 allows http:// targets (development only)",
    ),
    Var(
        "WEBHOOK_ALLOWED_PRIVATE_NETWORKS",
        "",
        _networks,
        "CIDRs exempt from the private-address block",
    ),
    Var(
        "WEBHOOK_CA_BUNDLE",
        "",
        _existing_file,
        "CA bundle trusted for target TLS",
    ),
    Var(
        "WEBHOOK_PROXY_URL",
        "",
        _proxy_url,
        "outbound CONNECT proxy (http:// or https://; SOCKS is refused)",
    ),
    Var(
        "WEBHOOK_EGRESS_IPS",
        "",
        _ips,
        "addresses shown to users for firewall allowlists",
    ),
    Var(
        "WEBHOOK_MAX_PAYLOAD_BYTES",
        "262144",
        _count,
        "largest POST /events body accepted",
    ),
    Var(
        "WEBHOOK_RETENTION_DAYS",
        "30",
        _decimal,
        "delivery logs older than this are purged",
    ),
    Var(
        "WEBHOOK_DISABLE_AFTER_HOURS",
        "120",
        _decimal,
        "auto-disable window; 0 never disables",
    ),
    Var(
        "WEBHOOK_ALLOWED_PORTS",
        "443,1024-65535",
        _ports,
        "target ports allowed (plus 80 with WEBHOOK_ALLOW_HTTP); others are refused",
    ),
    Var(
        "SMTP_URL",
        "",
        _smtp_url,
        "SMTP server for notification e-mails; credentials are sent only over TLS",
    ),
    Var(
        "NOTIFY_FROM",
        "webhooks@localhost",
        _text,
        "sender of notification e-mails",
    ),
    Var(
        "PUBLIC_URL",
        "",
        _public_url,
        "the dashboard's address in notifications; default http://127.0.0.1:$PORT",
    ),
    Var(
        "WEBHOOK_QUEUE",
        "webhooks",
        _text,
        "RQ queue name (a prefix keeps deployments apart)",
    ),
    Var(
        "WEBHOOK_WEB",
        "1",
        _flag,
        "0 leaves the dashboard and API out of this process (workers, scheduler: less memory)",
    ),
    Var(
        "WEBHOOK_SCHEDULER_INTERVAL",
        "0.5",
        _interval,
        "seconds between scans for due retries",
    ),
    Var(
        "WEBHOOK_RECONCILE_INTERVAL",
        "5",
        _seconds,
        "seconds between scans for lost jobs and expired leases (at most 30)",
    ),
    Var(
        "WEBHOOK_REQUEUE_AFTER_SECONDS",
        "30",
        _wait,
        "a due delivery queued this long ago without being claimed is queued again",
    ),
    Var(
        "WEBHOOK_LEASE_MARGIN_SECONDS",
        "5",
        _decimal,
        "a claim lasts the timeout plus this margin",
    ),
    Var(
        "WEBHOOK_MAX_WEBHOOKS",
        "100",
        _integer,
        "webhooks per workspace; one more answers 403 quota_exceeded (0: no limit)",
    ),
    Var(
        "WEBHOOK_MAX_API_KEYS",
        "20",
        _integer,
        "unrevoked API keys per workspace; one more answers 403 quota_exceeded (0: no limit)",
    ),
    Var(
        "WEBHOOK_API_RATE_LIMIT",
        "1200 per minute",
        _rate,
        "requests per workspace, all its keys together (Flask-Limiter syntax, e.g. 100 per second)",
    ),
    Var(
        "WEBHOOK_DASHBOARD_RATE_LIMIT",
        "60 per minute",
        _rate,
        "body previews, and test events, each per signed-in person (Flask-Limiter syntax)",
    ),
    Var(
        "WEBHOOK_NOTIFY_TEST_RATE_LIMIT",
        "3 per minute; 20 per hour",
        _rate,
        "test notifications per signed-in person (each goes to every saved address)",
    ),
    Var(
        "WEBHOOK_LOGIN_RATE_LIMIT",
        "10 per minute",
        _rate,
        "sign-in attempts per address",
    ),
    Var(
        "WEBHOOK_LOGIN_ACCOUNT_RATE_LIMIT",
        "10 per 15 minutes",
        _rate,
        "wrong passwords per account, from any address; beyond it even the right one waits",
    ),
    Var(
        "WEBHOOK_INVITE_DAYS",
        "7",
        _days,
        "days an invitation link from Settings › Users stays usable (once)",
    ),
    Var(
        "WEBHOOK_TRUSTED_PROXIES",
        "",
        _networks,
        "CIDRs of the proxies whose X-Forwarded-For names the client; empty: the socket's peer",
    ),
    Var(
        "WEBHOOK_FORCE_HTTPS",
        "0",
        _flag,
        "1 marks session cookies Secure and sends HSTS on every answer (TLS ends at a proxy)",
    ),
    Var(
        "METRICS_ENABLED",
        "1",
        _flag,
        "0 turns GET /metrics off (it answers 404)",
    ),
    Var(
        "METRICS_TOKEN",
        "",
        _text,
        "when set, GET /metrics asks for `Authorization: Bearer <token>`; empty: open",
    ),
    Var(
        "WEBHOOK_NOTIFY_INTERVAL_SECONDS",
        "3600",
        _decimal,
        "at most one 'deliveries exhausted' message per webhook this often; the rest are summed up",
    ),
    Var(
        "WEBHOOK_NOTIFY_RESEND_SECONDS",
        "60",
        _wait,
        "a notification not sent this long after it was written (or tried) is tried again, 3 tries",
    ),
    Var(
        "WEBHOOK_RETENTION_INTERVAL",
        "300",
        _seconds,
        "seconds between the scheduler's retention passes",
    ),
    Var(
        "WEBHOOK_BATCH_SIZE",
        "50",
        _count,
        "deliveries one worker job claims, sends and records together",
    ),
    Var(
        "WEBHOOK_WORKER_THREADS",
        "48",
        _count,
        "POSTs one worker process keeps in flight at once",
    ),
    Var(
        "WEBHOOK_RENDER_PROCESSES",
        "2",
        _count,
        "child processes that render transforms, per process that renders (started on first use)",
    ),
    Var(
        "WEBHOOK_RENDER_MEMORY_MB",
        "64",
        _megabytes,
        "MiB of memory one transform render may use (RLIMIT_AS above the child's baseline)",
    ),
    Var(
        "WEBHOOK_RENDER_CPU_SECONDS",
        "1",
        _seconds,
        "seconds of CPU one transform render may use",
    ),
    Var(
        "WEBHOOK_SLOW_AFTER_SECONDS",
        "2",
        _seconds,
        "a target that keeps a POST waiting this long moves to the slow lane for 10 minutes",
    ),
    Var(
        "WEBHOOK_SQLITE_BUSY_TIMEOUT",
        "30",
        _decimal,
        "seconds SQLite waits for a lock",
    ),
    Var(
        "WEBHOOK_LISTENER_STREAMS",
        "2",
        _integer,
        "`listen` streams one web process serves at once (each holds one of its threads)",
    ),
    Var(
        "WEBHOOK_LISTENER_HEARTBEAT_SECONDS",
        "10",
        _heartbeat,
        "seconds between the comment lines of an idle `listen` stream (at most 15)",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The settings the domain needs, built once per app from the Flask config, whose
    defaults are in `VARIABLES` (see `webhooks.services`)."""

    retry_schedule: tuple[float, ...]
    timeout: float
    allow_http: bool
    allowed_private_networks: tuple[Any, ...]
    ca_bundle: str | None
    proxy_url: str | None
    lease_margin: float
    requeue_after: float
    queue: str
    # Failure handling: notifications, auto-disable, retention.
    disable_after_hours: float
    notify_interval: float
    notify_resend: float
    public_url: str
    smtp_url: str | None
    notify_from: str
    retention_days: float
    retention_interval: float
    # Worker tuning (defaults chosen by bench/).
    batch_size: int
    worker_threads: int
    slow_after: float
    # Quotas per workspace (0: no limit).
    max_webhooks: int
    max_api_keys: int
    # Users: how long an invitation link lasts; links are https behind a TLS proxy.
    invite_days: float
    force_https: bool
    # The API and the web process: body cap, addresses shown, proxies trusted, /metrics, the
    # `listen` streams.
    max_payload_bytes: int
    egress_ips: tuple[Any, ...]
    trusted_proxies: tuple[Any, ...]
    metrics_enabled: bool
    metrics_token: str
    listener_streams: int
    listener_heartbeat: float
    # Egress: target ports allowed, as (first, last) ranges.
    allowed_ports: tuple[tuple[int, int], ...]
    redis_url: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        return cls(
            retry_schedule=config["WEBHOOK_RETRY_SCHEDULE"],
            timeout=config["WEBHOOK_TIMEOUT_SECONDS"],
            allow_http=config["WEBHOOK_ALLOW_HTTP"],
            allowed_private_networks=config["WEBHOOK_ALLOWED_PRIVATE_NETWORKS"],
            ca_bundle=config["WEBHOOK_CA_BUNDLE"],
            proxy_url=config["WEBHOOK_PROXY_URL"],
            lease_margin=config["WEBHOOK_LEASE_MARGIN_SECONDS"],
            requeue_after=config["WEBHOOK_REQUEUE_AFTER_SECONDS"],
            queue=config["WEBHOOK_QUEUE"],
            disable_after_hours=config["WEBHOOK_DISABLE_AFTER_HOURS"],
            notify_interval=config["WEBHOOK_NOTIFY_INTERVAL_SECONDS"],
            notify_resend=config["WEBHOOK_NOTIFY_RESEND_SECONDS"],
            public_url=config["PUBLIC_URL"],
            smtp_url=config["SMTP_URL"],
            notify_from=config["NOTIFY_FROM"],
            retention_days=config["WEBHOOK_RETENTION_DAYS"],
            retention_interval=config["WEBHOOK_RETENTION_INTERVAL"],
            batch_size=config["WEBHOOK_BATCH_SIZE"],
            worker_threads=config["WEBHOOK_WORKER_THREADS"],
            slow_after=config["WEBHOOK_SLOW_AFTER_SECONDS"],
            max_webhooks=config["WEBHOOK_MAX_WEBHOOKS"],
            max_api_keys=config["WEBHOOK_MAX_API_KEYS"],
            invite_days=config["WEBHOOK_INVITE_DAYS"],
            force_https=config["WEBHOOK_FORCE_HTTPS"],
            max_payload_bytes=config["WEBHOOK_MAX_PAYLOAD_BYTES"],
            egress_ips=tuple(config["WEBHOOK_EGRESS_IPS"]),
            trusted_proxies=tuple(config["WEBHOOK_TRUSTED_PROXIES"]),
            metrics_enabled=config["METRICS_ENABLED"],
            metrics_token=config["METRICS_TOKEN"],
            listener_streams=config["WEBHOOK_LISTENER_STREAMS"],
            listener_heartbeat=config["WEBHOOK_LISTENER_HEARTBEAT_SECONDS"],
            allowed_ports=config["WEBHOOK_ALLOWED_PORTS"],
            redis_url=config["REDIS_URL"],
        )

    @property
    def max_attempts(self) -> int:
        return len(self.retry_schedule)


def load(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Parse every variable from `environ` (then `overrides`, which are raw strings or values)."""
    overrides = dict(overrides or {})
    values: dict[str, Any] = {}
    for var in VARIABLES:
        if var.name in overrides and not isinstance(overrides[var.name], str):
            values[var.name] = overrides.pop(var.name)
            continue
        raw = overrides.pop(var.name, None)
        if raw is None:
            raw = environ.get(var.name, var.default)
        values[var.name] = var.parse(var.name, raw)
    values.update(overrides)
    return values


def require_secret_key(values: Mapping[str, Any]) -> None:
    """A database other than SQLite may be shared by hosts: each must be given the same key."""
    url = values["DATABASE_URL"].strip()
    if url and not url.startswith("sqlite") and not values["SECRET_KEY"]:
        raise ConfigError(
            "SECRET_KEY must be set when DATABASE_URL is not SQLite (every host needs the same key)"
        )


def database_url(raw: str, instance_path: str) -> str:
    """The SQLAlchemy URL to use, with psycopg 3 as the PostgreSQL driver."""
    if not raw:
        return f"sqlite:///{Path(instance_path) / 'webhooks.db'}"
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix) :]
    return raw


def instance_secret_key(instance_path: str) -> str:
    """The development secret key kept in the instance folder, made on first use."""
    path = Path(instance_path) / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".secret_key.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
        try:
            os.link(tmp, path)  # atomic: when processes start together, the first one wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
