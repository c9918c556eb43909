"""RQ with Redis; results not kept (result_ttl=0)."""

from __future__ import annotations

import time

from .record import record


def noop(i: int) -> None:
    record(i)


def sleepy(i: int) -> None:
    record(i)
    time.sleep(0.005)
