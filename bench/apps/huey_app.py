"""Huey, on SQLite (a file next to the records) or Redis (BENCH_HUEY); results off."""

from __future__ import annotations

import os
import time

from huey import RedisHuey, SqliteHuey

from .record import record

if os.environ.get("BENCH_HUEY", "sqlite") == "redis":
    huey = RedisHuey("bench", url=os.environ["BENCH_REDIS_URL"], results=False)
else:
    huey = SqliteHuey("bench", filename=os.environ["BENCH_HUEY_DB"], results=False)


@huey.task()
def noop(i: int) -> None:
    record(i)


@huey.task()
def sleepy(i: int) -> None:
    record(i)
    time.sleep(0.005)
