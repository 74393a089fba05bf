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
from tests.receivers import Receiver
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


class Api:
    """The test client speaking JSON with a workspace's key."""

    def __init__(self, client: Any, key: str) -> None:
        self.client, self.key = client, key

    def _call(self, method: str, path: str, body: Any = None, headers: dict | None = None):  # type: ignore[no-untyped-def]
        all_headers = {"Authorization": f"Bearer {self.key}", **(headers or {})}
        kwargs: dict[str, Any] = {"headers": all_headers}
        if body is not None:
            kwargs["json"] = body
        return getattr(self.client, method)(f"/api/v1{path}", **kwargs)

    def get(self, path: str, **kw: Any):  # type: ignore[no-untyped-def]
        return self._call("get", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any):  # type: ignore[no-untyped-def]
        return self._call("post", path, body, **kw)

    def patch(self, path: str, body: Any = None, **kw: Any):  # type: ignore[no-untyped-def]
        return self._call("patch", path, body, **kw)

    def delete(self, path: str, **kw: Any):  # type: ignore[no-untyped-def]
        return self._call("delete", path, **kw)


@pytest.fixture
def api(client, workspace) -> Api:  # type: ignore[no-untyped-def]
    return Api(client, workspace["key"])


@pytest.fixture
def receiver(tls_context) -> Iterator[Receiver]:  # type: ignore[no-untyped-def]
    """An HTTPS receiver on loopback with a certificate from the test CA."""
    server = Receiver(tls=tls_context)
    yield server
    server.close()


@pytest.fixture
def webhook(api, receiver) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """An active webhook subscribed to every event, pointing at the receiver."""
    response = api.post("/webhooks", {"name": "Ops", "url": receiver.url(), "events": ["*"]})
    assert response.status_code == 201, response.json
    return response.json


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

    def run_until(self, condition: Callable[[], Any], timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.tick()
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            time.sleep(0.05)


@pytest.fixture
def web(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The app served by a real threaded HTTP server (listener streams need one)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def service(app) -> Service:  # type: ignore[no-untyped-def]
    return Service(app)


@pytest.fixture
def user(app, workspace):  # type: ignore[no-untyped-def]
    """A dashboard user of the workspace, signed in through /login."""
    from tests.session import Session
    from webhooks import accounts

    with app.app_context():
        accounts.create_user(db.session, "ops@acme.test", "correct horse", workspace["id"])
    session = Session(app.test_client())
    assert session.login("ops@acme.test", "correct horse").status_code == 302
    return session
