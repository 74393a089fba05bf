"""`make bench`: the delivery service measured end to end against its own raw ceiling.

One run, bounded (about 8-10 minutes with the defaults on 2 cores) and self-cleaning:

1. a receiver of its own: nginx on loopback answering 204 over HTTPS (a certificate from a CA
   the bench makes, which the service trusts through WEBHOOK_CA_BUNDLE) and over plain HTTP
   (its capacity measured with wrk), and a target that completes the TLS handshake and never
   answers;
2. the raw ceilings: N client processes (N = the service's worker count) posting the same 1 KB
   signed bodies to the same receiver, kept-alive: requests over HTTPS (the headline), urllib3
   over HTTPS, requests over plain HTTP;
3. for SQLite and for PostgreSQL, the Procfile's processes (web, N workers, scheduler) on a
   fresh database and a throwaway Redis: idle latency, throughput (and batch publishing),
   fan-out, logs at scale, isolation; worker RSS is sampled all along, and one worker is
   profiled with py-spy;
4. one table of medians with their spread, ratios, and PASS/MISS per performance target.

Every process it starts is killed, its database dropped and its temp dir removed, also on
Ctrl-C or an error. See bench/README.md for the options.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import urllib3  # noqa: E402

from bench import logdata, procs, tls  # noqa: E402
from bench import profile as prof  # noqa: E402
from bench.receiver import Receiver  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
PHASES = (
    "receiver", "raw", "latency", "throughput", "flow", "fanout", "logs", "isolation", "profile",
)  # fmt: skip
EVENT_TYPE = "incident.created"
BATCH = 100  # events per POST /events/batch call: the most the API takes
# The raw ceilings: (client library, scheme), each kept-alive. The throughput target is set
# against HEADLINE: a bare loop of the library the service sends with, over HTTPS.
RAW_CEILINGS = {
    "requests https": ("requests", "https"),
    "urllib3 https": ("urllib3", "https"),
    "requests http": ("requests", "http"),
}
HEADLINE = "requests https"
TYPES = [
    "recommendation.created", "recommendation.updated", "incident.created", "incident.updated",
    "incident.resolved", "finding.created", "finding.resolved", "task.started", "task.completed",
    "task.failed", "approval.requested", "resource.changed",
]  # fmt: skip


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- bodies: the same 1 KB envelope the service sends, signed the same way ---------------------


def _data(size: int = 1024) -> dict:
    """Event data whose envelope (as the service serialises it) is `size` bytes."""
    data = {
        "id": "inc_42",
        "title": "API latency above threshold",
        "severity": "high",
        "service": "checkout",
        "region": "eu-west-1",
        "description": "",
    }
    probe = _envelope("evt_01JDQZ6Y3V8N2XK4M7P9R5T1WB", "ws_01JDQZ6Y3V8N2XK4M7P9R5T1WB", data)
    data["description"] = "x" * max(0, size - len(probe))
    return data


def _envelope(event_id: str, ws: str, data: dict) -> bytes:
    env = {
        "id": event_id,
        "type": EVENT_TYPE,
        "timestamp": "2026-11-27T10:30:00Z",
        "workspace_id": ws,
        "data": data,
    }
    return json.dumps(env, separators=(",", ":"), ensure_ascii=False).encode()


DATA = _data()
PUBLISH_BODY = json.dumps({"type": EVENT_TYPE, "data": DATA}).encode()
SECRET = "whsec_" + base64.b64encode(b"bench-secret-0123456789abcdef012").decode()


def signed_headers(event_id: str, delivery_id: str, body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    key = base64.b64decode(SECRET[6:])
    std = base64.b64encode(
        hmac.new(key, f"{event_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    return {
        "Content-Type": "application/json",
        "User-Agent": "CloudThinker-Webhooks/1.0",
        "X-CloudThinker-Event": EVENT_TYPE,
        "X-CloudThinker-Delivery": delivery_id,
        "webhook-id": event_id,
        "webhook-timestamp": ts,
        "X-CloudThinker-Signature": "sha256="
        + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
        "webhook-signature": "v1," + std,
    }


def raw_process(args: dict[str, Any], results) -> None:  # noqa: ANN001
    """A raw-ceiling client process: its count, or its error, goes to `results`."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends it
    try:
        results.put(raw_client(**args))
    except Exception as exc:  # noqa: BLE001
        results.put(f"{type(exc).__name__}: {exc}")


def poster(client: str, ca: str):  # type: ignore[no-untyped-def]
    """`post(url, body, headers) -> status` over one kept-alive connection, verifying the
    receiver's certificate against `ca` as the service does."""
    if client == "urllib3":
        import urllib3

        pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=ca)
        return lambda url, body, headers: (
            pool.request("POST", url, body=body, headers=headers, timeout=10, retries=False).status
        )
    session = requests.Session()
    # As the service's own session (webhooks/transport.py): no per-request lookup of proxy
    # settings in the environment (about 15 % of a bare Session's time in a profile here).
    session.trust_env = False

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        r = session.post(url, data=body, headers=headers, timeout=10, verify=ca)
        r.close()
        return r.status_code

    return post


def raw_client(
    *, url: str, ca: str, client: str, start_at: float, duration: float, index: int
) -> int:
    """One raw-ceiling process: sign and POST 1 KB bodies until the end; returns how many."""
    post = poster(client, ca)
    n = 0
    time.sleep(max(0.0, start_at - time.time()))
    end = start_at + duration
    while time.time() < end:
        event_id = f"raw_{index}_{n}"
        body = _envelope(event_id, "ws_raw", DATA)
        status = post(url, body, signed_headers(event_id, f"rawdlv_{index}_{n}", body))
        if status != 204:
            raise RuntimeError(f"receiver answered {status}")
        n += 1
    return n


# -- small statistics ------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    """`median (min–max)`, or just the value when there is one."""
    values = [v for v in values if v == v]
    if not values:
        return "—"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(med(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


# -- the database the service runs on ------------------------------------------------------------


class Database:
    """A fresh database for one service run, and the bench's own connection to it."""

    def __init__(self, kind: str, workdir: Path, pg_url: str) -> None:
        self.kind = kind
        self.conn = None
        if kind == "sqlite":
            self.path = workdir / "instance" / "webhooks.db"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.url = f"sqlite:///{self.path}"
        else:
            import psycopg
            from sqlalchemy.engine import make_url

            u = make_url(pg_url)
            self.server = dict(
                host=u.host or "127.0.0.1",
                port=u.port or 5432,
                user=u.username or "postgres",
                password=u.password,
            )
            self.name = f"webhooks_bench_{os.getpid()}"
            with psycopg.connect(**self.server, dbname=u.database or "postgres") as admin:
                admin.autocommit = True
                admin.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
                admin.execute(f'CREATE DATABASE "{self.name}"')
            self.admin_db = u.database or "postgres"
            self.url = str(u.set(database=self.name).render_as_string(hide_password=False))

    def connect(self):  # type: ignore[no-untyped-def]
        if self.conn is None:
            if self.kind == "sqlite":
                self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            else:
                import psycopg

                self.conn = psycopg.connect(**self.server, dbname=self.name, autocommit=True)
        return self.conn

    def scalar(self, sql: str, *params):  # type: ignore[no-untyped-def]
        if self.kind == "sqlite":
            sql = sql.replace("%s", "?")
        return self.connect().execute(sql, params).fetchone()[0]

    def execute(self, sql: str, *params) -> None:  # type: ignore[no-untyped-def]
        if self.kind == "sqlite":
            sql = sql.replace("%s", "?")
        self.connect().execute(sql, params)

    def row(self, sql: str, *params):  # type: ignore[no-untyped-def]
        if self.kind == "sqlite":
            sql = sql.replace("%s", "?")
        return self.connect().execute(sql, params).fetchone()

    def succeeded(self, workspace_id: str, since: datetime = datetime.min) -> int:
        """The workspace's succeeded deliveries (made `since` then, a naive UTC time: a run's
        own, read from the (workspace, status, created_at) index however many runs came
        before; its polls cost the database as little as they can)."""
        return self.scalar(
            "SELECT count(*) FROM deliveries WHERE workspace_id = %s AND status = 'succeeded'"
            " AND created_at >= %s",
            workspace_id,
            since.isoformat(" ", "microseconds") if self.kind == "sqlite" else since,
        )

    def backend_pids(self) -> list[int]:
        if self.kind != "postgres":
            return []
        rows = self.connect().execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.name,),
        )
        return [r[0] for r in rows]

    def drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None
        if self.kind == "postgres":
            import psycopg

            try:
                with psycopg.connect(**self.server, dbname=self.admin_db) as admin:
                    admin.autocommit = True
                    admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            except Exception as exc:  # noqa: BLE001
                log(f"could not drop database {self.name}: {exc}")


# -- the service, as the Procfile runs it -------------------------------------------------------


def procfile() -> list[tuple[str, str]]:
    entries = []
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            name, _, cmd = line.partition(":")
            entries.append((name.strip(), cmd.strip()))
    return entries


class Service:
    def __init__(
        self, db: Database, workdir: Path, redis_url: str, workers: int, ca_bundle: Path
    ) -> None:
        self.db = db
        self.dir = workdir
        self.workers = workers
        self.port = procs.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # Each process writes its SQL statement counts to <this>.<pid> (webhooks/stmtcount.py).
        self.statement_counts = workdir / "statements" / "count"
        self.statement_counts.parent.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "DATABASE_URL": db.url,
            "REDIS_URL": redis_url,
            "INSTANCE_PATH": str(workdir / "instance"),
            "SECRET_KEY": "bench-secret-key-not-for-production",
            # The receivers are on loopback, over HTTPS with the bench's own CA.
            "WEBHOOK_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
            "WEBHOOK_CA_BUNDLE": str(ca_bundle),
            "WEBHOOK_COUNT_STATEMENTS": str(self.statement_counts),
            # The API's per-workspace limit (1200/min) would throttle the publishers, not the
            # service; the fan-out workspace has 1,000 webhooks, over the default quota of 100.
            "WEBHOOK_API_RATE_LIMIT": "100000000 per minute",
            "WEBHOOK_MAX_WEBHOOKS": "0",
            "PORT": str(self.port),
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: dict[str, list[subprocess.Popen]] = {}

    def _run(self, cmd: str, what: str) -> str:
        out = subprocess.run(
            ["bash", "-c", cmd],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{what} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def release(self) -> None:
        cmd = dict(procfile()).get("release", "flask --app app db upgrade")
        self._run(cmd, "release (migrations)")

    def seed(self, spec: dict) -> dict:
        path = self.dir / "seed-spec.json"
        path.write_text(json.dumps(spec))
        out = self._run(f"exec python bench/seed.py {path}", "seeding")
        return json.loads(out.strip().splitlines()[-1])

    def start(self) -> None:
        for name, cmd in procfile():
            if name == "release":
                continue
            count = self.workers if name == "worker" else 1
            for i in range(count):
                proc = procs.start(
                    ["bash", "-c", f"exec env {cmd}"],
                    log=self.dir / f"{name}.{i}.log",
                    env=self.env,
                    cwd=ROOT,
                )
                self.procs.setdefault(name, []).append(proc)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                if requests.get(self.base + "/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            dead = [p for ps in self.procs.values() for p in ps if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a service process exited at start; see logs in {self.dir}")
            time.sleep(0.2)
        raise RuntimeError(f"the web process did not answer /healthz; see {self.dir}")

    def roles(self) -> dict[str, list[int]]:
        """pids per role: `web` (gunicorn master and its workers), `worker`, `scheduler`…"""
        live = {name: [p.pid for p in ps if p.poll() is None] for name, ps in self.procs.items()}
        found = procs.trees([pid for pids in live.values() for pid in pids])
        return {
            name: [pid for root in roots for pid in found[root]]
            for name, roots in live.items()
            if roots
        }

    def statements(self, timeout: float = 3.0) -> dict[str, list[int]]:
        """[statements, transactions, pool checkouts] so far per role, from the files every
        process rewrites each half second: read once each live process has written since."""
        asked = time.time()
        end = time.monotonic() + timeout
        while True:
            files = {int(f.suffix[1:]): f for f in self._count_files()}
            stale = [f for pid, f in files.items() if _alive(pid) and _mtime(f) < asked]
            if not stale or time.monotonic() > end:
                break
            time.sleep(0.05)
        role_of = {pid: role for role, pids in self.roles().items() for pid in pids}
        out: dict[str, list[int]] = {}
        for pid, f in files.items():
            try:
                counts = [int(x) for x in f.read_text().split()]
            except (OSError, ValueError):
                continue
            total = out.setdefault(role_of.get(pid, "exited"), [0, 0, 0])
            for i, n in enumerate(counts[:3]):
                total[i] += n
        return out

    def _count_files(self) -> list[Path]:
        prefix = self.statement_counts.name + "."
        return [
            f
            for f in self.statement_counts.parent.iterdir()
            if f.name.startswith(prefix) and f.suffix[1:].isdigit()
        ]

    def stop(self) -> None:
        for ps in self.procs.values():
            for p in ps:
                procs.stop(p)
        self.procs = {}


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")  # gone: nothing to wait for


class Sampler(threading.Thread):
    """RSS of every service process, every half second: the max per process and role."""

    def __init__(self, service: Service) -> None:
        super().__init__(daemon=True)
        self.service = service
        self.max_rss: dict[int, float] = {}
        self.first_rss: dict[int, float] = {}
        self.last_rss: dict[int, float] = {}
        self.role_of: dict[int, str] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for role, pids in self.service.roles().items():
                for pid in pids:
                    rss = procs.rss_mb(pid)
                    if rss is None:
                        continue
                    self.role_of[pid] = role
                    self.first_rss.setdefault(pid, rss)
                    self.last_rss[pid] = rss
                    self.max_rss[pid] = max(rss, self.max_rss.get(pid, 0.0))
            self.halt.wait(0.5)

    def by_role(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for pid, rss in self.max_rss.items():
            role = self.role_of[pid]
            r = out.setdefault(role, {"max": 0.0, "first": 0.0, "last": 0.0})
            if rss >= r["max"]:
                r.update(max=rss, first=self.first_rss[pid], last=self.last_rss[pid])
        return out


# -- the benchmark ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="webhooks-bench-"))
        self.receiver: Receiver | None = None
        self.certs: tls.Certificates | None = None
        self.redis_url = ""
        self.results: dict = {"meta": {}, "global": {}, "db": {}}
        self.phase_times: list[tuple[str, float]] = []
        self.databases: list[Database] = []
        self.local = threading.local()

    def wants(self, phase: str) -> bool:
        return phase in self.args.only

    def timed(self, name: str, fn, *a, **kw):  # type: ignore[no-untyped-def]
        t = time.monotonic()
        try:
            return fn(*a, **kw)
        finally:
            self.phase_times.append((name, time.monotonic() - t))
            log(f"{name}: {time.monotonic() - t:.1f} s")

    # -- setup --

    def start_redis(self) -> None:
        port = procs.free_port()
        d = self.work / "redis"
        d.mkdir()
        self.redis_proc = procs.start(
            [
                shutil.which("redis-server") or "redis-server",
                "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                "--dir", str(d), "--daemonize", "no",
            ],
            log=d / "redis.log",
        )  # fmt: skip
        if not procs.wait_port(port):
            raise RuntimeError("redis-server did not start")
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def session(self) -> requests.Session:
        s = getattr(self.local, "session", None)
        if s is None:
            s = self.local.session = requests.Session()
        return s

    # -- receiver and raw ceiling --

    def receiver_capacity(self) -> None:
        body = _envelope("evt_wrk", "ws_wrk", DATA)
        modes = {  # name: (logged, tls)
            "https logged": (True, True),
            "logged": (True, False),
            "unlogged": (False, False),
        }
        res: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(self.args.reps):
            for name, (logged, over_tls) in modes.items():
                res[name].append(
                    self.receiver.capacity(
                        body, logged=logged, tls=over_tls, seconds=3, connections=32
                    )
                )
        self.results["global"]["receiver"] = res
        log("receiver capacity (wrk): "
            + ", ".join(f"{name} {spread(v)}/s" for name, v in res.items()))  # fmt: skip

    def raw_ceiling(self) -> None:
        """The three raw ceilings, interleaved within each repetition so that drift in the
        machine's speed shows in every one of them alike."""
        out: dict[str, list[float]] = {name: [] for name in RAW_CEILINGS}
        for _ in range(self.args.reps):
            for name, (client, scheme) in RAW_CEILINGS.items():
                url = (
                    self.receiver.url("raw") if scheme == "https" else self.receiver.http_url("raw")
                )
                out[name].append(self.raw_run(client, url))
        self.results["global"]["raw"] = out
        log(f"raw ceilings ({self.args.workers} processes, kept-alive): "
            + ", ".join(f"{name} {spread(v)}/s" for name, v in out.items()))  # fmt: skip

    def raw_run(self, client: str, url: str) -> float:
        """Requests/s of `--workers` processes posting with `client` to `url` together."""
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        start_at, dur = time.time() + 0.3, self.args.raw_seconds
        results = ctx.Queue()
        args = dict(url=url, ca=str(self.certs.ca), client=client, start_at=start_at,
                    duration=dur)  # fmt: skip
        clients = [
            ctx.Process(target=raw_process, args=({**args, "index": i}, results))
            for i in range(self.args.workers)
        ]
        for c in clients:
            c.start()
        counts = []
        try:
            for _ in clients:
                counts.append(results.get(timeout=dur + 20))
        finally:
            for c in clients:
                c.join(2)
                if c.is_alive():
                    c.kill()
        failed = [c for c in counts if isinstance(c, str)]
        if failed:
            raise RuntimeError(f"raw client ({client}, {url}) failed: {failed[0]}")
        return sum(counts) / dur

    # -- the API --

    def publisher_pool(self, svc: Service) -> urllib3.HTTPConnectionPool:
        """This thread's kept-alive connection to the API: the publishers are the producers'
        stand-in and share the service's 2 cores, so they post with urllib3 alone (a third
        of requests' CPU), as a lean producer would."""
        pool = getattr(self.local, "api_pool", None)
        if pool is None or pool.port != svc.port:
            pool = self.local.api_pool = urllib3.HTTPConnectionPool(
                "127.0.0.1", svc.port, maxsize=1, retries=False, timeout=60
            )
        return pool

    def publish(self, svc: Service, key: str) -> tuple[float, float, str, int]:
        """(start epoch, API seconds, event id, delivery count) for one published event."""
        t0 = time.time()
        r = self.publisher_pool(svc).request(
            "POST",
            "/api/v1/events",
            body=PUBLISH_BODY,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        elapsed = time.time() - t0
        if r.status not in (200, 202):
            raise RuntimeError(f"HTTP {r.status}: {r.data[:300]!r}")
        body = json.loads(r.data)
        return t0, elapsed, body["id"], body.get("delivery_count", 0)

    def publish_batch(self, svc: Service, key: str, size: int) -> tuple[float, float, list[str]]:
        """(start epoch, API seconds, event ids) for `size` events published in one call."""
        t0 = time.time()
        r = self.session().post(
            svc.base + "/api/v1/events/batch",
            json={"events": [{"type": EVENT_TYPE, "data": DATA}] * size},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        elapsed = time.time() - t0
        if r.status_code not in (200, 202):
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
        return t0, elapsed, [e["id"] for e in r.json()["data"]]

    def batch_available(self, svc: Service, key: str) -> bool:
        """Whether the API has POST /events/batch: an empty batch publishes nothing, and is
        refused as invalid (400) where the endpoint exists, 404/405 where it does not."""
        r = self.session().post(
            svc.base + "/api/v1/events/batch",
            json={"events": []},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        return r.status_code not in (404, 405)

    def wait_arrivals(self, event_id: str, count: int, timeout: float) -> list:
        end = time.monotonic() + timeout
        while True:
            self.receiver.log.poll()
            got = self.receiver.log.by_event.get(event_id, [])
            if len(got) >= count or time.monotonic() > end:
                return got
            time.sleep(0.002)

    # -- phases on a running service --

    def latency(self, svc: Service, ws: dict, res: dict) -> None:
        lat, api = [], []
        for _ in range(self.args.latency_samples):
            t0, elapsed, eid, _ = self.publish(svc, ws["key"])
            got = self.wait_arrivals(eid, 1, 10)
            if got:
                lat.append((got[0].at - t0) * 1000)
            api.append(elapsed * 1000)
            time.sleep(0.02)  # idle: let the previous delivery's record finish
        chunks = [lat[i : i + 50] for i in range(0, len(lat), 50)]
        res["latency"] = {
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "p50_chunks": [pct(c, 50) for c in chunks],
            "api_p50": pct(api, 50),
            "api_p99": pct(api, 99),
            "n": len(lat),
            "lost": self.args.latency_samples - len(lat),
        }
        log(f"latency at idle: p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms "
            f"(API call p50 {pct(api, 50):.1f} ms)")  # fmt: skip

    def load(
        self,
        svc: Service,
        ws: dict,
        healthy: int,
        *,
        events: int,
        deadline: float,
        on_tick=None,  # noqa: ANN001
        pace: float | None = None,
        batch: int = 0,
    ) -> dict:
        """Publish `events` events from several threads, as fast as the API takes them or
        `pace` events per second, one a call or `batch` a call; wait until every healthy
        delivery is recorded as succeeded (or the deadline). Rate, and publish-to-arrival
        latencies."""
        db = svc.db
        since = datetime.now(UTC).replace(tzinfo=None)  # as the service writes created_at
        before = db.succeeded(ws["id"], since)
        target = before + events * healthy
        published: dict[str, float] = {}
        api: list[float] = []
        errors: list[str] = []
        failed_calls: list[float] = []
        lock = threading.Lock()
        remaining = [events]

        def call(size: int) -> tuple[float, float, list[str]]:
            if batch:
                return self.publish_batch(svc, ws["key"], size)
            t0, elapsed, eid, _ = self.publish(svc, ws["key"])
            return t0, elapsed, [eid]

        def publisher() -> None:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    size = min(batch or 1, remaining[0])
                    remaining[0] -= size
                    n = events - remaining[0] - size
                if pace:
                    time.sleep(max(0.0, start + n / pace - time.time()))
                called = time.time()
                try:
                    t0, elapsed, ids = call(size)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(str(exc)[:200])
                        failed_calls.append(time.time() - called)
                    continue
                with lock:
                    published.update(dict.fromkeys(ids, t0))
                    api.append(elapsed)

        start = time.time()
        threads = [
            threading.Thread(target=publisher, daemon=True) for _ in range(self.args.publishers)
        ]
        for t in threads:
            t.start()
        done = before
        arrived = 0
        while True:
            # Every 0.1 s, and every 10 ms for the last twentieth: the end is known to 10 ms,
            # not to the 0.1 s that was a tenth of a run (and of its rate) at 4,000/s.
            time.sleep(0.1 if arrived < (target - before) * 19 / 20 else 0.01)
            arrived += len(self.receiver.log.poll())
            # The database is asked only once the receiver has seen every delivery arrive
            # (the recorder writes each result a few ms after): polled all along, the count
            # cost PostgreSQL a seventh of its time in a run, taken from the service measured.
            if arrived >= target - before:
                done = db.succeeded(ws["id"], since)
            if on_tick:
                on_tick()
            if done >= target or time.time() - start > deadline:
                break
        end = time.time()
        if done < target:
            done = db.succeeded(ws["id"], since)  # the deadline: what was recorded by then
        with lock:
            unpublished = remaining[0]
            remaining[0] = 0  # publishers still waiting on the API stop after their call
        for t in threads:
            t.join(max(0.1, 5 - (time.time() - end)))
        published_by = max(published.values(), default=start) + max(api, default=0)
        self.receiver.log.poll()
        lat, arrivals = [], []
        for eid, t0 in published.items():
            for a in self.receiver.log.by_event.get(eid, []):
                if a.at <= end:
                    lat.append((a.at - t0) * 1000)
                    arrivals.append(a.at)
        missing = (events - unpublished) * healthy - len(lat)
        # Deliveries still missing at the deadline count as waiting that long (censored).
        censored = lat + [(end - start) * 1000] * max(0, missing)
        arrivals.sort()
        gaps = [b - a for a, b in zip([start, *arrivals], [*arrivals, end], strict=True)]
        return {
            "deliveries": done - before,
            "expected": events * healthy,
            "seconds": end - start,
            "rate": (done - before) / (end - start),
            "publish_seconds": published_by - start,
            "p50": pct(censored, 50),
            "p99": pct(censored, 99),
            "complete": done >= target,
            "max_gap": max(gaps) if gaps else float("nan"),
            "api_p50": pct([x * 1000 for x in api], 50),
            "api_max": max(api + failed_calls, default=float("nan")) * 1000,
            "publish_errors": len(errors),
            "first_error": errors[0] if errors else None,
            "unpublished": unpublished,
        }

    def cpu_snapshot(self, svc: Service) -> dict[str, float]:
        snap: dict[str, float] = {}
        for role, pids in svc.roles().items():
            snap[role] = sum(procs.cpu_seconds(p) or 0 for p in pids)
        snap["redis"] = procs.cpu_seconds(self.redis_proc.pid) or 0
        snap["nginx"] = sum(procs.cpu_seconds(p) or 0 for p in self.receiver.pids())
        if svc.db.kind == "postgres":
            snap["postgres"] = sum(procs.cpu_seconds(p) or 0 for p in svc.db.backend_pids())
        t = os.times()
        snap["bench client"] = t.user + t.system
        return snap

    def counters(self, svc: Service) -> dict[str, float]:
        """Round trips so far: Redis commands (by name, and in all), SQL statements and
        transactions as the service's processes count them, PostgreSQL's transactions."""
        import redis as redis_lib

        out: dict[str, float] = {}
        r = redis_lib.Redis.from_url(self.redis_url)
        for name, v in r.info("commandstats").items():
            out["redis " + name.removeprefix("cmdstat_")] = v["calls"]
        out["redis total"] = r.info("stats")["total_commands_processed"]
        for role, (statements, transactions, checkouts) in svc.statements().items():
            out[f"sql statements {role}"] = statements
            out[f"sql transactions {role}"] = transactions
            out[f"sql checkouts {role}"] = checkouts
        if svc.db.kind == "postgres":
            out["pg transactions"] = svc.db.scalar(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                svc.db.name,
            )
        return out

    def throughput(self, svc: Service, ws: dict, res: dict) -> None:
        runs, cpu, calls = [], {}, {}
        k = len(ws["webhooks"])
        for i in range(self.args.reps):
            c0 = self.counters(svc)
            before = self.cpu_snapshot(svc)
            r = self.load(svc, ws, k, events=self.args.events, deadline=self.args.deadline)
            after = self.cpu_snapshot(svc)
            c1 = self.counters(svc)
            for name, v in c1.items():
                calls[name] = calls.get(name, 0) + v - c0.get(name, 0)
            for role in after:
                cpu[role] = cpu.get(role, 0) + after[role] - before.get(role, after[role])
            runs.append(r)
            log(f"throughput run {i + 1}: {r['deliveries']} deliveries in {r['seconds']:.1f} s = "
                f"{r['rate']:.0f}/s (published in {r['publish_seconds']:.1f} s), "
                f"p50 {r['p50']:.0f} ms p99 {r['p99']:.0f} ms"
                f"{'' if r['complete'] else ' INCOMPLETE at the deadline'}")  # fmt: skip
        total = sum(r["deliveries"] for r in runs) or 1
        res["throughput"] = {
            "runs": runs,
            "cpu_ms_per_delivery": {role: 1000 * s / total for role, s in cpu.items()},
            "cpu_total_ms_per_delivery": 1000 * sum(cpu.values()) / total,
            "wall_ms_per_delivery": 1000 * sum(r["seconds"] for r in runs) / total,
            "calls_per_delivery": {n: v / total for n, v in calls.items() if v},
        }
        per = res["throughput"]["calls_per_delivery"]
        log(f"per delivery: {per.get('redis total', 0):.1f} Redis commands, "
            f"{sum(v for n, v in per.items() if n.startswith('sql statements')):.1f} SQL "
            "statements")  # fmt: skip
        self.batch_throughput(svc, ws, res)

    def batch_throughput(self, svc: Service, ws: dict, res: dict) -> None:
        """The same events published BATCH to a call (POST /events/batch): its own figure,
        beside the headline, or "not available" where the API has no such endpoint."""
        if not self.batch_available(svc, ws["key"]):
            res["batch"] = {"available": False}
            log("batch publishing: POST /api/v1/events/batch is not available")
            return
        k = len(ws["webhooks"])
        runs = []
        for i in range(self.args.reps):
            r = self.load(svc, ws, k, events=self.args.events, deadline=self.args.deadline,
                          batch=BATCH)  # fmt: skip
            runs.append(r)
            log(f"batch run {i + 1}: {r['deliveries']} deliveries in {r['seconds']:.1f} s = "
                f"{r['rate']:.0f}/s (published in {r['publish_seconds']:.1f} s, "
                f"{r['publish_errors']} calls failed)"
                f"{'' if r['complete'] else ' INCOMPLETE at the deadline'}")  # fmt: skip
        res["batch"] = {"available": True, "runs": runs}

    def flow(self, svc: Service, wss: dict, res: dict) -> None:
        """A webhook limited to 1 delivery/s with a backlog waiting, while the throughput test
        runs on the others: their rate with it against runs before it existed and after it is
        gone (the service slows as its tables grow: before and after cancel that drift out),
        and how many of its deliveries were leased (held a thread) at once."""
        db, limited, ws = svc.db, wss["limited"], wss["throughput"]
        hook = limited["webhooks"][0]
        k = len(ws["webhooks"])

        def runs(label: str, on_tick=None, reps: int = self.args.reps) -> list[dict]:  # noqa: ANN001
            out = []
            for i in range(reps):
                r = self.load(svc, ws, k, events=self.args.events, deadline=self.args.deadline,
                              on_tick=on_tick)  # fmt: skip
                out.append(r)
                log(f"flow: {label} run {i + 1}: {r['rate']:.0f}/s")
            return out

        before = (self.args.reps + 1) // 2
        without = runs("without the backlog", reps=before)
        db.execute("UPDATE webhooks SET rate_limit = 1 WHERE id = %s", hook)
        backlog = self.args.flow_backlog
        for start in range(0, backlog, BATCH):
            self.publish_batch(svc, limited["key"], min(BATCH, backlog - start))
        waiting_sql = (
            "SELECT count(*) FROM deliveries WHERE webhook_id = %s AND status = 'pending' "
            "AND waiting = 'rate_limit'"
        )
        end = time.monotonic() + 60
        while db.scalar(waiting_sql, hook) < backlog - 5 and time.monotonic() < end:
            time.sleep(0.1)
        waiting_before = db.scalar(waiting_sql, hook)
        leased: list[int] = []

        def sample() -> None:
            leased.append(
                db.scalar(
                    "SELECT count(*) FROM deliveries WHERE webhook_id = %s "
                    "AND lease_token IS NOT NULL",
                    hook,
                )
            )

        started = time.time()
        attempts_before = db.scalar(
            "SELECT count(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id "
            "WHERE d.webhook_id = %s",
            hook,
        )
        with_backlog = runs("with 1,000 waiting", on_tick=sample)
        seconds = time.time() - started
        attempts = (
            db.scalar(
                "SELECT count(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id "
                "WHERE d.webhook_id = %s",
                hook,
            )
            - attempts_before
        )
        # Let the backlog go: its webhook is deleted with its deliveries.
        self.session().delete(
            svc.base + f"/api/v1/webhooks/{hook}",
            headers={"Authorization": f"Bearer {limited['key']}"},
            timeout=60,
        ).raise_for_status()
        without += runs("without the backlog, after it", reps=max(1, self.args.reps - before))
        base_rate = med([r["rate"] for r in without])
        with_rate = med([r["rate"] for r in with_backlog])
        res["flow"] = {
            "without": [r["rate"] for r in without],
            "with": [r["rate"] for r in with_backlog],
            "ratio": with_rate / base_rate if base_rate else float("nan"),
            "waiting": waiting_before,
            "max_leased": max(leased, default=0),
            "limited_attempts": attempts,
            "limited_rate": attempts / seconds if seconds else float("nan"),
        }
        f = res["flow"]
        log(f"flow: {f['waiting']} deliveries waiting for a 1/s limit; the others "
            f"{with_rate:.0f}/s against {base_rate:.0f}/s without ({100 * f['ratio']:.0f} %); "
            f"the limited webhook held at most {f['max_leased']} lease(s) at once and started "
            f"{attempts} attempts in {seconds:.0f} s")  # fmt: skip

    def fanout(self, svc: Service, ws: dict, res: dict) -> None:
        n = len(ws["webhooks"])
        runs = []
        for _ in range(self.args.fanout_reps):
            before = svc.db.succeeded(ws["id"])
            t0, elapsed, eid, count = self.publish(svc, ws["key"])
            got = self.wait_arrivals(eid, n, self.args.deadline)
            last = max((a.at for a in got), default=float("nan"))
            end = time.monotonic() + 30
            while svc.db.succeeded(ws["id"]) < before + n and time.monotonic() < end:
                time.sleep(0.05)
            recorded = time.time() - t0
            runs.append(
                {
                    "api_ms": elapsed * 1000,
                    "delivery_count": count,
                    "arrived": len(got),
                    "all_arrived_s": last - t0,
                    "all_recorded_s": recorded,
                    "rate": len(got) / (last - t0) if got else 0,
                }
            )
            log(f"fan-out: API {elapsed * 1000:.0f} ms for {count} deliveries; "
                f"{len(got)} arrived in {last - t0:.1f} s ({runs[-1]['rate']:.0f}/s)")  # fmt: skip
        res["fanout"] = runs

    def isolation(self, svc: Service, ws: dict, res: dict) -> None:
        healthy = ws["healthy"]
        base = res.get("throughput", {}).get("runs")
        base_seconds = med([r["seconds"] for r in base]) if base else 10.0
        deadline = min(max(3 * base_seconds + 5, 20.0), self.args.isolation_max)
        self.receiver.hang_stats()  # resets the max
        hanging = []

        def tick() -> None:
            try:
                hanging.append(self.receiver.hang_stats()["max_open"])
            except OSError:
                pass

        # As fast as the API takes events: the healthy webhooks' share of the throughput, over
        # as many runs as the throughput (one run is noisy next to an 80 % line).
        before = self.cpu_snapshot(svc)
        runs = []
        for i in range(self.args.reps):
            x = self.load(svc, ws, healthy, events=self.args.events, deadline=deadline,
                          on_tick=tick)  # fmt: skip
            runs.append(x)
            log(f"isolation run {i + 1}: healthy {x['deliveries']}/{x['expected']} in "
                f"{x['seconds']:.1f} s = {x['rate']:.0f}/s, p99 {x['p99']:.0f} ms (saturated), "
                f"longest gap {x['max_gap']:.1f} s")  # fmt: skip
        after = self.cpu_snapshot(svc)
        healthy_total = max(1, sum(x["deliveries"] for x in runs))
        per = {role: 1000 * (after[role] - before.get(role, after[role])) / healthy_total
               for role in after}  # fmt: skip
        ranked = sorted(per.items(), key=lambda x: -x[1])
        log("isolation: CPU per healthy delivery: "
            + ", ".join(f"{role} {ms:.2f}" for role, ms in ranked))  # fmt: skip
        r = dict(sorted(runs, key=lambda x: x["rate"])[len(runs) // 2])  # the median run
        r["rates"] = [x["rate"] for x in runs]
        r["cpu_ms_per_healthy_delivery"] = per
        r["max_gap"] = max(x["max_gap"] for x in runs)
        r["api_max"] = max(x["api_max"] for x in runs)
        r["publish_errors"] = sum(x["publish_errors"] for x in runs)
        r["first_error"] = next((x["first_error"] for x in runs if x["first_error"]), None)
        # At half the throughput rate: latency that is not just the backlog of a saturated run
        # (whose p99 grows with the run's length, hanging targets or not).
        base_rate = med([x["rate"] for x in base]) if base else r["rate"] / 0.8
        pace = 0.5 * base_rate / len(ws["webhooks"])
        paced = self.load(svc, ws, healthy, events=self.args.events // 2, deadline=deadline,
                          on_tick=tick, pace=pace)  # fmt: skip
        r["paced"] = paced | {"pace": pace}
        r["max_gap"] = max(r["max_gap"], paced["max_gap"])
        r["max_hanging"] = max(hanging, default=0)
        r["deadline"] = deadline
        res["isolation"] = r
        log(f"isolation at {pace:.0f} events/s: healthy {paced['deliveries']}/"
            f"{paced['expected']} in {paced['seconds']:.1f} s, p50 {paced['p50']:.0f} ms, "
            f"p99 {paced['p99']:.0f} ms, longest gap {r['max_gap']:.1f} s, at most "
            f"{r['max_hanging']} requests hanging at once")  # fmt: skip

    def logs(self, svc: Service, seeded: dict, res: dict) -> None:
        ws = seeded["workspaces"]["logs"]
        rows = self.args.log_rows if svc.db.kind == "postgres" else self.args.log_rows_sqlite
        t = time.monotonic()
        conn = svc.db.connect()
        if svc.db.kind == "postgres":
            conn.autocommit = False
            logdata.load_postgres(conn, ws["id"], ws["webhooks"], TYPES, rows)
            conn.autocommit = True
        else:
            logdata.load_sqlite(conn, ws["id"], ws["webhooks"], TYPES, rows)
        load_s = time.monotonic() - t
        attempts = svc.db.scalar("SELECT count(*) FROM attempts")
        log(f"logs: loaded {rows} deliveries and attempts in {load_s:.0f} s "
            f"({attempts} attempts in the database)")  # fmt: skip

        # Sign in to the dashboard (as the logs workspace's user).
        page = requests.Session()
        form = page.get(svc.base + "/login", timeout=10).text
        import re

        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', form) or re.search(
            r'name="csrf_token"[^>]*value="([^"]+)"', form
        )
        user = seeded["user"]
        r = page.post(
            svc.base + "/login",
            data={"email": user["email"], "password": user["password"],
                  "csrf_token": token.group(1) if token else ""},
            timeout=10, allow_redirects=False,
        )  # fmt: skip
        if r.status_code not in (302, 303):
            raise RuntimeError(f"dashboard sign-in failed ({r.status_code})")

        # The middle of the log: where the deep cursor starts and the time window is centred.
        now = datetime.now(UTC).replace(tzinfo=None)
        mid = now - timedelta(milliseconds=logdata.STEP_MS * rows / 2)
        mid_param = mid if svc.db.kind == "postgres" else mid.strftime("%Y-%m-%d %H:%M:%S.%f")
        created, did = svc.db.row(
            "SELECT created_at, id FROM deliveries WHERE workspace_id = %s AND created_at <= %s "
            "ORDER BY created_at DESC, id DESC LIMIT 1",
            ws["id"],
            mid_param,
        )
        if isinstance(created, str):
            created = datetime.fromisoformat(created)
        cursor = deep_cursor(created, did)
        values = {
            "webhook_id": ws["webhooks"][3],
            "status": "failed",
            "event_type": TYPES[2],
            "since": (mid - timedelta(hours=12)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "until": (mid + timedelta(hours=12)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        names = list(values)
        timings: dict[str, list[tuple[str, float]]] = {}
        api_headers = {"Authorization": f"Bearer {ws['key']}"}
        endpoints = (
            ("api", svc.base + "/api/v1/deliveries", self.session(), api_headers),
            ("page", svc.base + "/settings/webhooks/logs", page, {}),
        )
        budget_end = time.monotonic() + self.args.logs_budget
        errors: list[str] = []

        def slow(ms: float) -> bool:
            """Slow enough that one sample says it, or out of time."""
            return ms > 200 or time.monotonic() > budget_end

        for mask in range(1 << len(names)):
            combo = {n: values[n] for i, n in enumerate(names) if mask >> i & 1}
            label = "+".join(combo) or "(none)"
            for kind, url, sess, headers in endpoints:
                for depth, extra in (("first", {}), ("deep", {"cursor": cursor})):
                    q = urlencode({**combo, **extra})
                    ms = median_get_ms(kind, url, sess, headers, q, errors, enough=slow)
                    timings.setdefault(f"{kind} {depth}", []).append((label, ms))
        # Finding a delivery: ids, words of a title (common, rare, absent), retrying; alone and
        # with the filters that narrow the most.
        searches = {
            "q=event id": {"q": "evt_bench" + f"{rows // 20:012d}"},
            "q=delivery id": {"q": "dlv_bench" + f"{rows // 2:012d}"},
            "q=common word": {"q": "disk"},
            "q=rare word": {"q": "zebra"},
            "q=absent word": {"q": "nothingmatches"},
            "q=two words": {"q": "public bucket"},
            "q=rare word+webhook": {"q": "zebra", "webhook_id": values["webhook_id"]},
            "q=common word+failed+type": {"q": "disk", "status": "failed",
                                          "event_type": values["event_type"]},
            "status=retrying": {"status": "retrying"},
            "status=retrying+webhook": {"status": "retrying", "webhook_id": values["webhook_id"]},
        }  # fmt: skip
        for label, combo in searches.items():
            for kind, url, sess, headers in endpoints:
                ms = median_get_ms(kind, url, sess, headers, urlencode(combo), errors)
                timings.setdefault(f"{kind} search", []).append((label, ms))
        # How many rows the slowest combinations match (an empty result scans the most).
        matched = {}
        for v in timings.values():
            label = max(v, key=lambda x: x[1])[0]
            if label not in matched and not label.startswith(("q=", "status=")):
                combo = {} if label == "(none)" else {n: values[n] for n in label.split("+")}
                matched[label] = count_matching(svc.db, ws["id"], combo)
        res["logs"] = {
            "matched": matched,
            "rows": rows,
            "attempts": attempts,
            "load_s": load_s,
            "timings": timings,
            "errors": errors,
        }
        if errors:
            log(f"logs: {len(errors)} requests failed, e.g. {errors[0]}")
        for k, v in timings.items():
            worst = max(v, key=lambda x: x[1])
            log(f"logs {k}: median {med([x[1] for x in v]):.1f} ms, worst {worst[1]:.1f} ms "
                f"({worst[0]}) over {len(v)} filter combinations")  # fmt: skip

    def memory_run(self, svc: Service, ws: dict, res: dict) -> None:
        k = len(ws["webhooks"])
        events = max(1, self.args.memory_deliveries // k)
        r = self.load(svc, ws, k, events=events, deadline=3600)
        res["memory_run"] = r
        log(f"memory run: {r['deliveries']} deliveries at {r['rate']:.0f}/s")

    def profile(self, svc: Service, ws: dict, res: dict) -> None:
        spy = VENV_BIN / "py-spy"
        if not spy.exists():
            log("py-spy is missing (pip install py-spy into .venv): profile skipped")
            return
        worker = svc.procs[self.args.profile_role][0].pid
        sub = ["--subprocesses"] if self.args.profile_role == "web" else []  # gunicorn's workers
        out = self.work / f"profile-{svc.db.kind}.txt"
        k = len(ws["webhooks"])
        seconds = self.args.profile_seconds
        before = svc.db.succeeded(ws["id"])
        spy_proc = subprocess.Popen(
            [str(spy), "record", "--pid", str(worker), "--duration", str(int(seconds)),
             "--rate", "200", "--idle", "--nonblocking", "--format", "raw", "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        cpu_out = self.work / f"profile-cpu-{svc.db.kind}.txt"
        cpu_proc = subprocess.Popen(
            [str(spy), "record", "--pid", str(worker), "--duration", str(int(seconds)),
             "--rate", "200", "--gil", "--nonblocking", "--format", "raw", "-o", str(cpu_out),
             *sub],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        runs = res.get("throughput", {}).get("runs")
        rate = med([r["rate"] for r in runs]) if runs else 100.0
        events = max(10, int(rate * (seconds + 2) / k))  # enough to keep it busy throughout
        try:
            time.sleep(0.5)  # attached
            t0 = time.time()
            loaded = self.load(svc, ws, k, events=events, deadline=seconds + 0.5)
            done = svc.db.succeeded(ws["id"]) - before
            wall = time.time() - t0
            _, err = spy_proc.communicate(timeout=seconds + 30)
            cpu_proc.wait(timeout=30)
        finally:
            for proc in (spy_proc, cpu_proc):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
        # Drain what was published before going on (the publishers stop at the deadline).
        published = (events - loaded["unpublished"]) * k
        end = time.monotonic() + self.args.deadline
        while svc.db.succeeded(ws["id"]) < before + published and time.monotonic() < end:
            time.sleep(0.2)
        if not out.exists():
            log(f"py-spy failed: {err.decode()[-500:]}")
            return
        keep = ROOT / "bench" / "results" / out.name
        keep.parent.mkdir(exist_ok=True)
        shutil.copy(out, keep)
        analysed = prof.analyse(out)
        per_worker = done / max(1, svc.workers) * (seconds / max(wall, 0.1))
        res["profile"] = prof.render(analysed, seconds, per_worker)
        if cpu_out.exists():
            shutil.copy(cpu_out, keep.parent / cpu_out.name)
            cpu = prof.render_cpu(prof.analyse_cpu(cpu_out), seconds, 200, per_worker)
            title = "CPU of the whole worker process (py-spy --gil, every thread):"
            res["profile"] += f"\n\n{title}\n\n{cpu}"
        log(f"profile of worker {worker} ({svc.db.kind}):\n{res['profile']}")

    # -- one database --

    def run_db(self, kind: str) -> None:
        res: dict = {}
        self.results["db"][kind] = res
        work = self.work / kind
        work.mkdir()
        db = Database(kind, work, self.args.pg_url)
        self.databases.append(db)
        svc = Service(db, work, self.redis_url, self.args.workers, self.certs.ca)
        # The throwaway Redis is shared by the two runs: start each on an empty one.
        import redis as redis_lib

        redis_lib.Redis.from_url(self.redis_url).flushall()
        sampler = None
        try:
            self.timed(f"{kind}: migrations", svc.release)
            k = self.args.webhooks
            n_hang = max(1, round(k * 0.1))
            spec = {
                "workspaces": {
                    "latency": {"urls": [self.receiver.url("latency")]},
                    "throughput": {"urls": [self.receiver.url(f"tp/{i}") for i in range(k)]},
                    "limited": {"urls": [self.receiver.url("limited")]},
                    "isolation": {
                        "urls": [self.receiver.hang_url(f"{i}") for i in range(n_hang)]
                        + [self.receiver.url(f"iso/{i}") for i in range(k - n_hang)]
                    },
                    "fanout": {
                        "urls": [self.receiver.url(f"fo/{i}") for i in range(self.args.fanout)]
                        if self.wants("fanout")
                        else []
                    },
                    "logs": {
                        "urls": [self.receiver.url(f"logs/{i}") for i in range(50)],
                        "active": False,
                    },
                },
                "user": {"email": "bench@example.com", "password": "bench-password-1",
                         "workspace": "logs"},
            }  # fmt: skip
            seeded = self.timed(f"{kind}: seed", svc.seed, spec)
            seeded["workspaces"]["isolation"]["healthy"] = k - n_hang
            wss = seeded["workspaces"]
            self.timed(f"{kind}: start", svc.start)
            sampler = Sampler(svc)
            sampler.start()
            # Warm up every process (imports, pools, kept-alive connections) end to end.
            for _ in range(5):
                _, _, eid, _ = self.publish(svc, wss["latency"]["key"])
                if not self.wait_arrivals(eid, 1, 30):
                    raise RuntimeError(f"warm-up delivery never arrived; see {work}")
            self.load(svc, wss["throughput"], k, events=max(5, self.args.events // 10),
                      deadline=60)  # fmt: skip
            if self.wants("latency"):
                self.timed(f"{kind}: latency", self.latency, svc, wss["latency"], res)
            if self.wants("throughput"):
                self.timed(f"{kind}: throughput", self.throughput, svc, wss["throughput"], res)
            if self.wants("flow"):
                self.timed(f"{kind}: flow control", self.flow, svc, wss, res)
            if self.wants("profile") and self.args.profile_seconds > 0:
                self.timed(f"{kind}: profile", self.profile, svc, wss["throughput"], res)
            if self.wants("fanout"):
                self.timed(f"{kind}: fan-out", self.fanout, svc, wss["fanout"], res)
            if self.args.memory_deliveries:
                self.timed(f"{kind}: memory run", self.memory_run, svc, wss["throughput"], res)
            if self.wants("logs"):
                self.timed(f"{kind}: logs at scale", self.logs, svc, seeded, res)
            if self.wants("isolation"):  # last: hanging requests hold workers afterwards
                self.timed(f"{kind}: isolation", self.isolation, svc, wss["isolation"], res)
            res["deliveries_total"] = svc.db.scalar(
                "SELECT count(*) FROM attempts WHERE request_url NOT LIKE 'http://127.0.0.1/hook'"
            )
        finally:
            if sampler:
                sampler.halt.set()
                sampler.join(2)
                res["memory"] = sampler.by_role()
            svc.stop()
            db.drop()
            self.databases.remove(db)

    # -- all of it --

    def run(self) -> None:
        a = self.args
        self.results["meta"] = machine()
        self.results["meta"]["args"] = {k: v for k, v in vars(a).items() if k != "only"}
        self.results["meta"]["only"] = sorted(a.only)
        log(f"work dir {self.work}; {a.workers} workers; phases: {', '.join(sorted(a.only))}")
        self.start_redis()
        self.certs = tls.make(self.work / "tls")
        self.receiver = Receiver(self.work, self.certs)
        self.receiver.start()
        if self.wants("receiver"):
            self.timed("receiver capacity", self.receiver_capacity)
        if self.wants("raw"):
            self.timed("raw ceiling", self.raw_ceiling)
        service_phases = {"latency", "throughput", "flow", "fanout", "logs", "isolation", "profile"}
        if a.only & service_phases or a.memory_deliveries:
            for kind in a.db:
                try:
                    self.timed(f"{kind}: total", self.run_db, kind)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception:  # noqa: BLE001 - report, and go on with the other database
                    log(f"{kind} run failed:\n{traceback.format_exc()}")
                    self.results["db"].setdefault(kind, {})["error"] = traceback.format_exc()
        if self.receiver.log.duplicates:
            log(f"note: {self.receiver.log.duplicates} deliveries arrived more than once")

    def cleanup(self) -> None:
        procs.kill_all()
        for db in list(self.databases):
            db.drop()
        if self.args.keep:
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def median_get_ms(
    kind: str,
    url: str,
    sess: requests.Session,
    headers: dict,
    q: str,
    errors: list[str],
    enough: Any = None,
) -> float:
    """Up to 3 GETs of `url?q`, their median in ms; `enough` of one sample stops early, and an
    answer other than 200 is noted in `errors`."""
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        r = sess.get(f"{url}?{q}", headers=headers, timeout=60)
        samples.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            errors.append(f"{kind} ?{q} answered {r.status_code}")
        if enough is not None and enough(samples[-1]):
            break
    return med(samples)


def count_matching(db: Database, workspace_id: str, combo: dict[str, str]) -> int:
    sql = "SELECT count(*) FROM deliveries WHERE workspace_id = %s"
    params: list = [workspace_id]
    for name, value in combo.items():
        if name in ("since", "until"):
            moment = datetime.fromisoformat(value.replace("Z", ""))
            sql += " AND created_at " + (">= %s" if name == "since" else "< %s")
            params.append(moment if db.kind == "postgres" else str(moment) + ".000000")
        else:
            sql += f" AND {name} = %s"
            params.append(value)
    return db.scalar(sql, *params)


def deep_cursor(created: datetime, delivery_id: str) -> str:
    """A page cursor at (created, id), made by the service's own encoder when it has one."""
    try:
        from webhooks.logs import encode_cursor

        return encode_cursor(SimpleNamespace(created_at=created, id=delivery_id))
    except Exception:  # noqa: BLE001
        raw = json.dumps([created.isoformat(), delivery_id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout
    total = next((ln.split()[1] for ln in mem.splitlines() if ln.startswith("Mem:")), "?")
    load = os.getloadavg()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "memory": total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_files": len(
            _git("status", "--porcelain", "--untracked-files=no").splitlines()
        ),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# -- the report ---------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("PASS" if ok else "MISS")


def cell(d: dict, fn, ok=None) -> str:  # noqa: ANN001
    """A table cell: `fn` of one database's results, then the verdict of `ok` on them when it is
    given; "—" when they lack what either reads."""
    try:
        return fn(d) if ok is None else f"{fn(d)} {verdict(ok(d))}"
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return "—"


def ceiling_lines(meta: dict, g: dict) -> list[str]:
    """The receiver's capacity and the three raw ceilings, above the table."""
    lines = []
    rc = g.get("receiver")
    if rc:
        lines.append(
            f"- Receiver (nginx, 1 worker process, 204): {spread(rc['https logged'])} req/s over "
            f"HTTPS with the arrival log on; over plain HTTP {spread(rc['logged'])} req/s with "
            f"it, {spread(rc['unlogged'])} without (wrk, 2 threads, 32 connections kept-alive, "
            "1 KB POST bodies)."
        )
    raw = g.get("raw")
    if raw:
        lines.append(
            f"- Raw ceilings ({meta['args']['workers']} Python processes, one kept-alive "
            "connection each, 1 KB bodies signed like the service's): requests over HTTPS "
            f"{spread(raw['requests https'])}/s (the headline ceiling), urllib3 over HTTPS "
            f"{spread(raw['urllib3 https'])}/s, requests over plain HTTP "
            f"{spread(raw['requests http'])}/s."
        )
    return lines


def ratio_cell(rates: list[float], ceiling: float, urllib3_ceiling: float) -> str:
    """Each run's rate ÷ the requests HTTPS ceiling (median, spread) and the verdict, with the
    median's ratio to the urllib3 ceiling beside it."""
    if ceiling != ceiling:  # NaN: the raw phase did not run
        return "— (no raw phase)"
    ratio = spread([100 * r / ceiling for r in rates])
    beside = f"{100 * med(rates) / urllib3_ceiling:.0f} %" if urllib3_ceiling > 0 else "—"
    return f"{ratio} % {verdict(med(rates) >= ceiling)} (urllib3: {beside})"


def per_delivery_lines(db_title: str, t: dict, nproc: int) -> list[str]:
    """CPU by process kind, Redis commands and SQL statements per delivery (throughput runs)."""
    ranked = sorted(t["cpu_ms_per_delivery"].items(), key=lambda x: -x[1])
    lines = [
        f"- CPU per delivery on {db_title} (throughput runs): "
        + ", ".join(f"{role} {ms:.2f}" for role, ms in ranked)
        + f" ms; total {t['cpu_total_ms_per_delivery']:.1f} ms CPU for "
        f"{t['wall_ms_per_delivery']:.2f} ms of wall time per delivery on {nproc} cores."
    ]
    calls = t.get("calls_per_delivery", {})
    by_command = {
        n[6:]: v for n, v in calls.items() if n.startswith("redis ") and n != "redis total"
    }
    if by_command:
        top = sorted(by_command.items(), key=lambda x: -x[1])[:8]
        lines.append(
            f"- Redis per delivery on {db_title}: {calls.get('redis total', 0):.1f} commands "
            "(total_commands_processed; by command: "
            + ", ".join(f"{n} {v:.1f}" for n, v in top)
            + ", …; all processes: publishing, limiter, queue, worker, scheduler)."
        )
    statements = {n[15:]: v for n, v in calls.items() if n.startswith("sql statements ")}
    if statements:
        transactions = sum(v for n, v in calls.items() if n.startswith("sql transactions "))
        checkouts = sum(v for n, v in calls.items() if n.startswith("sql checkouts "))
        pg = calls.get("pg transactions")
        lines.append(
            f"- SQL per delivery on {db_title}: {sum(statements.values()):.1f} statements ("
            + ", ".join(f"{r} {v:.1f}" for r, v in sorted(statements.items(), key=lambda x: -x[1]))
            + f") in {transactions:.1f} transactions, {checkouts:.1f} pool checkouts, as the "
            "service's processes count them"
            + (
                f"; PostgreSQL counts {pg:.1f} transactions (a ping of an idle connection is one)"
                if pg
                else ""
            )
            + "."
        )
    return lines


def batch_line(db_title: str, b: dict, ceiling: float, args: dict) -> str:
    """Batch publishing's figure: beside the headline, never in it."""
    what = f"- Batch publishing on {db_title} (POST /events/batch, {BATCH} events a call)"
    if not b.get("available"):
        return f"{what}: not available (the API answers 404/405)."
    rates = [r["rate"] for r in b["runs"]]
    share = ""
    if ceiling == ceiling:  # not NaN: the raw phase ran
        share = f", {100 * med(rates) / ceiling:.0f} % of the requests HTTPS ceiling"
    return (
        f"{what}: {spread(rates)} deliveries/s end to end{share} ({args['events']} events × "
        f"{args['webhooks']} webhooks a run; API call p50 "
        f"{med([r['api_p50'] for r in b['runs']]):.0f} ms, "
        f"{sum(r['publish_errors'] for r in b['runs'])} calls failed)."
    )


def report(results: dict, phase_times: list[tuple[str, float]]) -> str:
    meta, g, dbs = results["meta"], results["global"], results["db"]
    kinds = [k for k in ("sqlite", "postgres") if k in dbs]
    title = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    ceiling = med(g.get("raw", {}).get(HEADLINE, []))
    urllib3_ceiling = med(g.get("raw", {}).get("urllib3 https", []))
    changed = (
        f" with {meta['uncommitted_files']} files changed" if meta.get("uncommitted_files") else ""
    )
    lines = [
        f"Run {meta['date']} on {meta['nproc']} × {meta['cpu']}, {meta['memory']} RAM, "
        f"Linux {meta['kernel']}, Python {meta['python']}; load average at start "
        f"{meta['loadavg_at_start']}; code at {meta.get('commit') or '?'}"
        f"{changed}"
        f". Service: the Procfile's processes, "
        f"{meta['args']['workers']} workers. Medians with (min–max) over the repetitions.",
        "",
    ]
    lines += ceiling_lines(meta, g)
    lines.append("")
    head = "| # | target | measure | " + " | ".join(title[k] for k in kinds) + " | goal |"
    lines += [head, "|" + " --- |" * (4 + len(kinds))]

    def row(n: str, target: str, measure: str, fn, goal: str, ok=None) -> None:  # noqa: ANN001
        """A measure's row: a cell per database, `fn` of its results and the verdict of `ok`."""
        cells = " | ".join(cell(dbs[k], fn, ok) for k in kinds)
        lines.append(f"| {n} | {target} | {measure} | {cells} | {goal} |")

    def tp(d: dict) -> list[float]:
        return [r["rate"] for r in d["throughput"]["runs"]]

    row("1", "throughput", "deliveries/s end to end", lambda d: spread(tp(d)), "")
    row("1", "throughput", "÷ requests HTTPS ceiling (÷ urllib3 HTTPS ceiling)",
        lambda d: ratio_cell(tp(d), ceiling, urllib3_ceiling),
        f"≥ 100 % of the requests HTTPS ceiling ({ceiling:.0f}/s)")  # fmt: skip
    row("1", "throughput", "publish→arrival p50 / p99 under load",
        lambda d: f"{med([r['p50'] for r in d['throughput']['runs']]):.0f} / "
                  f"{med([r['p99'] for r in d['throughput']['runs']]):.0f} ms", "")  # fmt: skip
    row("1", "flow control", "the others' rate with 1,000 waiting for a 1/s limit (÷ without)",
        lambda d: f"{spread(d['flow']['with'])}/s ÷ {spread(d['flow']['without'])}/s "
                  f"= {100 * d['flow']['ratio']:.0f} %",
        "≥ 95 %", ok=lambda d: d["flow"]["ratio"] >= 0.95)  # fmt: skip
    row("1", "flow control", "threads held by the waiting deliveries (most leased at once)",
        lambda d: f"{d['flow']['max_leased']} of {d['flow']['waiting']} waiting; "
                  f"{d['flow']['limited_rate']:.2f} starts/s",
        "≤ 1 (its burst)", ok=lambda d: d["flow"]["max_leased"] <= 1)  # fmt: skip
    row("2", "latency at idle", "publish→arrival p50",
        lambda d: f"{spread(d['latency']['p50_chunks'], '{:.1f}')} ms",
        "≤ 15 ms", ok=lambda d: d["latency"]["p50"] <= 15)  # fmt: skip
    row("2", "latency at idle", "publish→arrival p99", lambda d: f"{d['latency']['p99']:.1f} ms",
        "≤ 50 ms", ok=lambda d: d["latency"]["p99"] <= 50)  # fmt: skip
    row("2", "latency at idle", "of which the API call (p50)",
        lambda d: f"{d['latency']['api_p50']:.1f} ms", "")  # fmt: skip
    row("3", "fan-out 1,000", "API answer",
        lambda d: f"{spread([r['api_ms'] for r in d['fanout']])} ms",
        "≤ 100 ms", ok=lambda d: med([r["api_ms"] for r in d["fanout"]]) <= 100)  # fmt: skip
    row("3", "fan-out 1,000", "all arrived (rate)",
        lambda d: f"{spread([r['all_arrived_s'] for r in d['fanout']], '{:.1f}')} s "
                  f"({med([r['rate'] for r in d['fanout']]):.0f}/s)",
        "at the throughput target's rate",
        ok=lambda d: med([r["rate"] for r in d["fanout"]]) >= ceiling)  # fmt: skip
    row("4", "isolation (10 % hang)", "healthy deliveries/s (÷ throughput)",
        lambda d: f"{spread(d['isolation'].get('rates', [d['isolation']['rate']]))}/s "
                  f"({100 * d['isolation']['rate'] / med(tp(d)):.0f} %)",
        "≥ 80 %", ok=lambda d: d["isolation"]["rate"] >= 0.8 * med(tp(d)))  # fmt: skip
    row("4", "isolation (10 % hang)", "healthy publish→arrival p50 / p99 at half the throughput",
        lambda d: f"{d['isolation']['paced']['p50'] / 1000:.2f} / "
                  f"{d['isolation']['paced']['p99'] / 1000:.2f} s"
                  f"{'' if d['isolation']['paced']['complete'] else ' (censored at the deadline)'}",
        "p99 ≤ 2 s", ok=lambda d: d["isolation"]["paced"]["p99"] <= 2000)  # fmt: skip
    row("4", "isolation (10 % hang)", "longest stall of healthy arrivals; hanging at once",
        lambda d: f"{d['isolation']['max_gap']:.1f} s; "
                  f"{d['isolation']['max_hanging']} POSTs hanging",
        "a dead target never occupies all workers",
        ok=lambda d: d["isolation"]["max_gap"] < 2)  # fmt: skip
    row("4", "isolation (10 % hang)", "publish API meanwhile: slowest call; failed calls",
        lambda d: f"{d['isolation']['api_max'] / 1000:.1f} s; "
                  f"{d['isolation']['publish_errors']} failed"
                  + (f" ({d['isolation']['first_error'].split(':')[0]})"
                     if d["isolation"]["first_error"] else ""), "")  # fmt: skip

    def logs_cell(d: dict, key: str) -> str:
        v = d["logs"]["timings"][key]
        worst = max(v, key=lambda x: x[1])
        n = d["logs"].get("matched", {}).get(worst[0])
        rows = f", {n:,} rows" if n is not None else ""
        return (f"{med([x[1] for x in v]):.0f} ms, worst {worst[1]:.0f} ms ({worst[0]}{rows}) "
                f"{verdict(worst[1] <= 50)}")  # fmt: skip

    for key, what in (("api first", "API, first page"), ("api deep", "API, deep cursor page"),
                      ("page first", "logs page, first page"),
                      ("page deep", "logs page, deep cursor page"),
                      ("api search", "API, search and Retrying"),
                      ("page search", "logs page, search and Retrying")):  # fmt: skip
        if not any(key in dbs[k].get("logs", {}).get("timings", {}) for k in kinds):
            continue
        combos = "10 searches" if "search" in key else "32 filter combinations"
        row("5", "logs at scale", f"{what}: median, worst of {combos}",
            lambda d, key=key: logs_cell(d, key), "≤ 50 ms")  # fmt: skip
    row("5", "logs at scale", "rows (deliveries = attempts in the log workspace)",
        lambda d: f"{d['logs']['rows']:,}", "1,000,000")  # fmt: skip
    row("6", "memory", "worker RSS: max (first → last sample)",
        lambda d: f"{d['memory']['worker']['max']:.0f} MB ({d['memory']['worker']['first']:.0f} "
                  f"→ {d['memory']['worker']['last']:.0f})",
        "≤ 100 MB", ok=lambda d: d["memory"]["worker"]["max"] <= 100)  # fmt: skip
    row("6", "memory", "deliveries made during the run",
        lambda d: f"{d['deliveries_total']:,}", "100,000")  # fmt: skip
    row("", "other processes", "max RSS: web (gunicorn, per process) / scheduler",
        lambda d: f"{d['memory']['web']['max']:.0f} / {d['memory']['scheduler']['max']:.0f} MB",
        "")  # fmt: skip
    lines.append("")
    for k in kinds:
        d = dbs[k]
        if "error" in d:
            lines.append(f"{title[k]} run failed: `{d['error'].strip().splitlines()[-1]}`")
        if d.get("throughput"):
            lines += per_delivery_lines(title[k], d["throughput"], meta["nproc"])
        if d.get("batch"):
            lines.append(batch_line(title[k], d["batch"], ceiling, meta["args"]))
        iso = (d.get("isolation") or {}).get("cpu_ms_per_healthy_delivery")
        if iso:
            parts = ", ".join(
                f"{role} {ms:.2f}" for role, ms in sorted(iso.items(), key=lambda x: -x[1]) if ms
            )
            lines.append(
                f"- CPU per healthy delivery on {title[k]} (isolation, saturated): {parts} ms; "
                f"total {sum(iso.values()):.1f} ms (the hanging webhook's deliveries are "
                "published, claimed and passed to the slow lane too)."
            )
    lines.append("")
    lines.append("Phase times: " + ", ".join(f"{n} {s:.0f} s" for n, s in phase_times))
    return "\n".join(lines)


# -- entry point --------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--only",
        default=",".join(PHASES),
        help=f"comma-separated phases among {', '.join(PHASES)} (default: all)",
    )
    p.add_argument("--skip", default="", help="comma-separated phases to leave out")
    p.add_argument(
        "--db", default="sqlite,postgres", help="sqlite, postgres, both, or sqlite,postgres"
    )
    p.add_argument(
        "--pg-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server where the bench may create and drop its own database",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="worker processes of the service = raw-ceiling client processes",
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions of the cheap measures")
    p.add_argument("--raw-seconds", type=float, default=3.0)
    p.add_argument("--events", type=int, default=400, help="events per throughput run")
    p.add_argument("--webhooks", type=int, default=10, help="webhooks per event (throughput)")
    p.add_argument("--publishers", type=int, default=4, help="publishing threads")
    p.add_argument("--deadline", type=float, default=120.0, help="seconds a run may take")
    p.add_argument("--latency-samples", type=int, default=200)
    p.add_argument("--fanout", type=int, default=1000, help="webhooks of the fan-out event")
    p.add_argument("--fanout-reps", type=int, default=2)
    p.add_argument(
        "--flow-backlog", type=int, default=1000, help="deliveries waiting for a 1/s limit (flow)"
    )
    p.add_argument(
        "--isolation-max",
        type=float,
        default=40.0,
        help="longest the isolation run waits for the healthy deliveries",
    )
    p.add_argument("--log-rows", type=int, default=1_000_000, help="PostgreSQL")
    p.add_argument("--log-rows-sqlite", type=int, default=1_000_000)
    p.add_argument(
        "--logs-budget",
        type=float,
        default=60.0,
        help="seconds after which each logs query is timed once",
    )
    p.add_argument(
        "--memory-deliveries",
        type=int,
        default=0,
        help="a dedicated long run of this many deliveries (e.g. 100000)",
    )
    p.add_argument("--profile-seconds", type=float, default=8.0)
    p.add_argument(
        "--profile-role",
        default="worker",
        choices=("worker", "web"),
        help="the process the profile phase samples (web: gunicorn's workers)",
    )
    p.add_argument(
        "--out",
        default=str(ROOT / "bench" / "results"),
        help="where latest.md and latest.json are written",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for debugging")
    a = p.parse_args(argv)
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    skip = {x.strip() for x in a.skip.split(",") if x.strip()}
    unknown = (only | skip) - set(PHASES)
    if unknown:
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    a.only = only - skip
    names = [x.strip() for x in a.db.split(",") if x.strip()]
    a.db = ["sqlite", "postgres"] if names == ["both"] else names
    if not a.db or set(a.db) - {"sqlite", "postgres"}:
        p.error(f"--db takes sqlite, postgres or both, not {a.db!r}")
    return a


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    bench = Bench(args)

    def terminate(signum, _frame):  # noqa: ANN001
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    started = time.monotonic()
    status = 0
    try:
        bench.run()
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        status = 130
    except Exception:  # noqa: BLE001
        log(f"failed:\n{traceback.format_exc()}")
        status = 1
    finally:
        bench.cleanup()
    bench.phase_times.append(("all", time.monotonic() - started))
    text = report(bench.results, bench.phase_times)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(text + "\n")
    (out / "latest.json").write_text(json.dumps(bench.results, indent=1, default=str))
    print("\n" + text + "\n")
    log(f"written to {out / 'latest.md'} and latest.json")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
