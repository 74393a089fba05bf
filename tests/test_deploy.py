"""Deploying Heroku-style: the manifest, Redis over TLS in every client, and a whole deployment
from a fresh clone as a platform makes it (release, then every Procfile process)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import sqlalchemy as sa
import trustme

from tests.conftest import TEST_DATABASE_URL, Api
from webhooks import services
from webhooks.config import VARIABLES

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = Path(__file__).resolve().parent / "schemas"
PROCESSES = ("web", "worker", "worker_slow", "scheduler")


def procfile(root: Path = ROOT) -> dict[str, str]:
    """The Procfile's process types and their commands."""
    processes = {}
    for line in (root / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            processes[name.strip()] = command.strip()
    return processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the manifest ------------------------------------------------------------------------


def test_app_json_declares_what_a_platform_needs() -> None:
    manifest = json.loads((ROOT / "app.json").read_text())
    schema = json.loads((SCHEMAS / "heroku-app.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(manifest)

    plans = {a["plan"].split(":")[0]: a.get("as") for a in manifest["addons"]}
    assert plans == {"heroku-postgresql": "DATABASE", "heroku-redis": "REDIS"}
    processes = procfile()
    formation = manifest["formation"]
    assert set(formation) == set(PROCESSES) and set(PROCESSES) <= set(processes)
    assert all(formation[name]["quantity"] >= 1 for name in PROCESSES)
    # The release phase is the Procfile's release line: never a process to scale.
    assert processes["release"] == "flask --app app db upgrade" and "release" not in formation
    env = manifest["env"]
    for name in ("SECRET_KEY", "WEBHOOK_SECRETS_KEY", "METRICS_TOKEN"):
        assert env[name]["generator"] == "secret", name
    known = {var.name for var in VARIABLES}
    assert set(env) <= known, f"not settings of the service: {set(env) - known}"
    assert all(spec["description"] for spec in env.values())
    assert (ROOT / ".python-version").read_text().strip() == "3.11"


def test_schema_refuses_what_heroku_refuses() -> None:
    """The schema is not a formality: it refuses a release script and an unknown generator."""
    validator = jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / "heroku-app.json").read_text())
    )
    assert not validator.is_valid({"scripts": {"release": "flask --app app db upgrade"}})
    assert not validator.is_valid({"env": {"SECRET_KEY": {"generator": "uuid"}}})
    assert not validator.is_valid({"formation": {"web": {"size": "basic"}}})


# -- Redis over TLS ---------------------------------------------------------------------


@dataclass
class TlsRedis:
    """A TLS-only redis-server with certificates from a CA of its own."""

    port: int
    ca_file: str
    other_ca_file: str
    process: subprocess.Popen

    def url(self, query: str = "") -> str:
        return f"rediss://127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")


def start_tls_redis(folder: Path) -> TlsRedis:
    folder.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(folder / "redis.key"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "redis.crt"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    other.cert_pem.write_to_path(str(folder / "other-ca.pem"))
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
        + [
            "--tls-cert-file",
            str(folder / "redis.crt"),
            "--tls-key-file",
            str(folder / "redis.key"),
        ]
        + ["--tls-ca-cert-file", str(folder / "ca.pem"), "--tls-auth-clients", "no"]
        + ["--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = TlsRedis(port, str(folder / "ca.pem"), str(folder / "other-ca.pem"), process)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the TLS redis-server did not start") from None
            time.sleep(0.05)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process's group, SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=5)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    server = start_tls_redis(tmp_path_factory.mktemp("tls-redis"))
    yield server
    server.process.kill()
    server.process.wait(timeout=5)


@pytest.mark.parametrize("how", ["query", "REDIS_URL_PARAMS"])
def test_rate_limits_hold_over_tls_redis(config, tls_redis, how, request) -> None:  # type: ignore[no-untyped-def]
    """Given REDIS_URL=rediss://…?ssl_ca_certs=… (or the parameter in REDIS_URL_PARAMS, for a
    URL the provider sets), the API's rate limit is counted in that Redis and answers 429."""
    if how == "query":
        config["REDIS_URL"] = tls_redis.url(f"ssl_ca_certs={tls_redis.ca_file}")
    else:
        config["REDIS_URL"] = tls_redis.url()
        config["REDIS_URL_PARAMS"] = f"ssl_ca_certs={tls_redis.ca_file}"
    config["WEBHOOK_API_RATE_LIMIT"] = "3 per minute"
    app = request.getfixturevalue("app")
    api = Api(app.test_client(), request.getfixturevalue("workspace")["key"])

    answers = [api.get("/event-types") for _ in range(4)]

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[3].json["error"]["code"] == "rate_limited"
    assert answers[3].headers["Retry-After"]
    redis = services.of(app).redis
    assert any(b"webhooks-limiter" in key for key in redis.keys("*"))
    health = app.test_client().get("/healthz")
    assert health.status_code == 200 and health.json["redis"] == "ok"


def _startup(command: list[str], redis_url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": str(tmp_path),  # gunicorn keeps its control socket there
        "DATABASE_URL": f"sqlite:///{tmp_path / 'webhooks.db'}",
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "REDIS_URL": redis_url,
        "SECRET_KEY": "startup-test-key",
    }
    try:
        return subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{command[0]} kept running: {exc.stderr!r}") from None


@pytest.mark.parametrize(
    "command",
    [
        ["gunicorn", "--bind", "127.0.0.1:0", "--workers", "1", "app:create_app()"],
        ["flask", "--app", "app", "worker", "--lane", "normal"],
        ["flask", "--app", "app", "scheduler"],
    ],
    ids=["web", "worker", "scheduler"],
)
def test_a_refused_redis_certificate_stops_each_process_naming_redis_url(
    command, tls_redis, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A TLS Redis whose certificate is not from the CA in REDIS_URL: the process exits at once
    with one line that names REDIS_URL and says what to add, password masked."""
    url = f"rediss://:hunter2-password@127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={tls_redis.other_ca_file}"

    done = _startup(command, url, tmp_path)

    assert done.returncode != 0
    line = next(
        (x for x in done.stderr.splitlines() if x.startswith("configuration error: REDIS_URL")),
        None,
    )
    assert line, done.stderr[-2000:]
    assert "certificate did not verify" in line and "ssl_ca_certs=" in line
    assert "ssl_cert_reqs=none" in line
    assert "hunter2-password" not in done.stderr and ":****@127.0.0.1" in line


def test_plain_redis_url_to_a_tls_only_redis_says_use_rediss(tls_redis, tmp_path) -> None:  # type: ignore[no-untyped-def]
    done = _startup(
        ["flask", "--app", "app", "scheduler"], f"redis://127.0.0.1:{tls_redis.port}/0", tmp_path
    )

    assert done.returncode != 0
    assert "configuration error: REDIS_URL: Redis reset the connection" in done.stderr
    assert "use rediss://" in done.stderr


def test_self_signed_redis_accepted_with_ssl_cert_reqs_none(tls_redis, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`ssl_cert_reqs=none` (a provider's self-signed certificate): the commands run."""
    url = tls_redis.url("ssl_cert_reqs=none")

    upgrade = _startup(["flask", "--app", "app", "db", "upgrade"], url, tmp_path)
    created = _startup(["flask", "--app", "app", "workspace", "create", "Acme"], url, tmp_path)

    assert upgrade.returncode == 0, upgrade.stderr[-2000:]
    assert created.returncode == 0, created.stderr[-2000:]
    assert json.loads(created.stdout.strip().splitlines()[-1])["workspace_id"].startswith("ws_")


# -- a whole deployment, as a platform makes it ----------------------------------------


class Platform:
    """What a Heroku-style platform does with the repository: a fresh clone, a virtualenv with
    requirements.txt only, the Procfile's release line, then every other process with PORT."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.app = folder / "app"
        self.venv = folder / "venv"
        self.env = env
        self.running: dict[str, subprocess.Popen] = {}
        self.logs = folder / "logs"
        self.logs.mkdir()

    def build(self) -> None:
        head = _run(["git", "rev-parse", "HEAD"], cwd=ROOT).stdout.strip()
        _run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(self.app)])
        _run(["git", "checkout", "--quiet", head], cwd=self.app)
        _run([sys.executable, "-m", "venv", str(self.venv)])
        pip = [str(self.venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
        _run([*pip, "-r", str(self.app / "requirements.txt")], timeout=300)

    def process_env(self) -> dict[str, str]:
        path = f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
        return {"PATH": path, "HOME": str(self.folder), "LANG": "C.UTF-8", **self.env}

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """A one-off process (`heroku run …`)."""
        return _run(["bash", "-c", command], cwd=self.app, env=self.process_env(), timeout=timeout)

    def start(self) -> None:
        """The processes of app.json's formation, as the Procfile runs them, each in a process
        group of its own."""
        formation = json.loads((self.app / "app.json").read_text())["formation"]
        commands = procfile(self.app)
        for name, scale in formation.items():
            if not scale["quantity"]:
                continue
            command = commands[name]
            log = open(self.logs / f"{name}.log", "a")  # noqa: SIM115 (closed with the process)
            self.running[name] = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.app,
                env=self.process_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()

    def stop(self) -> None:
        for process in self.running.values():
            stop(process)
        self.running.clear()

    def tail(self) -> str:
        return "\n".join(
            f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:])
            for log in sorted(self.logs.iterdir())
        )

    def wait_healthy(self, base: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for name, process in self.running.items():
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited with {process.returncode}\n{self.tail()}")
            try:
                answer = requests.get(f"{base}/healthz", timeout=2)
                if answer.status_code == 200:
                    return answer.json()
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"/healthz not ok within {timeout}s\n{self.tail()}")
            time.sleep(0.2)


def _run(command: list[str], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        raise AssertionError(f"{command} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


@pytest.fixture
def throwaway_postgres() -> Iterator[str]:
    """A new PostgreSQL database, named in the platform's postgres:// form; dropped after."""
    server = sa.engine.make_url(TEST_DATABASE_URL)
    name = f"webhooks_deploy_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(
        server.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = server.set(drivername="postgres", database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _deliver_and_verify(base: str, key: str, receiver: Any, secret: str, count: int) -> None:
    from standardwebhooks.webhooks import Webhook

    headers = {"Authorization": f"Bearer {key}"}
    event = {"type": "incident.created", "data": {"id": f"inc_{count}", "title": "API latency"}}
    published = requests.post(f"{base}/api/v1/events", json=event, headers=headers, timeout=10)
    assert published.status_code == 202, published.text
    assert published.json()["delivery_count"] == 1

    arrived = receiver.wait_for(count, timeout=30)[count - 1]

    verified = Webhook(secret).verify(arrived.body.decode(), arrived.headers)
    assert verified["id"] == published.json()["id"] == arrived.headers["webhook-id"]
    assert verified["data"] == event["data"]


def config_vars(port: int, database_url: str, redis: TlsRedis, ca_bundle: str) -> dict[str, str]:
    """The platform's settings: its postgres:// database, its TLS-only Redis with its own CA,
    generated keys, and a test CA and loopback for the receiver."""
    return {
        "PORT": str(port),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis.url(f"ssl_ca_certs={redis.ca_file}"),
        "SECRET_KEY": "deploy-test-" + uuid.uuid4().hex,
        "WEBHOOK_SECRETS_KEY": uuid.uuid4().hex,
        "METRICS_TOKEN": "scrape-" + uuid.uuid4().hex,
        "WEB_CONCURRENCY": "1",
        # The receiver is on loopback with a certificate from the test CA.
        "WEBHOOK_CA_BUNDLE": ca_bundle,
        "WEBHOOK_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
    }


def a_workspace_with_a_webhook(platform: Platform, base: str, receiver: Any) -> tuple[str, str]:
    """A workspace made with a one-off command, and a webhook to the receiver made through the
    API: the workspace's API key and the webhook's secret."""
    created = platform.run("flask --app app workspace create Acme")
    key = json.loads(created.stdout.strip().splitlines()[-1])["api_key"]
    webhook = requests.post(
        f"{base}/api/v1/webhooks",
        json={"name": "Ops", "url": receiver.url(), "events": ["incident.*"]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert webhook.status_code == 201, webhook.text
    return key, webhook.json()["secret"]


def the_attempt_is_counted_for_the_token_alone(base: str, token: str) -> None:
    """/metrics counts the attempt for the scraper's token and answers 401 without it."""
    # The attempt is recorded just after the receiver answered: poll for it.
    headers = {"Authorization": f"Bearer {token}"}
    counted = 'webhook_delivery_attempts_total{outcome="success"} 1.0'
    deadline = time.monotonic() + 10
    while counted not in (text := requests.get(f"{base}/metrics", headers=headers).text):
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    assert requests.get(f"{base}/metrics", timeout=10).status_code == 401


@pytest.mark.skipif(
    not TEST_DATABASE_URL,
    reason="a platform deployment runs on PostgreSQL (DATABASE_URL=postgres://…): it runs in "
    "the PostgreSQL pass, with TEST_DATABASE_URL set",
)
def test_deploys_from_a_fresh_clone_like_a_platform(
    tmp_path, throwaway_postgres, receiver, ca_bundle
) -> None:  # type: ignore[no-untyped-def]
    """Given a fresh clone of HEAD, requirements.txt, release, the Procfile's processes, a
    postgres:// database and a TLS-only Redis with its own CA: an event arrives signed; after
    the instance folder is wiped and every process restarted, the same secret still signs."""
    redis = start_tls_redis(tmp_path / "redis")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    platform = Platform(tmp_path, config_vars(port, throwaway_postgres, redis, ca_bundle))
    try:
        platform.build()
        platform.run(procfile(platform.app)["release"])
        platform.start()
        assert set(platform.running) == set(procfile(platform.app)) - {"release"}
        assert platform.wait_healthy(base) == {"database": "ok", "redis": "ok"}
        key, secret = a_workspace_with_a_webhook(platform, base, receiver)

        _deliver_and_verify(base, key, receiver, secret, count=1)
        the_attempt_is_counted_for_the_token_alone(base, platform.env["METRICS_TOKEN"])

        # A restart on such a platform starts from the slug again: nothing on disk survives.
        platform.stop()
        assert (platform.app / "instance").is_dir()
        shutil.rmtree(platform.app / "instance")
        platform.start()
        assert platform.wait_healthy(base) == {"database": "ok", "redis": "ok"}

        _deliver_and_verify(base, key, receiver, secret, count=2)
    except BaseException:
        print(platform.tail())
        raise
    finally:
        platform.stop()
        redis.process.kill()
        redis.process.wait(timeout=5)
