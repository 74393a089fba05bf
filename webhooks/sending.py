"""A worker process's POSTs in flight: a fixed set of threads, and a slot per thread.

A job claims only as many deliveries as there are free slots, so a claimed delivery never
waits for a thread while its lease runs. A POST that is still waiting after `slow_after`
seconds is left to finish on its thread (its result is recorded there) and the job moves on:
a target that hangs holds one thread for the timeout, never the worker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from webhooks import transport
from webhooks.config import Settings
from webhooks.delivery import Prepared, send


@dataclass
class Sent:
    """What a job's POSTs came to: results in hand, and the ones still waiting."""

    done: list[tuple[Prepared, transport.Result]]
    waiting: list[tuple[Prepared, Future[transport.Result]]]


class Sender:
    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="post")
        self._slots = threading.BoundedSemaphore(threads)
        self._late = 0  # results of waiting POSTs not yet recorded
        self._late_done = threading.Condition()

    def chunks(self, ids: Sequence[str]) -> Iterator[list[str]]:
        """`ids` in pieces that fit the free slots, each piece once its slots are taken; what
        a piece does not use must be given back with `release`."""
        for start in range(0, len(ids), self.threads):
            piece = list(ids[start : start + self.threads])
            for _ in piece:
                self._slots.acquire()
            yield piece

    def release(self, count: int) -> None:
        for _ in range(count):
            self._slots.release()

    def start(self, prepared: Prepared, settings: Settings) -> Future[transport.Result]:
        """POST on a thread; the delivery's slot (taken by `chunks`) is freed when it ends."""

        def run() -> transport.Result:
            try:
                return send(prepared, settings)
            finally:
                self._slots.release()

        return self._pool.submit(run)

    def collect(
        self, started: list[tuple[Prepared, Future[transport.Result]]], patience: float
    ) -> Sent:
        """Wait up to `patience` seconds for the POSTs; sort them into done and waiting."""
        wait([f for _, f in started], timeout=patience)
        return Sent(
            done=[(p, f.result()) for p, f in started if f.done()],
            waiting=[(p, f) for p, f in started if not f.done()],
        )

    def later(
        self, future: Future[transport.Result], then: Callable[[transport.Result], None]
    ) -> None:
        """Call `then(result)` on the POST's thread once it ends (to record it there)."""
        with self._late_done:
            self._late += 1

        def finish(f: Future[transport.Result]) -> None:
            try:
                then(f.result())
            finally:
                with self._late_done:
                    self._late -= 1
                    self._late_done.notify_all()

        future.add_done_callback(finish)

    def idle(self, timeout: float | None = None) -> bool:
        """Wait until no POST is in flight and every result is recorded; False on timeout."""
        taken = 0
        try:
            for _ in range(self.threads):
                if not self._slots.acquire(timeout=timeout):
                    return False
                taken += 1
        finally:
            self.release(taken)
        with self._late_done:
            return self._late_done.wait_for(lambda: self._late == 0, timeout=timeout)


_sender: Sender | None = None
_lock = threading.Lock()


def sender(threads: int) -> Sender:
    """This process's sender (made on first use)."""
    global _sender
    with _lock:
        if _sender is None:
            _sender = Sender(threads)
        return _sender


def wait_idle(timeout: float | None = None) -> bool:
    """Wait until this process's POSTs have all ended and been recorded."""
    return _sender.idle(timeout) if _sender is not None else True
