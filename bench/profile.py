"""Where a worker's time goes: py-spy samples (wall clock, idle included) sorted into costs.

`py-spy record --idle --format raw` writes one line per distinct stack, root first:
`frame;frame;…;leaf count`, each frame `function (file:line)`. Only the main thread's stacks
are kept (the transport's watchdog thread idles on a condition and would double the wall time).

A second profile (`--gil`: a sample only when a thread holds Python's lock, so CPU spent in
Python) covers every thread: the job thread (RQ, claim), the POST loop and the recorder
thread (`analyse_cpu`, `render_cpu`).

Two views of the same samples:
- by step: waiting for / dequeuing a job (RQ), RQ's own bookkeeping around a job, and inside
  the job: claim, the HTTP POST, record, the rest;
- by what the leaf frame is doing: a DB round trip (driver call), SQLAlchemy's Python, an HTTP
  socket wait, requests/urllib3's Python, Redis round trips, RQ's Python, JSON, signing, ….
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        frames = []
        for raw in stack.split(";"):
            m = _FRAME.match(raw.strip())
            frames.append((m.group("fn"), m.group("file")) if m else (raw.strip(), ""))
        stacks.append((frames, int(count)))
    return stacks


def _main_thread(frames: list[tuple[str, str]]) -> bool:
    return not any(f.startswith("threading.py") and "_bootstrap" in fn for fn, f in frames[:2])


def step_of(frames: list[tuple[str, str]]) -> str:
    names = [fn.rsplit(".", 1)[-1] for fn, _ in frames]  # Class.method -> method
    files = [f for _, f in frames]

    def has(fn: str, file_part: str = "") -> bool:
        return any(n == fn and file_part in f for n, f in zip(names, files, strict=True))

    if has("deliver", "jobs/deliver.py"):
        if has("claim", "webhooks/claim.py"):
            if has("signature_headers") or has("build_headers"):
                return "job: claim - build & sign headers"
            if has("render_body"):
                return "job: claim - render body (JSON)"
            return "job: claim (DB: lease update, load, insert attempt, commit)"
        if has("post", "webhooks/transport.py"):
            return "job: HTTP POST (transport.post)"
        if has("record", "webhooks/delivery.py"):
            return "job: record (DB: update attempt + delivery, commit)"
        if has("remove"):
            return "job: session.remove()"
        return "job: other (settings, setup)"
    if has("perform_job") or has("execute_job"):
        return "RQ: job bookkeeping (before/after the job)"
    if any("dequeue" in n for n in names):
        return "RQ: dequeue / wait for a job"
    if any("heartbeat" in n or "maintenance" in n for n in names):
        return "RQ: heartbeat, maintenance"
    return "other (RQ loop, signals)"


_LIBS = (
    ("sqlalchemy/", "SQLAlchemy (Python)"),
    ("psycopg", "psycopg (Python)"),
    ("sqlite3", "sqlite3 (Python)"),
    ("urllib3/", "requests/urllib3/http.client (Python)"),
    ("requests/", "requests/urllib3/http.client (Python)"),
    ("http/client.py", "requests/urllib3/http.client (Python)"),
    ("webhooks/egress.py", "egress guard"),
    ("webhooks/transport.py", "transport (watchdog, sockets)"),
    ("httptools/", "httptools (llhttp)"),
    ("asyncio/", "asyncio (event loop, TLS)"),
    ("webhooks/aiotransport.py", "app code (webhooks/)"),
    ("redis/", "redis-py (Python)"),
    ("rq/", "RQ (Python)"),
    ("json/", "JSON"),
    ("hmac.py", "signing (hmac)"),
    ("webhooks/signing.py", "signing (hmac)"),
    ("webhooks/crypto.py", "secret decryption (Fernet)"),
    ("cryptography/", "secret decryption (Fernet)"),
    ("logging/", "logging"),
    ("flask", "Flask / Flask-SQLAlchemy"),
    ("werkzeug/", "Flask / Flask-SQLAlchemy"),
    ("webhooks/", "app code (webhooks/)"),
    ("jobs/", "app code (jobs/)"),
)

_DB_CALLS = {"do_execute", "do_executemany", "do_commit", "do_rollback", "_do_commit", "execute"}


def lib_of(frames: list[tuple[str, str]]) -> str:
    """What the leaf is doing: I/O waits are named as such, else the leaf's package."""
    leaf_fn, leaf_file = frames[-1] if frames else ("", "")
    leaf_fn = leaf_fn.rsplit(".", 1)[-1]
    if "sqlalchemy/engine/default.py" in leaf_file and leaf_fn in _DB_CALLS:
        return "DB round trip (driver call: send, server, wait)"
    if "sqlalchemy/" in leaf_file and leaf_fn in ("commit", "rollback", "_do_commit"):
        return "DB round trip (driver call: send, server, wait)"
    if "psycopg" in leaf_file and leaf_fn in (
        "wait", "wait_conn", "_wait", "execute", "_execute_send", "_exec_command", "fetchall",
        "fetchone", "_fetch_pipeline", "commit", "rollback",
    ):  # fmt: skip
        return "DB round trip (driver call: send, server, wait)"
    if "redis/" in leaf_file and leaf_fn in (
        "read_from_socket", "_read_from_socket", "can_read", "send_packed_command", "sendall",
        "read_response", "_read_response", "read",
    ):  # fmt: skip
        return "Redis round trip (send, wait)"
    if (
        leaf_file.endswith("socket.py")
        or leaf_file.endswith("ssl.py")
        or leaf_fn
        in (
            "readinto",
            "recv_into",
            "sendall",
        )
    ):
        for _fn, f in reversed(frames):
            if "redis/" in f:
                return "Redis round trip (send, wait)"
            if "urllib3/" in f or "http/client.py" in f:
                return "HTTP socket I/O (send, wait for the receiver)"
        return "socket I/O (other)"
    if leaf_fn in ("create_connection", "connect") and "connection" in leaf_file:
        return "TCP connect"
    for _fn, f in reversed(frames):
        for part, label in _LIBS:
            if part in f:
                return label
    return "other"


def analyse(path: Path) -> dict:
    stacks = [(f, c) for f, c in parse(path) if _main_thread(f)]
    total = sum(c for _, c in stacks) or 1
    steps: Counter[str] = Counter()
    libs: Counter[str] = Counter()
    in_job: Counter[str] = Counter()
    for frames, count in stacks:
        step = step_of(frames)
        steps[step] += count
        lib = lib_of(frames)
        libs[lib] += count
        if step.startswith("job:"):
            in_job[lib] += count
    return {"total": total, "steps": steps, "libs": libs, "in_job": in_job}


def _table(title: str, counts: Counter[str], total: int, per: float) -> list[str]:
    """A Markdown table: each name's share of the samples and its milliseconds per delivery."""
    return [f"| {title} | share | ms/delivery |", "| --- | ---: | ---: |"] + [
        f"| {name} | {100 * count / total:.1f} % | {per * count / total:.2f} |"
        for name, count in counts.most_common()
    ]


def render(result: dict, wall_seconds: float, deliveries: float) -> str:
    """Markdown: share of the worker's wall time and milliseconds per delivery, each view."""
    total = result["total"]
    per = (wall_seconds * 1000 / deliveries) if deliveries else float("nan")
    return "\n".join(
        [
            f"{total} samples over {wall_seconds:.1f} s; about {deliveries:.0f} deliveries by "
            f"this worker, so {per:.1f} ms of wall time per delivery.",
            "",
            *_table("step", result["steps"], total, per),
            "",
            *_table("leaf activity (whole loop)", result["libs"], total, per),
        ]
    )


def thread_of(frames: list[tuple[str, str]]) -> str:
    """Which of the worker's threads a stack belongs to."""
    if _main_thread(frames):
        return "job thread: " + step_of(frames)
    names = {fn.rsplit(".", 1)[-1] for fn, _ in frames}
    if "run_forever" in names and any("jobs/runtime.py" in f for _, f in frames):
        return "POST loop: render, aiotransport.post"
    if "run_forever" in names:
        return "POST loop: asyncio, TLS, reading answers"
    if "_send" in names and any("jobs/runtime.py" in f for _, f in frames):
        return "POST threads: transport.post (transforms, listen, proxy)"
    if "_record_loop" in names:
        return "recorder thread: record results"
    if "_run" in names and any("webhooks/transport.py" in f for _, f in frames):
        return "transport watchdog"
    return "other threads"


def analyse_cpu(path: Path) -> dict:
    stacks = parse(path)
    total = sum(c for _, c in stacks) or 1
    threads: Counter[str] = Counter()
    libs: Counter[str] = Counter()
    for frames, count in stacks:
        threads[thread_of(frames)] += count
        libs[lib_of(frames)] += count
    return {"total": total, "threads": threads, "libs": libs}


def render_cpu(result: dict, seconds: float, rate: float, deliveries: float) -> str:
    """Markdown: CPU (Python holding the GIL) per delivery, by thread and by library."""
    total = result["total"]
    busy = total / (seconds * rate)
    per = busy * seconds * 1000 / deliveries if deliveries else float("nan")
    return "\n".join(
        [
            f"Python held the GIL {100 * busy:.0f} % of the time: {per:.2f} ms of CPU per "
            "delivery.",
            "",
            *_table("thread: step (CPU)", result["threads"], total, per),
            "",
            *_table("library (CPU)", result["libs"], total, per),
        ]
    )


if __name__ == "__main__":
    import sys

    res = analyse(Path(sys.argv[1]))
    print(render(res, float(sys.argv[2]), float(sys.argv[3])))
