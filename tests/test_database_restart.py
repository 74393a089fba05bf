"""PostgreSQL restarted in the middle of a run: the service carries on and loses nothing."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.conftest import wait_until
from webhooks.models import db

BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
pytestmark = pytest.mark.skipif(
    not os.environ.get("TEST_DATABASE_URL") or not BINARIES,
    reason="runs in the PostgreSQL pass, with PostgreSQL's server binaries installed",
)


class Cluster:
    """A throwaway PostgreSQL cluster on a spare port, owned by the postgres user."""

    def __init__(self) -> None:
        self.bin = BINARIES[-1]
        # pytest's own temporary folders are private to root; the server runs as postgres.
        self.directory = tempfile.mkdtemp(prefix="webhooks-pg-")
        os.chmod(self.directory, 0o755)
        self.data = os.path.join(self.directory, "pgdata")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/webhooks"
        os.makedirs(self.data)
        shutil.chown(self.data, "postgres", "postgres")
        self._pg("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")

    def _pg(self, tool: str, *args: str) -> None:
        command = [f"{self.bin}/{tool}", *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        # The server keeps its inherited output open: send it nowhere, or run() never returns.
        subprocess.run(
            command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120
        )

    def ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = os.path.join(self.data, "server.log")
        self._pg("pg_ctl", action, "-D", self.data, "-l", log, "-w", "-m", "fast", "-o", options)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    pg = Cluster()
    pg.ctl("start")
    admin = sa.create_engine(pg.url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("CREATE DATABASE webhooks")
    admin.dispose()
    engine = sa.create_engine(pg.url)
    db.metadata.create_all(engine)
    engine.dispose()
    yield pg
    pg.ctl("stop")
    shutil.rmtree(pg.directory, ignore_errors=True)


@pytest.fixture
def restart_config(config, cluster):  # type: ignore[no-untyped-def]
    config["DATABASE_URL"] = cluster.url
    return config


def publish(api, n: int) -> None:  # type: ignore[no-untyped-def]
    """Publish like a careful producer: retry with the same Idempotency-Key until accepted."""

    def accepted() -> bool:
        try:
            answer = api.post(
                "/events",
                {"type": "incident.updated", "data": {"n": n}},
                headers={"Idempotency-Key": f"evt-{n}"},
            )
        except sa.exc.OperationalError:
            return False
        return answer.status_code in (200, 202)

    wait_until(accepted, 30)


def test_database_restart_mid_run_loses_no_delivery(
    restart_config, cluster, api, webhook, receiver, running
):
    try:
        for n in range(20):
            publish(api, n)
        cluster.ctl("restart")  # in the middle of the run
        for n in range(20, 40):
            publish(api, n)
        receiver.wait_for(40, timeout=90)
        wait_until(lambda: not api.deliveries(status="pending"), 60)
    finally:
        running.stop_all()

    per_event = Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert len(per_event) == 40  # every event arrived
    assert sum(n - 1 for n in per_event.values()) <= 2  # at most the attempts the restart cut
    assert len(api.deliveries(status="succeeded")) == 40
