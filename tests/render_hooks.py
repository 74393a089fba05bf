"""Functions the tests run in a render process (the pool calls any importable function); kept
apart from the test modules so that the child imports nothing else."""

from __future__ import annotations

MiB = 1024 * 1024


def hog_memory() -> int:
    return len(bytearray(256 * MiB))


def spin_in_python() -> None:
    while True:
        pass


def spin_in_c() -> int:
    # One C call, where no Python signal handler can run: only the kernel stops it.
    return sum(range(10**14))
