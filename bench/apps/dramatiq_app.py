"""Dramatiq with a Redis broker; no retries, no results."""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from .record import record

dramatiq.set_broker(RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")))


@dramatiq.actor(max_retries=0, queue_name="bench")
def noop(i: int) -> None:
    record(i)


@dramatiq.actor(max_retries=0, queue_name="bench")
def sleepy(i: int) -> None:
    record(i)
    time.sleep(0.005)
