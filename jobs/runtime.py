"""A worker process's POSTs in flight: a fixed number of slots, an event loop that makes the
POSTs, and one thread that records their results.

A wake-up claims only as many deliveries as there are free slots (`take`; so a claimed
delivery never waits for a slot while its lease runs) and hands them to the loop together
(`start_all`). The POSTs run on that loop (`webhooks.aiotransport`): a thread per POST in flight
cost three times the CPU, as every blocking call handed Python's lock to another thread. Work
that blocks (a transform's render, a `listen` stream, a proxied POST) runs on threads instead,
as many as the slots. Results are handed to the recorder thread in batches and recorded
together, and a slot is free again only once its result is recorded: a worker holds at most
`threads` deliveries between claim and record, so a worker killed at any moment repeats at
most that many POSTs. A webhook may hold at most a quarter of the slots, so a target that
hangs until the timeout leaves the others most of them; `hanging` tells which targets keep
POSTs waiting."""

from __future__ import annotations

import asyncio
import logging
import queue
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from webhooks import aiotransport, listeners, transport
from webhooks.config import Settings
from webhooks.outgoing import Prepared, render, send

log = logging.getLogger(__name__)

Results = list[tuple[Prepared, transport.Result]]
RecordFn = Callable[[Results], None]
# How many results the recorder writes in one transaction at most, and how long it waits for
# more after the first while POSTs of their batch are still out: each transaction costs more
# than the rows it writes. Once a batch's last POST has ended, the results go at once:
# lingering then only kept its slots from the next claim (a third of a worker's deliveries
# per second), and a target that hangs keeps POSTs of other batches out all the time.
RECORD_BATCH = 200
RECORD_LINGER = 0.005
# A webhook may hold at most 1/WEBHOOK_SHARE of the threads: what a target that hangs until the
# timeout takes from the others, until it is found and moved to the slow lane (a half left so
# few threads free that jobs were claimed in several pieces: 10 % more CPU per delivery).
WEBHOOK_SHARE = 4
# A target found hanging is reported again only after this long.
REPORT_AGAIN = 60.0


class Sender:
    def __init__(self, threads: int, record: RecordFn, owner: object = None) -> None:
        self.owner = owner
        self.threads = threads
        self.per_webhook = max(1, threads // WEBHOOK_SHARE)
        self._record = record
        # The POSTs run on one event loop; blocking work (a transform's render, a `listen`
        # stream, the proxy) on threads, as many as the slots.
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="post")
        self._client = aiotransport.Client()
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._done: Results = []  # results on the loop, not yet handed to the recorder
        self._looping = threading.Thread(
            target=self._loop.run_forever, name="post-loop", daemon=True
        )
        self._looping.start()
        self._freed = threading.Condition(threading.Lock())  # slots given back
        self._free = threads  # slots neither claimed nor holding an unrecorded result
        self._results: queue.SimpleQueue[Results | None] = queue.SimpleQueue()
        self._lock = threading.Condition()
        self._flying: dict[int, tuple[str, float]] = {}  # attempt id -> (webhook id, start)
        self._by_webhook: Counter[str] = Counter()
        self._reported: dict[str, float] = {}
        self._outstanding = 0  # POSTs started whose result is not yet recorded
        self._recorded = 0
        self._recorder = threading.Thread(target=self._record_loop, name="recorder", daemon=True)
        self._recorder.start()

    # -- slots ---------------------------------------------------------------------------------

    def take(
        self, most: int, timeout: float | None = None, *, least: int = 1, linger: float = 0.0
    ) -> int:
        """Take up to `most` free slots, waiting (up to `timeout`) for the first, then up to
        `linger` seconds more until at least `least` are taken (under a backlog a claim of
        one or two rows costs the database nearly what a full one does); how many were taken.
        What a claim does not use is given back with `release`."""
        if most <= 0:
            return 0
        with self._freed:
            if not self._freed.wait_for(lambda: self._free > 0, timeout=timeout):
                return 0
            until = time.monotonic() + linger
            want = min(least, most)
            while self._free < want and self._freed.wait(until - time.monotonic()):
                pass
            taken = min(most, self._free)
            self._free -= taken
            return taken

    def release(self, count: int) -> None:
        """Give back `count` slots at once (a batch of results recorded, a claim's unused)."""
        if count > 0:
            with self._freed:
                self._free += count
                self._freed.notify_all()

    def room(self, webhook_id: str) -> int:
        """How many more POSTs to this webhook may start now."""
        with self._lock:
            return self.per_webhook - self._by_webhook[webhook_id]

    def full(self) -> set[str]:
        """The webhooks that hold their whole share of the threads now."""
        with self._lock:
            return {w for w, n in self._by_webhook.items() if n >= self.per_webhook}

    @property
    def recorded(self) -> int:
        """How many results have been recorded so far (see `wait_recorded`)."""
        return self._recorded

    def wait_recorded(self, seen: int, timeout: float) -> bool:
        """Wait until more than `seen` results have been recorded (a slot and a webhook's
        room are free again)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._recorded > seen, timeout=timeout)

    def hanging(self, after: float) -> set[str]:
        """Webhooks with a POST out for longer than `after` seconds (each reported once a
        minute at most)."""
        now = time.monotonic()
        with self._lock:
            found = {w for w, started in self._flying.values() if now - started > after}
            fresh = {w for w in found if self._reported.get(w, 0.0) < now}
            for w in fresh:
                self._reported[w] = now + REPORT_AGAIN
            return fresh

    # -- sending -------------------------------------------------------------------------------

    def start(self, prepared: Prepared, settings: Settings) -> None:
        """POST one claimed delivery (its slot was taken by `take`)."""
        self.start_all([prepared], settings)

    def start_all(self, batch: list[Prepared], settings: Settings) -> None:
        """POST claimed deliveries on the loop (their slots were taken by `take`); each result
        goes to the recorder."""
        if not batch:
            return
        now = time.monotonic()
        with self._lock:
            self._outstanding += len(batch)
            for prepared in batch:
                self._by_webhook[prepared.webhook_id] += 1
                self._flying[prepared.attempt_id] = (prepared.webhook_id, now)
        self._loop.call_soon_threadsafe(self._launch, batch, settings)

    def _launch(self, batch: list[Prepared], settings: Settings) -> None:
        left = [len(batch)]  # the batch's POSTs whose result is not yet in `_done`
        envelopes: dict[str, bytes] = {}  # one body per event for the plain ones
        # The CA bundle is looked at once a batch (replaced on disk, it is trusted from the
        # next batch on); one that cannot be read fails each POST with the reason.
        try:
            session: aiotransport.Pool | None = self._client.session(settings.ca_bundle)
        except (OSError, ssl.SSLError):
            session = None
        for prepared in batch:
            on_loop = _on_loop(prepared, settings)
            if on_loop:
                try:
                    render(prepared, envelopes)
                except Exception:  # never expected: `_post` renders again, and records why
                    log.exception("rendering %s failed unexpectedly", prepared.delivery_id)
            task = self._loop.create_task(self._send(prepared, settings, session, on_loop, left))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(
        self,
        prepared: Prepared,
        settings: Settings,
        session: aiotransport.Pool | None,
        on_loop: bool,
        left: list[int],
    ) -> None:
        try:
            if on_loop:
                result = await self._post(prepared, settings, session)
            else:  # a transform's render, a `listen` stream or the proxy: blocking work
                result = await self._loop.run_in_executor(self._pool, send, prepared, settings)
        except Exception:  # never expected; the attempt is recorded as failed and retried
            log.exception("sending %s failed unexpectedly", prepared.delivery_id)
            result = transport.Result(error="internal error while sending")
        finally:
            with self._lock:
                self._by_webhook[prepared.webhook_id] -= 1
                if self._by_webhook[prepared.webhook_id] <= 0:
                    del self._by_webhook[prepared.webhook_id]
                self._flying.pop(prepared.attempt_id, None)
        self._done.append((prepared, result))  # its slot is given back once recorded
        left[0] -= 1
        if len(self._done) >= RECORD_BATCH or not left[0]:
            self._hand_over()
        elif len(self._done) == 1:
            self._loop.call_later(RECORD_LINGER, self._hand_over)

    async def _post(
        self, prepared: Prepared, settings: Settings, session: aiotransport.Pool | None
    ) -> transport.Result:
        render(prepared)
        if prepared.render_error is not None:
            return transport.Result(error=prepared.render_error)
        return await self._client.post(
            prepared.url,
            prepared.body,
            prepared.headers,
            timeout=settings.timeout,
            ca_bundle=settings.ca_bundle,
            allowed_networks=settings.allowed_private_networks,
            allow_http=settings.allow_http,
            allowed_ports=settings.allowed_ports,
            session=session,
        )

    def _hand_over(self) -> None:
        """The results gathered on the loop go to the recorder, together."""
        if self._done:
            self._results.put(self._done)
            self._done = []

    # -- recording -----------------------------------------------------------------------------

    def _record_loop(self) -> None:
        while True:
            batch = self._results.get()
            if batch is None:
                return
            while len(batch) < RECORD_BATCH:
                try:
                    more = self._results.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._results.put(None)  # stop after this batch
                    break
                batch += more
            try:
                self._record(batch)
            except Exception:  # their leases run out and the scheduler makes them due again
                log.exception("could not record %d results", len(batch))
            finally:
                with self._lock:
                    self._outstanding -= len(batch)
                    self._recorded += len(batch)
                    self._lock.notify_all()
                self.release(len(batch))

    def idle(self, timeout: float | None = None) -> bool:
        """Wait until every POST started has ended and its result is recorded."""
        with self._lock:
            return self._lock.wait_for(lambda: self._outstanding == 0, timeout=timeout)

    def close(self) -> None:
        """Let the POSTs out end and be recorded, then stop the threads."""
        self.idle()
        asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._looping.join()
        self._loop.close()
        self._pool.shutdown(wait=True)
        self._results.put(None)
        self._recorder.join()


def _on_loop(prepared: Prepared, settings: Settings) -> bool:
    """Whether the POST runs on the loop: nothing in it blocks (a plain envelope, no proxy, a
    URL and not a `listen` stream)."""
    later = prepared.later
    return (
        settings.proxy_url is None
        and (later is None or later.webhook.transform is None)
        and listeners.listener_id_of(prepared.url) is None
    )


# One per worker process: its threads and connections are the process's, like its database
# pool; a new one replaces it only when another app (a test's) asks.
_sender: Sender | None = None
_made = threading.Lock()


def sender(threads: int, record: RecordFn, owner: object) -> Sender:
    """This process's sender for `owner` (the app), made on first use."""
    global _sender
    with _made:
        if _sender is not None and _sender.owner is not owner:
            _sender.close()
            _sender = None
        if _sender is None:
            _sender = Sender(threads, record, owner)
        return _sender


_last_claim = 0.0


def pace(gap: float) -> None:
    """Wait until `gap` seconds have passed since this process's previous claim (called by
    the one thread that claims)."""
    global _last_claim
    wait = _last_claim + gap - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    _last_claim = time.monotonic()


def wait_idle(timeout: float | None = None) -> bool:
    """Wait until this process's POSTs have all ended and been recorded."""
    return _sender.idle(timeout) if _sender is not None else True
