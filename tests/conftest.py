"""Fixtures: a fresh app per test on SQLite or PostgreSQL, a real Redis, real HTTPS receivers."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa
import trustme
from redis import Redis
from werkzeug.serving import make_server

from app import create_app
from jobs.worker import drain
from tests.mailbox import Mailbox
from tests.processes import Processes
from tests.receivers import Receiver, Reply
from webhooks import reconciler, services
from webhooks.config import Settings
from webhooks.models import db

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "")  # empty: SQLite per test
REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "13"))


def test_redis_url() -> str:
    """The service's Redis, on a spare database number of its own."""
    parts = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    return urlunsplit(parts._replace(path=f"/{REDIS_DB}"))


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_bundle(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def tls_context(ca: trustme.CA):  # type: ignore[no-untyped-def]
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A throwaway PostgreSQL database for this run, when TEST_DATABASE_URL names a server."""
    if not TEST_DATABASE_URL:
        yield None
        return
    from webhooks.config import database_url

    server = database_url(TEST_DATABASE_URL, "")
    name = f"webhooks_test_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(server).set(database=name).render_as_string(hide_password=False)
    engine = sa.create_engine(url)
    db.metadata.create_all(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def base_config(tmp_path: Any, ca_bundle: str, database_url: str) -> dict[str, Any]:
    return {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "REDIS_URL": test_redis_url(),
        "SECRET_KEY": "test-secret-key",
        "WEBHOOK_RETRY_SCHEDULE": "0,1,1,1,1,1",
        "WEBHOOK_TIMEOUT_SECONDS": "2",
        "WEBHOOK_CA_BUNDLE": ca_bundle,
        "WEBHOOK_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",  # the loopback receivers
        "WEBHOOK_QUEUE": "test-webhooks",
        "WEBHOOK_LEASE_MARGIN_SECONDS": "1",
        "WEBHOOK_REQUEUE_AFTER_SECONDS": "2",
        "WEBHOOK_SCHEDULER_INTERVAL": "0.1",
        "WEBHOOK_RECONCILE_INTERVAL": "0.5",
    }


@pytest.fixture
def config(tmp_path, ca_bundle, postgres_url) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The test configuration; a test may change it before asking for `app`."""
    url = postgres_url or f"sqlite:///{tmp_path / 'webhooks.db'}"
    return base_config(tmp_path, ca_bundle, url)


@pytest.fixture
def app(config, postgres_url, monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "instance"))
    application = create_app(dict(config))
    with application.app_context():
        if postgres_url:
            tables = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
            db.session.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            db.session.commit()
        else:
            db.create_all()
    redis: Redis = services.of(application).redis
    redis.flushdb()
    yield application
    redis.flushdb()
    with application.app_context():
        db.session.remove()
        db.engine.dispose()


class FakeDNS(dict):
    """Names the egress guard resolves, as `dns["hooks.test"] = ["127.0.0.1"]`; other names do
    not resolve (IP literals never reach the resolver)."""

    def __call__(self, host: str, port: int) -> list[str]:
        key = host.rstrip(".").lower()
        if key not in self:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not in the test DNS")
        value = self[key]
        return [value] if isinstance(value, str) else list(value)


@pytest.fixture
def dns() -> Iterator[FakeDNS]:
    """The egress guard's resolver seam, for the duration of a test."""
    from webhooks import egress

    fake = FakeDNS()
    with egress.resolver(fake):
        yield fake


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def workspace(app) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A workspace and its API key."""
    from webhooks import accounts

    with app.app_context():
        ws, key = accounts.create_workspace(db.session, "Acme")
        return {"id": ws.id, "key": key}


Condition = Callable[[], Any]  # for `Service.run_until` and `wait_until`: truthy once it holds


class Api:
    """The test client speaking JSON with a workspace's key, and what a producer does with it."""

    def __init__(self, client: Any, key: str) -> None:
        self.client, self.key = client, key

    def _call(
        self, method: str, path: str, body: Any = None, headers: dict | None = None, **kw: Any
    ):  # type: ignore[no-untyped-def]
        all_headers = {"Authorization": f"Bearer {self.key}", **(headers or {})}
        kwargs: dict[str, Any] = {"headers": all_headers, **kw}
        if body is not None:
            kwargs["json"] = body
        return getattr(self.client, method)(f"/api/v1{path}", **kwargs)

    def get(self, path: str, **kw: Any):  # type: ignore[no-untyped-def]
        return self._call("get", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any):  # type: ignore[no-untyped-def]
        return self._call("post", path, body, **kw)

    def patch(self, path: str, body: Any = None, **kw: Any):  # type: ignore[no-untyped-def]
        return self._call("patch", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any):  # type: ignore[no-untyped-def]
        return self._call("put", path, body, **kw)

    def delete(self, path: str, **kw: Any):  # type: ignore[no-untyped-def]
        return self._call("delete", path, **kw)

    def create_webhook(self, url: str, name: str = "Ops", **fields: Any) -> dict[str, Any]:
        """A new webhook, subscribed to every event unless `events` (or a template) says which."""
        body = {"name": name, "url": url, **fields}
        if "template" not in fields:  # a template brings its own event types
            body.setdefault("events", ["*"])
        response = self.post("/webhooks", body)
        assert response.status_code == 201, response.json
        return response.json

    def publish(
        self, event_type: str = "incident.created", data: dict | None = None, **kw: Any
    ) -> dict[str, Any]:
        """Publish an event (`kw` as for `post`, say its headers); the accepted envelope."""
        body = {"type": event_type, "data": {"id": "inc_1"} if data is None else data}
        response = self.post("/events", body, **kw)
        assert response.status_code == 202, response.json
        return response.json

    def deliveries(self, **query: Any) -> list[dict[str, Any]]:
        """The newest 100 deliveries a filter (`status`, `webhook_id`, …) shows."""
        response = self.get("/deliveries", query_string={"limit": 100, **query})
        assert response.status_code == 200, response.json
        return response.json["data"]

    def delivery(self, delivery_id: str) -> dict[str, Any]:
        """One delivery with its event and its attempts."""
        response = self.get(f"/deliveries/{delivery_id}")
        assert response.status_code == 200, response.json
        return response.json

    def delivery_of(self, event_id: str) -> dict[str, Any]:
        """The one delivery of an event, with its attempts."""
        found = self.get(f"/events/{event_id}").json["deliveries"]
        assert len(found) == 1, found
        return self.delivery(found[0]["id"])

    def ended(self, *event_ids: str) -> Condition:
        """Every delivery of these events (of the workspace, if none is named) has ended: then
        the condition's value is those deliveries, each with its attempts."""

        def check() -> list[dict[str, Any]] | None:
            if event_ids:
                found = [d for e in event_ids for d in self.get(f"/events/{e}").json["deliveries"]]
            else:
                found = self.deliveries()
            if not found or any(d["status"] == "pending" for d in found):
                return None
            return [self.delivery(d["id"]) for d in found]

        return check

    def delivery_ended(self, delivery_id: str) -> Condition:
        """The delivery has ended: then the condition's value is it, with its attempts."""

        def check() -> dict[str, Any] | None:
            found = self.delivery(delivery_id)
            return found if found["status"] != "pending" else None

        return check

    def job_done(self, job_id: str) -> Condition:
        """The bulk job has finished, done or failed: then the condition's value is the job."""

        def check() -> dict[str, Any] | None:
            job = self.get(f"/jobs/{job_id}").json
            return job if job["status"] in ("done", "failed") else None

        return check


@pytest.fixture
def api(client, workspace) -> Api:  # type: ignore[no-untyped-def]
    return Api(client, workspace["key"])


@pytest.fixture
def receivers(tls_context) -> Iterator[Callable[..., Receiver]]:  # type: ignore[no-untyped-def]
    """Makes HTTPS receivers on loopback, like `receiver`, answering as `Receiver.answer` says
    (200 unless told); all are closed after the test."""
    made: list[Receiver] = []

    def make(*replies: Reply | int) -> Receiver:
        server = Receiver(tls=tls_context)
        made.append(server)
        if replies:
            server.answer(*replies)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def receiver(receivers) -> Receiver:  # type: ignore[no-untyped-def]
    """An HTTPS receiver on loopback with a certificate from the test CA."""
    return receivers()


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    """A real SMTP server on loopback that keeps every message; a test's config points at it."""
    box = Mailbox()
    yield box
    box.close()


@pytest.fixture
def webhook(api, receiver) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """An active webhook subscribed to every event, pointing at the receiver."""
    return api.create_webhook(receiver.url())


def wait_until(condition: Condition, timeout: float, every: float = 0.1) -> Any:
    """Ask until the condition holds and return its value; fail once `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


class Service:
    """Runs the scheduler and an RQ worker in this process, in turns, until a condition holds."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.settings = Settings.from_config(app.config)

    def tick(self) -> None:
        with self.app.app_context():
            try:
                reconciler.tick(db.session, services.of(self.app).redis, self.settings, full=True)
            finally:
                db.session.remove()
            drain(self.app)

    def run_until(self, condition: Condition, timeout: float = 15.0) -> Any:
        def after_a_tick() -> Any:
            self.tick()
            return condition()

        return wait_until(after_a_tick, timeout, every=0.05)


@pytest.fixture
def web(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The app served by a real threaded HTTP server (listener streams and browsers need one)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def service(app) -> Service:  # type: ignore[no-untyped-def]
    return Service(app)


@pytest.fixture
def processes(app, config, tmp_path) -> Iterator[Processes]:  # type: ignore[no-untyped-def]
    """The Procfile's processes on the test's configuration, started by the test itself."""
    procs = Processes(config, tmp_path / "instance")
    yield procs
    procs.stop_all()


@pytest.fixture
def running(processes) -> Iterator[Processes]:  # type: ignore[no-untyped-def]
    """The real worker and scheduler, running before the test begins."""
    processes.start("worker")
    processes.start("scheduler")
    yield processes
    processes.stop_all()
    for name in ("worker", "scheduler"):  # shown by pytest only when the test failed
        print(f"--- {name} output ---\n{processes.log(name)}")


@pytest.fixture
def user(app, workspace):  # type: ignore[no-untyped-def]
    """A dashboard user of the workspace, signed in through /login."""
    from tests.session import signed_in

    return signed_in(app, "ops@acme.test", workspace["id"])
