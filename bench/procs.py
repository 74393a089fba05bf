"""Processes the benchmark starts, and how it looks at them: /proc for RSS, CPU and children.

Every process is started in a session of its own and registered here; `kill_all` ends each
group (SIGTERM, then SIGKILL), in reverse order of start, however the run ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
_started: list[subprocess.Popen] = []


def start(cmd: list[str] | str, *, log: Path, env: dict | None = None, cwd=None, shell=False):
    """Start a process in its own session, output to `log`; it is killed by kill_all."""
    out = open(log, "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        shell=shell,
        start_new_session=True,
    )
    proc._bench_log = out  # type: ignore[attr-defined]
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """End a process started here, and everything in its process group."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(proc, signal.SIGKILL)  # stragglers in the group (gunicorn workers, nginx)
    try:
        proc.wait(2)
    except subprocess.TimeoutExpired:
        pass
    log = getattr(proc, "_bench_log", None)
    if log is not None and not log.closed:
        log.close()
    if proc in _started:
        _started.remove(proc)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # its own session: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass


def kill_all() -> None:
    for proc in reversed(list(_started)):
        stop(proc, grace=3.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# -- /proc ------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process (not its children)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def parents() -> dict[int, int]:
    """Every process's parent, in one pass over /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        found[int(entry.name)] = int(raw[raw.rindex(")") + 2 :].split()[1])
    return found


def trees(roots: list[int]) -> dict[int, list[int]]:
    """Each of `roots` with all its descendants, from one pass over /proc: a pass reads every
    process's stat file, and the bench samples while the service it measures shares the cores
    (one pass per process of each tree cost a tenth of a core)."""
    kids: dict[int, list[int]] = {}
    for child, parent in parents().items():
        kids.setdefault(parent, []).append(child)
    out = {}
    for root in roots:
        found, todo = [], [root]
        while todo:
            p = todo.pop()
            found.append(p)
            todo.extend(kids.get(p, ()))
        out[root] = found
    return out


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    return trees([pid])[pid]
