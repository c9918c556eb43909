"""Celery with a Redis broker; results ignored."""

from __future__ import annotations

import os
import time

from celery import Celery

from .record import record

app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_ignore_result=True, task_default_queue="bench", worker_hijack_root_logger=False
)


@app.task(name="bench.noop")
def noop(i: int) -> None:
    record(i)


@app.task(name="bench.sleepy")
def sleepy(i: int) -> None:
    record(i)
    time.sleep(0.005)
