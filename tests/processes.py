"""The app's command line as real subprocesses: the Procfile's long-running processes, sharing a
test's configuration, and commands run to their end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FLASK = [sys.executable, "-m", "flask", "--app", "app"]


def flask(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """`flask --app app <args>` run to its end in the project's folder, its output kept."""
    return subprocess.run(
        [*FLASK, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


class Processes:
    """The Procfile's worker and scheduler as real subprocesses, sharing the test's config."""

    def __init__(self, config: dict[str, Any], instance: Path) -> None:
        self.env = {**os.environ, "INSTANCE_PATH": str(instance)}
        self.env.update({k: str(v) for k, v in config.items() if k.isupper() and k != "TESTING"})
        self.running: dict[str, subprocess.Popen] = {}
        self.logs = instance.parent / "process-logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        command = [*FLASK, name.split(":")[0], *args]
        with open(self.log_path(name), "ab") as log:
            proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=log)
        self.running[name] = proc
        return proc

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name.replace(':', '-')}.log"

    def log(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")

    def kill(self, name: str) -> None:
        proc = self.running.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.running.values():
            proc.terminate()
        for proc in self.running.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.running.clear()
