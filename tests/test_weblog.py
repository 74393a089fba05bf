"""The web process's access log (`webhooks/weblog.py`) writes gunicorn's own lines."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn import glogging
from gunicorn.config import Config

from webhooks.weblog import Logger


def _line(logger_class: Any, environ: dict[str, Any], fmt: str | None = None) -> str:
    cfg = Config()
    if fmt is not None:
        cfg.set("access_log_format", fmt)
    logger = logger_class(cfg)
    logger.now = lambda: "[07/Dec/2026:15:00:00 +0000]"
    resp = SimpleNamespace(
        status="202 ACCEPTED", sent=417, headers=[("Content-Type", "application/json")]
    )
    req = SimpleNamespace(headers=[("HOST", "127.0.0.1:8000"), ("AUTHORIZATION", "Bearer x")])
    atoms = logger.atoms(resp, req, environ, timedelta(milliseconds=4))
    return str(cfg.access_log_format % glogging.SafeAtoms(atoms))


@pytest.mark.parametrize(
    "environ",
    [
        {
            "REMOTE_ADDR": "10.0.0.7",
            "REQUEST_METHOD": "POST",
            "RAW_URI": "/api/v1/events?x=1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_USER_AGENT": 'curl/8 "quoted"',
            "HTTP_REFERER": "https://example.com/",
            "PATH_INFO": "/api/v1/events",
        },
        {  # no address, agent or referrer; a user in basic auth
            "REQUEST_METHOD": "GET",
            "RAW_URI": "/healthz",
            "SERVER_PROTOCOL": "HTTP/1.0",
            "HTTP_AUTHORIZATION": "Basic dXNlcjpwdw==",
        },
    ],
)
def test_a_line_is_the_one_gunicorn_writes(environ: dict[str, Any]) -> None:
    assert _line(Logger, environ) == _line(glogging.Logger, environ)


def test_another_format_is_built_as_gunicorn_builds_it() -> None:
    environ = {
        "REQUEST_METHOD": "POST",
        "RAW_URI": "/api/v1/events",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "PATH_INFO": "/api/v1/events",
    }
    fmt = '%(m)s %(U)s %(D)s "%({host}i)s" %({content-type}o)s'

    line = _line(Logger, environ, fmt)

    assert line == _line(glogging.Logger, environ, fmt)
    assert line == 'POST /api/v1/events 4000 "127.0.0.1:8000" application/json'
