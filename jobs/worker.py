"""The worker process: an RQ SimpleWorker inside one app context.

RQ's default worker forks a child per job, which re-imports and reconnects every time
(about 450 ms a job here); SimpleWorker runs jobs in the process that already holds the
app, its database pool and its HTTP connections (about 13 ms a job).
"""

from __future__ import annotations

import logging

from flask import Flask
from rq import Queue, SimpleWorker

log = logging.getLogger(__name__)


def make_worker(app: Flask) -> SimpleWorker:
    redis = app.extensions["redis"]
    queue = Queue(app.config["WEBHOOK_QUEUE"], connection=redis)
    return SimpleWorker([queue], connection=redis)


def run(app: Flask, *, burst: bool = False) -> None:
    with app.app_context():
        make_worker(app).work(burst=burst, with_scheduler=False, logging_level="WARNING")
