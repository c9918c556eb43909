"""uwsgi-tasks: @task(executor=TaskExecutor.SPOOLER), pickled arguments, no status."""

from __future__ import annotations

import time

from flask import Flask
from uwsgi_tasks import TaskExecutor, task

from .record import record
from .uwsgi_routes import add_routes


@task(executor=TaskExecutor.SPOOLER)
def noop(i: int) -> None:
    record(i)


@task(executor=TaskExecutor.SPOOLER)
def sleepy(i: int) -> None:
    record(i)
    time.sleep(0.005)


def _unsupported(i: int, at: float) -> None:
    raise NotImplementedError("not measured for uwsgi-tasks")


app = Flask(__name__)
add_routes(app, enqueue=noop, enqueue_at=_unsupported, enqueue_sleepy=sleepy)
