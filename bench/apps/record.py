"""The one thing every benchmarked task does: append 16 bytes (job number, start
time) to a per-run file opened once per process. One write(2), identical for
every system, so its cost is in every number alike."""

from __future__ import annotations

import os
import struct
import time

RECORD = struct.Struct("<qd")
#: The record file's descriptor, by the pid that opened it (a forked worker opens its own).
_opened: dict[int, int] = {}


def record(i: int) -> None:
    pid = os.getpid()
    fd = _opened.get(pid)
    if fd is None:
        fd = _opened[pid] = os.open(
            os.environ["BENCH_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
        )
    os.write(fd, RECORD.pack(i, time.time()))


def read_records(path: str) -> list[tuple[int, float]]:
    try:
        data = open(path, "rb").read()  # noqa: SIM115 - short-lived read
    except FileNotFoundError:
        return []
    usable = len(data) - len(data) % RECORD.size
    return [RECORD.unpack_from(data, offset) for offset in range(0, usable, RECORD.size)]
