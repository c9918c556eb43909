"""The floor: uWSGI's own uwsgidecorators @spool(pass_arguments=True), no status."""

from __future__ import annotations

import time

from flask import Flask
from uwsgidecorators import spool

from .record import record
from .uwsgi_routes import add_routes


@spool(pass_arguments=True)
def noop(i: int) -> None:
    record(i)


@spool(pass_arguments=True)
def sleepy(i: int) -> None:
    record(i)
    time.sleep(0.005)


app = Flask(__name__)
add_routes(app, enqueue=noop, enqueue_at=lambda i, at: noop(i, at=str(at)), enqueue_sleepy=sleepy)
