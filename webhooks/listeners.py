"""CLI listeners: a webhook whose deliveries go down a `listen` command's stream instead of to
a URL, so a developer sees them on a machine the service cannot reach.

The listener's webhook is an ordinary webhook (claimed, signed, retried and logged like any
other); only the POST differs. The worker pushes each claimed attempt onto the listener's inbox
in Redis and waits, within the timeout, for the result that the command reports; the stream (a
web request) pops the inbox and writes each attempt as a Server-Sent Event.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import delete, select, update

from webhooks import signing, transport
from webhooks.config import Settings
from webhooks.ids import new_id
from webhooks.models import (
    UNLEASED,
    Attempt,
    AttemptOutcome,
    Delivery,
    DeliveryStatus,
    Listener,
    Session,
    Webhook,
    WebhookSecret,
    changed,
)

NAME = "CLI listener"
URL_SCHEME = "listener://"
# A comment line at least this often (WEBHOOK_LISTENER_HEARTBEAT_SECONDS) keeps proxies from
# closing an idle stream, and shows within as long when the command is gone (the write fails),
# freeing the web thread. A stream marks its listener live for two of these and 5 s more,
# renewed at every one.
HEARTBEAT_SECONDS = 10.0
# A listener whose stream has been gone this long closes by itself.
CLOSE_AFTER = timedelta(seconds=60)


def _inbox(listener_id: str) -> str:
    return f"webhooks:listener:{listener_id}:inbox"


def _live(listener_id: str) -> str:
    return f"webhooks:listener:{listener_id}:live"


def _result(attempt_id: int) -> str:
    return f"webhooks:listener:result:{attempt_id}"


def listener_id_of(url: str) -> str | None:
    """The listener a webhook URL stands for, or None for an ordinary URL."""
    return url[len(URL_SCHEME) :] if url.startswith(URL_SCHEME) else None


# -- the listener's life -----------------------------------------------------------------------


def create(session: Session, workspace_id: str, events: list[str]) -> tuple[Listener, str]:
    """A listener with its webhook; returns it with the webhook's secret."""
    listener = Listener(id=new_id("lst"), workspace_id=workspace_id)
    secret = signing.generate_secret()
    webhook = Webhook(
        workspace_id=workspace_id,
        name=NAME,
        url=URL_SCHEME + listener.id,
        events=events,
        headers={},
        active=True,
    )
    webhook.secrets.append(WebhookSecret(secret=secret))
    session.add(webhook)
    session.flush()
    listener.webhook_id = webhook.id
    session.add(listener)
    session.commit()
    return listener, secret


def close(session: Session, redis: Redis, listener: Listener) -> None:
    """Close a listener: its webhook and its logs go with it."""
    listener_id = listener.id
    session.execute(delete(Webhook).where(Webhook.id == listener.webhook_id))
    session.execute(delete(Listener).where(Listener.id == listener_id))
    session.commit()
    redis.delete(_inbox(listener_id), _live(listener_id))


def close_stale(session: Session, now: datetime) -> int:
    """Close the listeners whose stream has been gone for a minute: their webhook is disabled
    and its pending deliveries end `failed` with the reason. Returns how many closed."""
    stale = session.execute(
        select(Listener.id, Listener.webhook_id).where(Listener.last_seen_at < now - CLOSE_AFTER)
    ).all()
    if not stale:
        session.rollback()
        return 0
    reason = (
        f"CLI listener closed on {now:%Y-%m-%d %H:%M UTC}: its stream was gone for "
        f"{int(CLOSE_AFTER.total_seconds())} s"
    )
    webhook_ids = [row.webhook_id for row in stale]
    session.execute(
        update(Webhook)
        .where(Webhook.id.in_(webhook_ids))
        .values(active=False, disabled_reason=reason, disabled_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    # An attempt in flight gets its result first; it then falls due on an inactive webhook and
    # ends `failed` with the same reason.
    session.execute(
        update(Delivery)
        .where(Delivery.webhook_id.in_(webhook_ids), *UNLEASED)
        .values(
            status=DeliveryStatus.FAILED,
            next_attempt_at=None,
            enqueued_at=None,
            last_error=reason,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(delete(Listener).where(Listener.id.in_([row.id for row in stale])))
    session.commit()
    return len(stale)


def touch(session: Session, listener_id: str, now: datetime) -> bool:
    """Note that the listener's stream is connected; False when the listener is gone."""
    found = changed(
        session,
        update(Listener)
        .where(Listener.id == listener_id)
        .values(last_seen_at=now)
        .execution_options(synchronize_session=False),
    )
    session.commit()
    return found == 1


def connected(redis: Redis, webhook: Webhook) -> bool | None:
    """Whether a listener webhook's stream is connected; None for an ordinary webhook."""
    listener_id = listener_id_of(webhook.url)
    if listener_id is None:
        return None
    try:
        return bool(redis.exists(_live(listener_id)))
    except RedisError:
        return False


# -- the stream (web side) ---------------------------------------------------------------------


class Streams:
    """How many streams this web process serves at once: each holds one of its threads."""

    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit) if limit > 0 else None

    def take(self) -> bool:
        return self._slots is not None and self._slots.acquire(blocking=False)

    def give_back(self) -> None:
        if self._slots is not None:
            self._slots.release()


def stream_redis(url: str, heartbeat: float = HEARTBEAT_SECONDS) -> Redis:
    """A connection of the stream's own: it blocks on the inbox between heartbeats."""
    return Redis.from_url(url, socket_timeout=heartbeat + 10, socket_connect_timeout=2)


def mark_live(redis: Redis, listener_id: str, heartbeat: float = HEARTBEAT_SECONDS) -> None:
    redis.set(_live(listener_id), "1", px=int((heartbeat * 2 + 5) * 1000))


def mark_gone(redis: Redis, listener_id: str) -> None:
    redis.delete(_live(listener_id))


def next_attempt(
    session: Session, redis: Redis, listener_id: str, timeout: float
) -> dict[str, Any] | None:
    """The next attempt for the stream, as its event's data, or None after `timeout` seconds."""
    popped = redis.blpop([_inbox(listener_id)], timeout=timeout)
    if popped is None:
        return None
    message = json.loads(popped[1])
    number = session.scalar(select(Attempt.number).where(Attempt.id == message["attempt_id"]))
    session.rollback()
    return {
        "delivery_id": message["delivery_id"],
        "attempt": number,
        "headers": message["headers"],
        "body": message["body"],
    }


def sse(event: str | None, data: dict[str, Any] | None = None, comment: str = "") -> str:
    """One Server-Sent Events message (or a comment line)."""
    if event is None:
        return f": {comment}\n\n"
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def attempt_in_flight(
    session: Session, listener: Listener, delivery_id: str, number: int
) -> int | None:
    """The id of that attempt while it waits for its result, or None."""
    return session.scalar(
        select(Attempt.id)
        .join(Delivery, Delivery.id == Attempt.delivery_id)
        .where(
            Delivery.id == delivery_id,
            Delivery.webhook_id == listener.webhook_id,
            Attempt.number == number,
            Attempt.outcome == AttemptOutcome.IN_FLIGHT,
        )
    )


def report(redis: Redis, attempt_id: int, result: dict[str, Any], settings: Settings) -> None:
    """Hand the command's result of an attempt to the worker waiting for it."""
    key = _result(attempt_id)
    pipe = redis.pipeline()
    pipe.rpush(key, json.dumps(result))
    pipe.expire(key, int(settings.timeout) + 60)
    pipe.execute()


# -- the relay (worker side) -------------------------------------------------------------------

_clients: dict[str, Redis] = {}
_clients_lock = threading.Lock()


def _client(url: str) -> Redis:
    """This process's connection pool for relays (its POST threads share it)."""
    with _clients_lock:
        if url not in _clients:
            _clients[url] = Redis.from_url(url, socket_connect_timeout=2)
        return _clients[url]


def relay(
    listener_id: str,
    delivery_id: str,
    attempt_id: int,
    headers: dict[str, str],
    body: bytes,
    settings: Settings,
) -> transport.Result:
    """Hand one attempt to the listener's stream and wait for its result, within the timeout."""
    started = time.monotonic()
    redis = _client(settings.redis_url)
    if not redis.exists(_live(listener_id)):
        return transport.Result(error="listener not connected: no `listen` stream is open")
    message = {
        "delivery_id": delivery_id,
        "attempt_id": attempt_id,
        "headers": headers,
        "body": body.decode("utf-8", errors="replace"),
    }
    pipe = redis.pipeline()
    pipe.rpush(_inbox(listener_id), json.dumps(message, ensure_ascii=False))
    pipe.expire(_inbox(listener_id), int(settings.timeout) + 60)
    pipe.execute()
    got = redis.blpop([_result(attempt_id)], timeout=max(1.0, settings.timeout))
    elapsed = int((time.monotonic() - started) * 1000)
    if got is None:
        return transport.Result(
            duration_ms=elapsed,
            error=f"timed out: the listener reported no result within {settings.timeout:g} s",
        )
    return result_of(json.loads(got[1]), elapsed)


def result_of(reported: dict[str, Any], elapsed_ms: int) -> transport.Result:
    """The command's report as the result of an ordinary POST."""
    status = reported.get("status_code")
    return transport.Result(
        status_code=status,
        headers={str(k): str(v) for k, v in (reported.get("headers") or {}).items()},
        body=(reported.get("body") or "")[: transport.RESPONSE_BODY_CAP],
        duration_ms=int(reported.get("duration_ms") or elapsed_ms),
        error=reported.get("error") or (None if status is not None else "no status reported"),
    )
