"""The measurements, identical for every system; a Driver hides how each one enqueues."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bench.common import (
    cpu_seconds,
    median,
    percentile,
    rss_mib,
    signal_pids,
    wait_records,
)


class Driver(Protocol):
    key: str
    label: str
    promises: str
    record: str
    base: Path

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def enqueue_many(self, first: int, n: int) -> tuple[float, float, float]:
        """Enqueue jobs first..first+n-1; return (t0, t1, producer CPU seconds)."""
        ...

    def enqueue_one(self, i: int) -> float:
        """Enqueue one job; return the time just before the enqueue call."""
        ...

    def burst(self, first: int, n: int, gap: float) -> float:
        """Enqueue n 5 ms jobs ``gap`` apart; return the time of the last enqueue."""
        ...

    def enqueue_far(self, first: int, n: int, at: float) -> float:
        """Enqueue n jobs to run at ``at``; return the enqueue rate."""
        ...

    def consumer_pids(self) -> list[int]: ...
    def other_pids(self) -> list[int]:
        """The system's processes that are neither consumers nor the producer (a uWSGI
        master, the kit's housekeeping mule); none where the consumers are all of it."""
        ...

    def store_pids(self) -> list[int]:
        """The store's server processes (PostgreSQL, Redis); none for a file (SQLite)."""
        ...


class Measure:
    """Numbers jobs so phases never mix, and runs each measurement on a driver."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.next_id = 0

    def ids(self, count: int) -> int:
        first = self.next_id
        self.next_id += count
        return first

    def drain(self, n: int, timeout: float = 900) -> dict[str, Any]:
        """Enqueue n jobs while the consumers run; drain = n / (last start - first enqueue).
        CPU of the other processes and of the store's server (None without them) is
        counted until the last job started."""
        first = self.ids(n)
        consumers, servers = self.driver.consumer_pids(), self.driver.store_pids()
        others = self.driver.other_pids()
        cpu_before, server_before = cpu_seconds(consumers), cpu_seconds(servers)
        other_before = cpu_seconds(others)
        t0, t1, producer_cpu = self.driver.enqueue_many(first, n)
        starts = wait_records(self.driver.record, first, n, timeout)
        server_cpu = cpu_seconds(servers) - server_before
        other_cpu = cpu_seconds(others) - other_before
        return {
            "enqueue_per_s": n / (t1 - t0),
            "drain_per_s": n / (max(starts.values()) - t0),
            "cpu_ms_consumers": (cpu_seconds(consumers) - cpu_before) * 1000 / n,
            "cpu_ms_producer": producer_cpu * 1000 / n,
            "cpu_ms_other": other_cpu * 1000 / n if others else None,
            "cpu_ms_server": server_cpu * 1000 / n if servers else None,
        }

    def pickup(self, samples: int, seed: int = 11) -> dict[str, float]:
        """Single jobs into idle consumers, each after 50-150 ms of quiet."""
        latencies = []
        rng = random.Random(seed)
        for _ in range(samples):
            time.sleep(0.05 + rng.random() * 0.1)
            i = self.ids(1)
            t0 = self.driver.enqueue_one(i)
            latencies.append((wait_records(self.driver.record, i, 1, 60)[i] - t0) * 1000)
        return {
            "p50_ms": median(latencies),
            "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies),
        }

    def burst_tails(self, bursts: int, n: int = 200, gap: float = 0.0025) -> list[float]:
        """5 ms jobs 2.5 ms apart keep both consumers busy; tail = last start - last enqueue."""
        tails = []
        for _ in range(bursts):
            time.sleep(0.5)
            first = self.ids(n)
            last = self.driver.burst(first, n, gap)
            starts = wait_records(self.driver.record, first, n, 120)
            tails.append(max(starts.values()) - last)
        return tails

    def backlog(self, n: int, timeout: float = 1200) -> dict[str, float]:
        """n jobs queued while the consumers are stopped (SIGSTOP), then released."""
        first, released, enqueue_per_s = self.release_backlog(n)
        starts = wait_records(self.driver.record, first, n, timeout)
        return {
            "enqueue_per_s": enqueue_per_s,
            "drain_per_s": n / (max(starts.values()) - released),
        }

    def release_backlog(
        self, n: int, before_release: Callable[[], object] = lambda: None
    ) -> tuple[int, float, float]:
        """Queue n jobs with the consumers stopped (SIGSTOP), call ``before_release``,
        release them (SIGCONT). Returns (first job number, release time, enqueue rate)."""
        first = self.ids(n)
        consumers = self.driver.consumer_pids()
        signal_pids(consumers, signal.SIGSTOP)
        try:
            t0, t1, _ = self.driver.enqueue_many(first, n)
            before_release()
        finally:
            released = time.time()
            signal_pids(consumers, signal.SIGCONT)
        return first, released, n / (t1 - t0)

    def far_future(self, n: int) -> float:
        return self.driver.enqueue_far(self.ids(n), n, time.time() + 86400)

    def consumer_rss(self) -> list[float]:
        found = (rss_mib(pid) for pid in self.driver.consumer_pids())
        return [round(rss, 1) for rss in found if rss is not None]


def core(driver: Driver, n: int, trials: int, pickups: int) -> dict[str, Any]:
    """The main table: enqueue, drain, CPU per job, idle pickup."""
    driver.start()
    try:
        measure = Measure(driver)
        measure.drain(50)  # warm-up: imports, connections, caches, forks
        results = [measure.drain(n) for _ in range(trials)]
        return {
            "n": n,
            "trials": results,
            "enqueue_per_s": median([r["enqueue_per_s"] for r in results]),
            "drain_per_s": median([r["drain_per_s"] for r in results]),
            "cpu_ms_consumers": median([r["cpu_ms_consumers"] for r in results]),
            "cpu_ms_producer": median([r["cpu_ms_producer"] for r in results]),
            "cpu_ms_other": _median_or_none([r["cpu_ms_other"] for r in results]),
            "cpu_ms_server": _median_or_none([r["cpu_ms_server"] for r in results]),
            "pickup": measure.pickup(pickups),
        }
    finally:
        driver.stop()


def _median_or_none(values: list[Any]) -> float | None:
    return None if None in values else median(values)
