"""gunicorn's access log, each line built from the fields it prints (the Procfile's `web`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from gunicorn import glogging
from gunicorn.config import AccessLogFormat

DEFAULT_FORMAT = AccessLogFormat.default


class Logger(glogging.Logger):
    """gunicorn's own logger, but a line in the default access-log format is built from its
    nine fields alone. gunicorn builds a dict of every request header, response header and
    environ variable for each line, and escapes every one of them: 0.18 ms of CPU a request
    on a 2-core VM, half of what gunicorn itself costs a request. Another format
    (`--access-logformat`) is built as gunicorn builds it."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta) -> Any:
        if self.cfg.access_log_format != DEFAULT_FORMAT:
            return super().atoms(resp, req, environ, request_time)
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        sent = getattr(resp, "sent", None)
        return {
            "h": environ.get("REMOTE_ADDR", "-"),
            "l": "-",
            "u": self._get_user(environ) or "-",
            "t": self.now(),
            "r": f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}",
            "s": status,
            "b": "-" if sent is None else str(sent),
            "f": environ.get("HTTP_REFERER", "-"),
            "a": environ.get("HTTP_USER_AGENT", "-"),
        }
