"""Transforms rendered in child processes under hard limits of the operating system.

The sandbox (webhooks/transforms.py) bounds every construct it knows about; these limits hold
where it has a gap (DESIGN.md invariant 7). A few child processes, each run under
  * RLIMIT_AS at the child's own address space when it starts plus `memory` (64 MiB): past it
    an allocation fails, the render stops with the memory bound's error and the child exits;
  * a timer of `cpu` seconds (1 s) of CPU per render (SIGPROF): the render stops with the CPU
    bound's error;
  * RLIMIT_CPU one second past that timer: the kernel kills a child stuck where Python cannot
    stop it (inside one long C call); the render fails with the CPU bound's error.
A child that dies, or does not answer within `wall` seconds, is killed and replaced; the next
render gets a fresh one. Nothing starts before the first transform renders, so webhooks without
a transform pay nothing.

Children are started with `subprocess` (a fresh interpreter that imports the sandbox, 0.1 s
and 50 ms of CPU here) rather than forked: a worker has threads, and fork copies their locks.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from webhooks import transforms
from webhooks.transforms import TransformError

__all__ = ["Limits", "RenderPool", "check", "configure", "pool", "render", "render_many"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    processes: int = 2  # children rendering at once, per process that renders
    memory: int = 64 * MiB  # address space a child may add to its own at start
    cpu: float = 1.0  # seconds of CPU per render
    wall: float = 10.0  # seconds a child may take to answer before it is killed


def memory_message(limits: Limits) -> str:
    return f"rendering needed more than {limits.memory // MiB} MiB of memory"


def cpu_message(limits: Limits) -> str:
    return f"rendering used more than {limits.cpu:g} s of CPU"


# --------------------------------------------------------------------------- the child


class _CpuBound(BaseException):
    """Raised by the CPU timer; a BaseException, so that no `except Exception` swallows it."""


def _on_cpu_timer(signum: int, frame: Any) -> None:
    raise _CpuBound()


def _address_space() -> int:
    """This process's virtual memory size now (VmSize), in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _main() -> None:
    """A child's entry point: `python -c "…; _main()" <read fd> <write fd> <memory> <cpu>`."""
    read_fd, write_fd, memory, cpu = sys.argv[1:5]
    conn = _Pipe(int(read_fd), int(write_fd))
    _serve(conn, Limits(memory=int(memory), cpu=float(cpu)))


class _Pipe:
    """A two-way message pipe over two one-way pipes (multiprocessing's framing and pickle)."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._in = Connection(read_fd, writable=False)
        self._out = Connection(write_fd, readable=False)

    def send(self, message: Any) -> None:
        self._out.send(message)

    def recv(self) -> Any:
        return self._in.recv()

    def poll(self, timeout: float) -> bool:
        return self._in.poll(timeout)

    def close(self) -> None:
        self._in.close()
        self._out.close()


def _serve(conn: _Pipe, limits: Limits) -> None:
    """The child's loop: a batch of calls in, one answer per call out, until the pipe closes."""
    baseline = _address_space()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a killed child leaves no core file
    resource.setrlimit(resource.RLIMIT_AS, (baseline + limits.memory,) * 2)
    signal.signal(signal.SIGPROF, _on_cpu_timer)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent to handle
    conn.send(("ready", baseline))
    while True:
        try:
            calls = conn.recv()
        except (EOFError, OSError):
            return
        for func, args in calls:
            kind, value, retire = _call(func, args, limits)
            conn.send((kind, value, retire))
            if retire:
                return


def _call(func: Callable[..., Any], args: tuple[Any, ...], limits: Limits) -> tuple[str, Any, bool]:
    """("ok", value) or ("error", message), and whether this child must exit, for one call
    under the CPU bound."""
    used = sum(os.times()[:2])
    # The kernel's backstop, a second past the timer (RLIMIT_CPU counts whole seconds).
    soft = math.ceil(used + limits.cpu) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))
    try:
        try:
            signal.setitimer(signal.ITIMER_PROF, limits.cpu)
            return "ok", func(*args), False
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
    except _CpuBound:
        return "error", cpu_message(limits), False
    except MemoryError:
        # What failed to allocate may have left anything half-built: start afresh.
        return "error", memory_message(limits), True
    except TransformError as exc:
        return "error", str(exc), False
    except Exception as exc:  # a bug, not a bound: reported like a render error
        return "error", f"{type(exc).__name__}: {exc}", False


# --------------------------------------------------------------------------- the parent


# Where `webhooks` is, so that a child finds it whatever the working directory.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Child:
    """One render process and the parent's end of its pipes."""

    def __init__(self, limits: Limits) -> None:
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from webhooks.renderpool import _main; _main()",
                    str(to_child),
                    str(from_child),
                    str(limits.memory),
                    str(limits.cpu),
                ],
                pass_fds=(to_child, from_child),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            os.close(to_child)
            os.close(from_child)
        self.conn = _Pipe(to_parent, from_parent)
        try:
            ready, self.baseline = self._answer(limits.wall)
        except BaseException:
            self.stop()
            raise
        if ready != "ready":
            self.stop()
            raise RuntimeError(f"a render process answered {ready!r} when it started")

    def _answer(self, wall: float) -> Any:
        if not self.conn.poll(wall):
            raise TimeoutError
        return self.conn.recv()

    def call_all(
        self, calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]], wall: float
    ) -> list[Any]:
        """Answers in order, as many as the child gave before it died or stalled."""
        self.conn.send(list(calls))
        answers = []
        try:
            for _ in calls:
                answers.append(self._answer(wall))
        except (EOFError, OSError, TimeoutError):
            pass
        return answers

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def exitcode(self, wait: float) -> int | None:
        try:
            return self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        self.conn.close()
        if self.alive:
            self.process.kill()
        self.exitcode(wait=5)


class RenderPool:
    """Up to `limits.processes` children, started on demand and replaced when they die."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._idle: list[_Child] = []
        self._started = 0
        self._free = threading.Condition()
        self.replaced = 0  # children killed or exited after a bound, for tests and logs

    def call(self, calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
        """Run each (function, args) in a child; each answer is its value or a TransformError.

        A call that kills its child (or stalls it) fails with the CPU or memory bound's error;
        the calls after it go to a fresh child."""
        results: list[Any] = []
        while len(results) < len(calls):
            child = self._take()
            pending = calls[len(results) :]
            try:
                answers = child.call_all(pending, self.limits.wall)
            except BaseException:
                self._retire(child)
                raise
            retire = False
            for kind, value, retire in answers:
                results.append(value if kind == "ok" else TransformError(value))
                if retire:
                    break
            if not retire and len(answers) < len(pending):
                results.append(TransformError(self._why_killed(child)))
                retire = True
            if retire:
                self._retire(child)
            else:
                self._give_back(child)
        return results

    def _why_killed(self, child: _Child) -> str:
        if child.exitcode(wait=0.5) in (-signal.SIGXCPU, -signal.SIGKILL, None):
            return cpu_message(self.limits)
        return memory_message(self.limits)

    def _take(self) -> _Child:
        with self._free:
            while True:
                while not self._idle and self._started >= self.limits.processes:
                    self._free.wait()
                if not self._idle:
                    self._started += 1
                    break
                child = self._idle.pop()
                if child.alive:
                    return child
                self._started -= 1  # it died while idle (killed from outside): replace it
                self.replaced += 1
                child.stop()
        try:
            return _Child(self.limits)
        except BaseException:
            with self._free:
                self._started -= 1
                self._free.notify()
            raise

    def _give_back(self, child: _Child) -> None:
        with self._free:
            self._idle.append(child)
            self._free.notify()

    def _retire(self, child: _Child) -> None:
        child.stop()
        with self._free:
            self._started -= 1
            self.replaced += 1
            self._free.notify()

    def close(self) -> None:
        """Stop the idle children (those at work stop when their render returns)."""
        with self._free:
            idle, self._idle = self._idle, []
            self._started -= len(idle)
        for child in idle:
            child.stop()


# One pool per process that renders (a worker, a gunicorn worker), made on first use; the
# limits come from the app's configuration.
_limits = Limits()
_pool: RenderPool | None = None
_made = threading.Lock()


def configure(limits: Limits) -> None:
    """The limits of this process's renders (from the app's configuration)."""
    global _limits, _pool
    with _made:
        _limits = limits
        if _pool is not None and _pool.limits != limits:
            _pool.close()
            _pool = None


def pool() -> RenderPool:
    global _pool
    with _made:
        if _pool is None:
            _pool = RenderPool(_limits)
        return _pool


def render_many(jobs: Sequence[tuple[dict, Any]]) -> list[Any]:
    """Each (transform, envelope) rendered in a child: its JSON data, or a TransformError."""
    return pool().call([(transforms.render, (transform, envelope)) for transform, envelope in jobs])


def render(transform: dict, envelope: Any) -> Any:
    """`transforms.render`, in a child under the limits; raises TransformError."""
    (result,) = render_many([(transform, envelope)])
    if isinstance(result, TransformError):
        raise result
    return result


def render_noting_undefined(transform: dict, envelope: Any) -> tuple[Any, list[str]]:
    """`transforms.render_noting_undefined`, in a child under the limits (for a preview)."""
    (result,) = pool().call([(transforms.render_noting_undefined, (transform, envelope))])
    if isinstance(result, TransformError):
        raise result
    return result


def check(transform: Any) -> None:
    """`transforms.compile_transform`, in a child under the limits; raises TransformError."""
    (result,) = pool().call([(transforms.compile_transform, (transform,))])
    if isinstance(result, TransformError):
        raise result
