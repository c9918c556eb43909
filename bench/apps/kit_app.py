"""The kit, with its default settings: the repository's uwsgi.ini ([spoolkit]),
status tracked for every job. The store is SPOOLKIT_DATABASE's: a SQLite file, or
for kit-pg a database on the PostgreSQL server the bench started."""

from __future__ import annotations

import time

from flask import Flask, request

from spoolkit import SpoolKit, spool

from .record import record
from .uwsgi_routes import add_routes


@spool(name="bench.noop", max_attempts=1)
def noop(i: int) -> None:
    record(i)


@spool(name="bench.sleepy", max_attempts=1)
def sleepy(i: int) -> None:
    record(i)
    time.sleep(0.005)


app = Flask(__name__)
SpoolKit(app)
add_routes(
    app,
    enqueue=noop.delay,
    enqueue_at=lambda i, at: noop.apply_async((i,), at=at),
    enqueue_sleepy=sleepy.delay,
)


@app.get("/bench/enqueue_batch")
def enqueue_batches() -> dict[str, float]:
    """Bulk enqueue: ``n`` jobs from ``start``, ``size`` per ``noop.map`` call (each one
    transaction, one fsync)."""
    n, start = int(request.args["n"]), int(request.args.get("start", 0))
    size = int(request.args.get("size", 100))
    t0 = time.time()
    for first in range(start, start + n, size):
        noop.map([(i,) for i in range(first, min(first + size, start + n))])
    return {"t0": t0, "t1": time.time()}
