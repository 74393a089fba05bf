"""A worker's POST slots: a webhook's share of them, and results recorded together."""

from __future__ import annotations

import threading
import time

from jobs.runtime import Results, Sender
from tests.conftest import wait_until
from tests.receivers import Reply
from webhooks.config import Settings
from webhooks.outgoing import Prepared


class Recorded:
    """Stands in for the database write: keeps each batch the recorder hands over."""

    def __init__(self) -> None:
        self.batches: list[Results] = []
        self.lock = threading.Lock()

    def __call__(self, results: Results) -> None:
        with self.lock:
            self.batches.append(list(results))

    @property
    def results(self) -> Results:
        return [r for batch in self.batches for r in batch]


def prepared(n: int, url: str, webhook_id: str = "wh_a") -> Prepared:
    body = b'{"n": %d}' % n
    return Prepared(
        delivery_id=f"dlv_{n}",
        attempt_id=n,
        token="t",
        url=url,
        body=body,
        headers={"Content-Type": "application/json"},
        webhook_id=webhook_id,
    )


def send_all(sender: Sender, items: list[Prepared], settings: Settings) -> None:
    """Start them as a wake-up does: as many at a time as there are free slots."""
    left = list(items)
    while left:
        taken = sender.take(len(left))
        for item in left[:taken]:
            sender.start(item, settings)
        left = left[taken:]


def test_every_post_is_recorded_and_results_travel_in_batches(app, receiver):
    settings = Settings.from_config(app.config)
    recorded = Recorded()
    sender = Sender(4, recorded)
    try:
        send_all(sender, [prepared(n, receiver.url(f"/n{n}")) for n in range(40)], settings)

        assert sender.idle(timeout=30)
    finally:
        sender.close()

    assert sorted(p.attempt_id for p, _ in recorded.results) == list(range(40))
    assert all(result.status_code == 200 for _, result in recorded.results)
    assert len(recorded.batches) < 40  # several results per transaction
    assert len(receiver.requests) == 40


def test_a_hanging_target_holds_only_its_share_and_is_reported_once(app, receiver):
    settings = Settings.from_config(app.config)
    receiver.answer(Reply(status=200, delay=1.5), Reply(status=200, delay=1.5))
    recorded = Recorded()
    sender = Sender(8, recorded)
    try:
        assert sender.room("wh_dead") == 2  # a quarter of the threads
        send_all(sender, [prepared(n, receiver.url(), "wh_dead") for n in range(2)], settings)
        assert sender.room("wh_dead") == 0 and sender.room("wh_fine") == 2
        started = time.monotonic()
        wait_until(lambda: sender.hanging(0.3), 5)
        assert time.monotonic() - started < 1.5  # found while its POSTs still hang
        assert sender.hanging(0.3) == set()  # reported once, not on every job

        # The other threads still serve everyone else at once.
        send_all(sender, [prepared(9, receiver.url("/fine"), "wh_fine")], settings)
        wait_until(lambda: any(r.path == "/fine" for r in receiver.requests), 1.0)
        assert sender.idle(timeout=10)
    finally:
        sender.close()

    assert sender.room("wh_dead") == 2
    assert sorted(p.attempt_id for p, _ in recorded.results) == [0, 1, 9]


def test_a_slot_is_free_again_only_once_its_result_is_recorded(app, receiver):
    """What a killed worker repeats is bounded by its threads: answered but unrecorded POSTs
    still count against them."""
    settings = Settings.from_config(app.config)
    writing = threading.Event()
    go_on = threading.Event()
    recorded = Recorded()

    def slow_record(results: Results) -> None:
        writing.set()
        go_on.wait(10)
        recorded(results)

    sender = Sender(2, slow_record)
    try:
        send_all(sender, [prepared(n, receiver.url(f"/n{n}")) for n in range(2)], settings)
        assert writing.wait(10)
        wait_until(lambda: len(receiver.requests) == 2, 5)
        more = threading.Thread(
            target=send_all, args=(sender, [prepared(2, receiver.url("/n2"))], settings)
        )
        more.start()
        more.join(0.3)
        assert more.is_alive() and len(receiver.requests) == 2  # both slots wait for the write
        go_on.set()
        more.join(10)
        assert sender.idle(timeout=10)
    finally:
        go_on.set()
        sender.close()

    assert sorted(p.attempt_id for p, _ in recorded.results) == [0, 1, 2]


def test_a_batch_is_recorded_as_soon_as_its_last_post_ends(app, receiver, monkeypatch):
    """Results linger for more only while other POSTs are still out: a batch whose POSTs have
    all ended is recorded at once, in one transaction, and its slots are free again."""
    from jobs import runtime

    monkeypatch.setattr(runtime, "RECORD_LINGER", 5.0)
    settings = Settings.from_config(app.config)
    recorded = Recorded()
    sender = Sender(8, recorded)
    try:
        assert sender.take(8) == 8
        started = time.monotonic()
        sender.start_all([prepared(n, receiver.url(f"/n{n}")) for n in range(8)], settings)

        assert sender.idle(timeout=4)
        assert time.monotonic() - started < 2  # not after the 5 s linger
    finally:
        sender.close()

    assert [sorted(p.attempt_id for p, _ in batch) for batch in recorded.batches] == [
        list(range(8))
    ]


def test_a_batch_is_recorded_at_once_while_another_batchs_post_hangs(app, receiver, monkeypatch):
    """A target that hangs keeps a POST out all the time: the batches after it are still
    recorded as soon as their own POSTs have ended, not after the linger."""
    from jobs import runtime

    monkeypatch.setattr(runtime, "RECORD_LINGER", 5.0)
    settings = Settings.from_config(app.config)
    receiver.answer(Reply(status=200, delay=4), Reply(status=200))
    recorded = Recorded()
    sender = Sender(8, recorded)
    try:
        assert sender.take(1) == 1
        sender.start_all([prepared(0, receiver.url("/hangs"), "wh_slow")], settings)
        receiver.wait_for(1)
        assert sender.take(4) == 4
        started = time.monotonic()
        sender.start_all([prepared(n, receiver.url(f"/n{n}")) for n in range(1, 5)], settings)

        wait_until(lambda: recorded.results, 3)
        assert time.monotonic() - started < 2  # not after the 5 s linger
        assert sorted(p.attempt_id for p, _ in recorded.results) == [1, 2, 3, 4]
        assert sender.idle(timeout=10)
    finally:
        sender.close()
