"""Instructions per publish call and per delivery, counted by callgrind: figures that hold still.

    .venv/bin/python bench/instructions.py [--db sqlite|postgres] [--calls 60] [--rounds 20]

Timings on a shared 2-core machine swing by a third within minutes; instruction counts repeat
to within 1 % run after run, whatever else the machine does. So a change to the hot paths is
measured here first, then end to end with `make bench`. Two paths, each in one process, on a
fresh database and Redis database 9 (flushed after):

- **publish**: `POST /api/v1/events` through the app's WSGI callable (API key, rate limit,
  the event and its 10 deliveries, the wake-up, the answer), `--calls` times;
- **deliver**: a worker's claim of 32, the render and signing of each body, and the record of
  32 successes, `--rounds` times (no POST: `bench/transport_cpu.py` measures that part).

The script runs itself under `valgrind --tool=callgrind` with instrumentation off, switches
it on after the warm-up (`callgrind_control`), and reads the count before and after each
path. What valgrind cannot see: the kernel's part (socket and file system calls), and code
that uses CPU features valgrind does not emulate (OpenSSL's counts run high). Needs Debian's
`valgrind` package; a run takes about two minutes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BATCH = 32


def counted() -> int:
    """Instructions counted so far in this process (all threads)."""
    out = subprocess.run(
        ["callgrind_control", "-e", "Ir", str(os.getpid())], capture_output=True, text=True
    ).stdout
    return sum(int(n.replace(",", "")) for n in re.findall(r"Th +\d+ +([\d,]+)", out))


def per(run: Callable[[], int]) -> float:
    """Instructions per unit of `run` (which returns how many units it did)."""
    before = counted()
    units = run()
    return (counted() - before) / units


def measure(args: argparse.Namespace) -> None:
    from bench.run import Database  # the bench's fresh database, made and dropped alike

    work = tempfile.mkdtemp(prefix="instructions-")
    db = Database(args.db, Path(work), ADMIN_URL)
    os.environ.update(
        {
            "DATABASE_URL": db.url,
            "REDIS_URL": "redis://127.0.0.1:6379/9",
            "INSTANCE_PATH": work,
            "SECRET_KEY": "instructions-secret-key-not-for-production",
            "WEBHOOK_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
            "WEBHOOK_API_RATE_LIMIT": "100000000 per minute",
            "WEBHOOK_MAX_WEBHOOKS": "0",
        }
    )
    flask = str(Path(sys.executable).parent / "flask")
    subprocess.run(
        [flask, "--app", "app", "db", "upgrade"], cwd=ROOT, check=True, capture_output=True
    )
    try:
        _measure(args)
    finally:
        db.drop()
        subprocess.run(["redis-cli", "-n", "9", "flushdb"], stdout=subprocess.DEVNULL, check=False)


def _measure(args: argparse.Namespace) -> None:
    from app import create_app
    from webhooks import (
        accounts,
        claim,
        delivery,
        management,
        outgoing,
        services,
        transport,
    )
    from webhooks.models import db
    from webhooks.schemas import Reading

    app = create_app()
    with app.app_context():
        settings = services.settings()
        workspace, key = accounts.create_workspace(db.session, "instructions")
        for i in range(10):
            url = f"https://127.0.0.1:9999/{i}"
            payload = {"name": f"w{i}", "url": url, "events": ["*"]}
            management.create(db.session, workspace.id, payload, Reading(settings))
        db.session.commit()

    body = json.dumps({"type": "incident.created", "data": {"id": "inc_1", "title": "x" * 700}})
    data = body.encode()
    answers: list[str] = []

    def call() -> None:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/api/v1/events",
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1:8000",
            "HTTP_AUTHORIZATION": f"Bearer {key}",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(data)),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(data),
            "wsgi.errors": sys.stderr,
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        out = app(environ, lambda status, headers, exc=None: answers.append(status))
        b"".join(out)
        getattr(out, "close", lambda: None)()

    def publishes(n: int) -> int:
        for _ in range(n):
            call()
        if not answers[-1].startswith("202"):
            raise SystemExit(f"POST /api/v1/events answered {answers[-1]}")
        return n

    ok = transport.Result(status_code=204, headers={"content-length": "0"}, duration_ms=3)

    def deliveries(rounds: int) -> int:
        done = 0
        with app.app_context():
            for _ in range(rounds):
                claimed = claim.claim(db.session, settings, limit=BATCH)
                db.session.remove()
                for prepared in claimed.prepared:
                    outgoing.render(prepared)
                results: list[tuple[Any, transport.Result]] = [(p, ok) for p in claimed.prepared]
                delivery.record(db.session, results, settings, None)
                db.session.remove()
                done += len(claimed.prepared)
        return done

    publishes(20)  # warm-up: caches, prepared statements, pools
    publishes((2 * args.rounds + 4) * BATCH // 10)  # the backlog the deliver path claims
    deliveries(2)
    subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True)
    publish = per(lambda: publishes(args.calls))
    deliver = per(lambda: deliveries(args.rounds))
    print(f"{args.db}: publish {publish / 1e6:.3f} M instructions a call (10 deliveries)")
    print(f"{args.db}: claim + render + record {deliver / 1e3:.0f} k instructions a delivery")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", default="sqlite", choices=("sqlite", "postgres"))
    p.add_argument("--calls", type=int, default=60, help="publish calls counted")
    p.add_argument("--rounds", type=int, default=20, help=f"claims of {BATCH} counted")
    p.add_argument("--counting", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.counting:
        measure(args)
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("bench/instructions.py needs valgrind: apt-get install valgrind")
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={tempfile.gettempdir()}/instructions.%p.callgrind",
            sys.executable,
            __file__,
            "--counting",
            *sys.argv[1:],
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    for leftover in Path(tempfile.gettempdir()).glob("instructions.*.callgrind*"):
        leftover.unlink()
    lines = [line for line in out.stdout.splitlines() if line.startswith(args.db)]
    if out.returncode != 0 or not lines:
        sys.exit(
            f"the count failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
