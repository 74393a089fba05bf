"""Redis going away and coming back empty: nothing lost, nothing twice, the outage logged once."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from redis import Redis

from tests.conftest import wait_until

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")


class RedisServer:
    """A throwaway redis-server on a spare port that a test can stop and start again."""

    def __init__(self, directory) -> None:  # type: ignore[no-untyped-def]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.directory = directory
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = Redis.from_url(self.url)
        wait_until(lambda: _pings(client), 10)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


def _pings(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except OSError:
        return False
    except Exception:  # noqa: BLE001 - redis' own ConnectionError while it starts
        return False


@pytest.fixture
def own_redis(tmp_path) -> Iterator[RedisServer]:  # type: ignore[no-untyped-def]
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.stop()


@pytest.fixture
def outage_config(config, own_redis):  # type: ignore[no-untyped-def]
    config["REDIS_URL"] = own_redis.url
    return config


def test_redis_restarted_empty_loses_nothing_and_logs_once(
    outage_config, own_redis, api, webhook, receiver, running
):
    try:
        api.publish(data={"id": "inc_0"})
        receiver.wait_for(1, timeout=30)

        own_redis.stop()
        during = [api.publish(data={"id": f"inc_{i}"}) for i in range(1, 4)]  # each answered 202
        assert all(event["delivery_count"] == 1 for event in during)
        wait_until(lambda: "could not connect to Redis" in running.log("worker"), 20)
        own_redis.start()  # back, with nothing in it
        back_at = time.monotonic()

        receiver.wait_for(4, timeout=60)
        assert time.monotonic() - back_at < 60
        wait_until(lambda: not api.deliveries(status="pending"), 30)
    finally:
        running.stop_all()

    per_event = Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert len(per_event) == 4 and set(per_event.values()) == {1}
    worker_log = running.log("worker")
    assert worker_log.count("could not connect to Redis") == 1 and "Traceback" not in worker_log
    assert running.log("scheduler").count("Redis unavailable") <= 1  # once, if it noticed
