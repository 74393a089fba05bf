"""A log filter that lets a repeated warning through once per window, not on every retry."""

from __future__ import annotations

import logging
import threading
import time


class Throttle(logging.Filter):
    """Pass the first record of each message template, then one per `window` seconds.

    Records whose template contains none of `match` pass untouched.
    """

    def __init__(self, match: tuple[str, ...], window: float = 300.0) -> None:
        super().__init__()
        self.match, self.window = match, window
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        template = str(record.msg)
        if not any(m in template for m in self.match):
            return True
        now = time.monotonic()
        with self._lock:
            last = self._last.get(template)
            if last is not None and now - last < self.window:
                return False
            self._last[template] = now
        return True


def install(logger_name: str, *match: str, window: float = 300.0) -> None:
    """Throttle `logger_name`'s records that mention any of `match` (idempotent)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, Throttle) for f in logger.filters):
        logger.addFilter(Throttle(match, window))
