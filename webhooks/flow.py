"""Flow control (API.md section 8): per-webhook rate limits and ordering keys.

Both are decided where deliveries become claimable, never by a worker thread that sleeps:

* **Rate limits** are decided in the claim (`Ration`). Each limited webhook keeps a GCRA
  state in its row (`rate_tat`: when its bucket of max(1, ceil(rate)) starts is full again),
  read and moved under the row's lock in the claim's transaction, so every worker on every
  host shares it. A due delivery with no start left is not claimed: it gets a start time of
  its own (`next_attempt_at`, after the last one given to a waiting delivery, `rate_horizon`)
  and `waiting = "rate_limit"`, and becomes claimable then. It holds no thread and no lease.
* **Ordering keys** are decided at publish time (`line_up`). A delivery whose key has an
  earlier unended delivery waits for it (`waiting = "order"`, `waiting_for`, not due); when a
  delivery ends, the one waiting for it becomes due (`release`). The scheduler's full pass
  frees any whose predecessor ended without doing so (`release_stale`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, select, text, update
from sqlalchemy.orm import aliased

from webhooks import pgbatch, renderpool, transforms
from webhooks.models import (
    DELIVERIES,
    WEBHOOKS,
    Delivery,
    DeliveryStatus,
    Session,
    changed,
)

log = logging.getLogger(__name__)

RATE_LIMIT = "rate_limit"  # waits for a start of the webhook's rate limit
ORDER = "order"  # waits for an earlier delivery with the same ordering key
REASONS = (RATE_LIMIT, ORDER)

MIN_RATE = 0.01
MAX_RATE = 10_000.0
MAX_ORDERING_KEY = 1000  # characters of the template
MAX_KEY = 200  # characters of a rendered key kept as it is; longer ones are kept as a digest
# A delivery waiting for its turn is not due: its next attempt is "never" until released.
PARKED = datetime(9999, 12, 31)
# How long a worker trusts what it read of webhooks' limits (a changed limit applies within 5 s).
RATES_TTL = 1.0
# The most waiting deliveries one claim gives a start time (the rest get theirs next claim).
DEFER_BATCH = 5000

_D = DELIVERIES.c
_W = WEBHOOKS.c


class FlowError(ValueError):
    """A rate limit or ordering key that cannot be used; `code` is the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- the settings

_NOT_A_RATE = "rate_limit must be a number of deliveries per second, or null for no limit"


def check_rate_limit(value: Any) -> float | None:
    """A webhook's `rate_limit` as stored: None, or a JSON number of deliveries per second in
    [0.01, 10,000] (a form reads its field with `read_rate_limit` first). Raises FlowError."""
    if value is None:
        return None
    if isinstance(value, bool | str):
        raise FlowError("invalid_rate_limit", _NOT_A_RATE)
    try:
        finite = isinstance(value, int | float) and math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise FlowError("invalid_rate_limit", _NOT_A_RATE)
    if not MIN_RATE <= value <= MAX_RATE:
        raise FlowError(
            "invalid_rate_limit",
            f"rate_limit must be from {MIN_RATE:g} to {MAX_RATE:,.0f} deliveries per second "
            "(or null for no limit)",
        )
    return float(value)


def read_rate_limit(text: str) -> Any:
    """A form's Rate limit field as the API would get it: empty is null, a decimal number is a
    number, anything else stays text (and is refused by `check_rate_limit`)."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def check_ordering_key(value: Any) -> str | None:
    """A webhook's `ordering_key` as stored: None, or a template string that compiles (in a
    render process, like a transform). Raises FlowError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise FlowError("invalid_ordering_key", "ordering_key must be a template string or null")
    if len(value) > MAX_ORDERING_KEY:
        raise FlowError(
            "invalid_ordering_key", f"ordering_key must be at most {MAX_ORDERING_KEY} characters"
        )
    try:
        renderpool.check({"ordering_key": value})
    except transforms.TransformError as exc:
        raise FlowError("invalid_ordering_key", f"ordering_key does not compile: {exc}") from None
    return value


def burst(rate: float) -> int:
    """The most starts a rate limit lets go at once (API.md section 8)."""
    return max(1, math.ceil(rate))


def bucket_size(rate: float) -> int:
    """The starts the claim lets go at once: one fewer than the burst (when that leaves one).

    The bound of API.md holds for the times attempts start at the receiver, which come after
    the claim by a delay that varies (a new TLS connection, a busy machine). Keeping one start
    of the burst in reserve keeps the bound whenever those delays differ by less than one
    interval (1 / rate); with a burst of one, the interval itself is at least a second."""
    return max(1, burst(rate) - 1)


def settings_changed(
    session: Session,
    webhook_id: str,
    *,
    rate_changed: bool,
    ordering_removed: bool,
    now: datetime,
) -> None:
    """After a webhook's limit or ordering changed (call before the webhook row is written, so
    that locks are taken in the claim's order: deliveries, then the webhook). Deliveries that
    wait for the old limit become due at once and are given start times under the new one,
    whose bucket starts full;
    with the ordering key removed, every delivery waiting for its turn goes now."""
    if rate_changed:
        session.execute(
            update(DELIVERIES)
            .where(
                _D.webhook_id == webhook_id,
                _D.waiting == RATE_LIMIT,
                _D.status == DeliveryStatus.PENDING,
            )
            .values(waiting=None, next_attempt_at=now)
        )
        # The bucket starts full under the new limit (what was spent under the old one, in
        # its own units, would hold the new one back for as long as the old one would have).
        session.execute(
            update(WEBHOOKS).where(_W.id == webhook_id).values(rate_tat=None, rate_horizon=None)
        )
    if ordering_removed:
        _let_go(session, now, _D.webhook_id == webhook_id)


def waiting_counts(session: Session, webhook_id: str | None = None) -> dict[str, int]:
    """How many pending deliveries wait, by reason (every reason present, 0 when none): of
    one webhook, or of all (the metrics gauge)."""
    query = (
        select(_D.waiting, func.count())
        .where(_D.waiting.is_not(None), _D.status == DeliveryStatus.PENDING)
        .group_by(_D.waiting)
    )
    if webhook_id is not None:
        query = query.where(_D.webhook_id == webhook_id)
    counts = dict.fromkeys(REASONS, 0)
    counts.update({reason: n for reason, n in session.execute(query) if reason in counts})
    return counts


# --------------------------------------------------------------------------- rate limits


class Rates:
    """What one worker knows of webhooks' rate limits, each read again after RATES_TTL. The
    claim reads the state itself under the row's lock; this only says which webhooks have a
    limit at all, so that claims of unlimited webhooks read nothing more."""

    def __init__(self, ttl: float = RATES_TTL) -> None:
        self.ttl = ttl
        self._known: dict[str, tuple[float | None, float]] = {}
        self._lock = threading.Lock()

    def limited(self, session: Session, webhook_ids: Collection[str]) -> set[str]:
        now = time.monotonic()
        with self._lock:
            stale = [w for w in webhook_ids if now - self._known.get(w, (None, -1e9))[1] > self.ttl]
        if stale:
            found = dict(
                session.execute(select(_W.id, _W.rate_limit).where(_W.id.in_(stale))).all()
            )
            with self._lock:
                if len(self._known) > 100_000:
                    self._known.clear()
                for w in stale:
                    self._known[w] = (found.get(w), now)
        with self._lock:
            return {w for w in webhook_ids if self._known.get(w, (None, 0))[0] is not None}


@dataclass
class _Bucket:
    rate: float
    tat: datetime  # GCRA: the theoretical arrival time, never before now
    horizon: datetime | None  # the last start time given to a waiting delivery
    interval: timedelta
    tokens: int  # starts that may begin now
    taken: int = 0
    waiters_first: bool = False  # deliveries wait with start times still to come


@dataclass
class Ration:
    """The rate limits of one claim: how many starts each limited webhook among the candidates
    has now (`room`), what the claim took (`take`), and what waits (`defer`)."""

    buckets: dict[str, _Bucket] = field(default_factory=dict)
    over: set[str] = field(default_factory=set)

    def room(self, webhook_id: str, waiting: str | None) -> int | None:
        """Starts left for a candidate of this webhook (None: no limit)."""
        bucket = self.buckets.get(webhook_id)
        if bucket is None:
            return None
        if bucket.waiters_first and waiting != RATE_LIMIT:
            return 0  # others wait for their start times: a new one goes behind them
        return bucket.tokens - bucket.taken

    def take(self, webhook_id: str) -> None:
        bucket = self.buckets.get(webhook_id)
        if bucket is not None:
            bucket.taken += 1

    def refuse(self, webhook_id: str) -> None:
        self.over.add(webhook_id)


def ration(
    session: Session, rates: Rates | None, webhook_ids: Collection[str], now: datetime
) -> Ration:
    """Lock and read the rate-limit state of the limited webhooks among `webhook_ids`."""
    out = Ration()
    if not webhook_ids:
        return out
    limited = (
        rates.limited(session, webhook_ids)
        if rates is not None
        else {
            w
            for (w,) in session.execute(
                select(_W.id).where(_W.id.in_(list(webhook_ids)), _W.rate_limit.is_not(None))
            )
        }
    )
    if not limited:
        return out
    query = (
        select(_W.id, _W.rate_limit, _W.rate_tat, _W.rate_horizon)
        .where(_W.id.in_(sorted(limited)))
        .order_by(_W.id)
    )
    if pgbatch.used_by(session):
        query = query.with_for_update(of=WEBHOOKS)
    for row in session.execute(query):
        if row.rate_limit is None:
            continue
        interval = timedelta(seconds=1.0 / row.rate_limit)
        size = bucket_size(row.rate_limit)
        tat = max(row.rate_tat or now, now)
        # Starts free now: the bucket's size less those still "owed" until tat.
        owed = (tat - now) / interval
        tokens = max(0, min(size, math.floor(size - owed + 1e-9)))
        out.buckets[row.id] = _Bucket(
            rate=row.rate_limit,
            tat=tat,
            horizon=row.rate_horizon,
            interval=interval,
            tokens=tokens,
            waiters_first=row.rate_horizon is not None and row.rate_horizon > now,
        )
    return out


def settle(session: Session, ration_: Ration, chosen: Sequence[str], now: datetime) -> int:
    """Write what the claim spent of each limited webhook's bucket, and give every due delivery
    of a webhook that ran out a start time of its own (waiting, unclaimed); how many now wait."""
    if not ration_.buckets:
        return 0
    deferred = 0
    is_pg = pgbatch.used_by(session)
    chosen_ids = set(chosen)
    for webhook_id, bucket in ration_.buckets.items():
        if not bucket.taken and webhook_id not in ration_.over:
            continue  # nothing spent, nothing waits: the state stays as it was
        tat = bucket.tat + bucket.interval * bucket.taken
        horizon = bucket.horizon
        if webhook_id in ration_.over:
            size = bucket_size(bucket.rate)
            # The next start comes when the bucket has room for one again.
            first = tat - bucket.interval * (size - 1)
            if first < now:
                first = now
            rows = _due_of(session, webhook_id, now, chosen_ids, is_pg)
            slots: list[dict[str, Any]] = []
            again = [r for r in rows if r.waiting == RATE_LIMIT]
            new = [r for r in rows if r.waiting != RATE_LIMIT]
            # Those whose start time came but found no start stay at the front of the line;
            # the others go behind every delivery already waiting.
            for index, row in enumerate(again):
                slots.append({"b_id": row.id, "b_at": first + bucket.interval * index})
            start = first + bucket.interval * len(again)
            if horizon is not None and horizon + bucket.interval > start:
                start = horizon + bucket.interval
            for index, row in enumerate(new):
                slots.append({"b_id": row.id, "b_at": start + bucket.interval * index})
            if new:
                horizon = start + bucket.interval * (len(new) - 1)
            if slots:
                _give_start_times(session, slots)
                deferred += len(slots)
        session.execute(
            update(WEBHOOKS)
            .where(_W.id == webhook_id)
            # Bookkeeping, not an edit: updated_at keeps what the user last changed.
            .values(rate_tat=tat, rate_horizon=horizon, updated_at=_W.updated_at)
        )
    return deferred


def _due_of(
    session: Session, webhook_id: str, now: datetime, chosen: set[str], is_pg: bool
) -> list[Any]:
    """The webhook's due, unleased deliveries not taken by this claim, in due order (on
    PostgreSQL, rows another claim holds are skipped: it decides about them)."""
    query = (
        select(_D.id, _D.waiting)
        .where(
            _D.webhook_id == webhook_id,
            _D.status == DeliveryStatus.PENDING,
            _D.next_attempt_at <= now,
            _D.lease_token.is_(None),
        )
        .order_by(_D.next_attempt_at, _D.id)
        .limit(DEFER_BATCH + len(chosen))
    )
    if is_pg:
        query = query.with_for_update(skip_locked=True, of=DELIVERIES)
    return [row for row in session.execute(query) if row.id not in chosen][:DEFER_BATCH]


def _give_start_times(session: Session, slots: list[dict[str, Any]]) -> None:
    session.execute(
        update(DELIVERIES)
        .where(_D.id == bindparam("b_id"))
        .values(next_attempt_at=bindparam("b_at"), waiting=RATE_LIMIT),
        slots,
    )


# --------------------------------------------------------------------------- ordering


def stored_key(value: Any) -> str:
    """A rendered ordering key as stored: text as it is, other JSON values as JSON, a long one
    as its digest."""
    key = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if len(key) > MAX_KEY:
        key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def render_keys(jobs: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """Each (ordering key template, envelope) rendered to its stored key. A constant needs no
    render; a template renders in a render process, like a transform. One that fails renders
    as the empty key (logged): its deliveries are still ordered, together."""
    keys: list[str | None] = [None] * len(jobs)
    to_render: list[int] = []
    for index, (template, _envelope) in enumerate(jobs):
        if transforms.has_markup(template):
            to_render.append(index)
        else:
            keys[index] = stored_key(template)
    if to_render:
        results = renderpool.render_many([({"k": jobs[i][0]}, jobs[i][1]) for i in to_render])
        for index, result in zip(to_render, results, strict=True):
            if isinstance(result, transforms.TransformError):
                log.warning("ordering key did not render (%s): ordered under the empty key", result)
                keys[index] = ""
            else:
                value = result.get("k") if isinstance(result, dict) else None
                keys[index] = stored_key("" if value is None else value)
    return [k or "" for k in keys]


def _lock_keys(session: Session, pairs: Iterable[tuple[str, str]]) -> None:
    """PostgreSQL: publishes of one (webhook, key) take turns until their commit, so the line
    is in commit order (SQLite has one writer at a time)."""
    if not pgbatch.used_by(session):
        return
    for webhook_id, key in sorted(set(pairs)):
        digest = hashlib.blake2b(f"{webhook_id}\0{key}".encode(), digest_size=8).digest()
        session.execute(
            text("SELECT pg_advisory_xact_lock(:k)"),
            {"k": int.from_bytes(digest, "big", signed=True)},
        )


def tails(session: Session, pairs: Collection[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The last unended delivery of each (webhook, key) line: the one nobody waits for."""
    if not pairs:
        return {}
    successor = aliased(Delivery)
    by_webhook: dict[str, set[str]] = {}
    for webhook_id, key in pairs:
        by_webhook.setdefault(webhook_id, set()).add(key)
    found: dict[tuple[str, str], str] = {}
    is_pg = pgbatch.used_by(session)
    for webhook_id, keys in by_webhook.items():
        query = select(Delivery.id, Delivery.order_key).where(
            Delivery.webhook_id == webhook_id,
            Delivery.order_key.in_(sorted(keys)),
            Delivery.status == DeliveryStatus.PENDING,
            ~exists().where(
                and_(
                    successor.waiting_for == Delivery.id,
                    successor.status == DeliveryStatus.PENDING,
                )
            ),
        )
        if is_pg:
            # A result being written for the tail waits for this publish to commit (then its
            # release sees the new delivery), or this waits for it (then the tail has ended
            # and drops out of the answer).
            query = query.with_for_update(of=DELIVERIES)
        for delivery_id, order_key in session.execute(query):
            found[(webhook_id, str(order_key))] = delivery_id  # one of `keys`, never null
    return found


def line_up(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Put fresh delivery rows (in publish order, each with its `order_key` set or None) in
    their keys' lines, before they are inserted: a row whose key has an unended delivery
    waits for the last of them."""
    ordered = [r for r in rows if r.get("order_key") is not None]
    if not ordered:
        return
    pairs = {(r["webhook_id"], r["order_key"]) for r in ordered}
    _lock_keys(session, pairs)
    last = tails(session, pairs)
    for row in ordered:
        pair = (row["webhook_id"], row["order_key"])
        before = last.get(pair)
        if before is not None:
            row["waiting"] = ORDER
            row["waiting_for"] = before
            row["next_attempt_at"] = PARKED
        last[pair] = row["id"]


def release(session: Session, ended: Collection[str], now: datetime) -> int:
    """The deliveries waiting for those in `ended` (which have just ended) become due; how
    many. Call in the transaction that ends them."""
    if not ended:
        return 0
    return _let_go(session, now, _D.waiting_for.in_(list(ended)))


def _let_go(session: Session, now: datetime, *where: Any) -> int:
    """Deliveries waiting for their turn (and matching `where`) become due now; how many."""
    result = changed(
        session,
        update(DELIVERIES)
        .where(_D.waiting == ORDER, _D.status == DeliveryStatus.PENDING, *where)
        .values(waiting=None, waiting_for=None, next_attempt_at=now, updated_at=now),
    )
    return result or 0


def release_stale(session: Session, now: datetime) -> int:
    """The scheduler's backstop: deliveries waiting for one that has ended (or is gone) without
    releasing them become due; committed. How many."""
    earlier = aliased(Delivery)
    stale = (
        select(Delivery.id)
        .where(
            Delivery.waiting == ORDER,
            Delivery.status == DeliveryStatus.PENDING,
            ~exists().where(
                and_(earlier.id == Delivery.waiting_for, earlier.status == DeliveryStatus.PENDING)
            ),
        )
        .limit(1000)
    )
    ids = list(session.scalars(stale))
    if not ids:
        session.rollback()
        return 0
    freed = _let_go(session, now, _D.id.in_(ids))
    session.commit()
    if freed:
        log.warning("released %d deliveries whose earlier delivery had ended", freed)
    return freed
