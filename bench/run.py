"""Run the whole benchmark: `python -m bench.run [--quick] [--only kit,raw,...]`.

Writes results.json, RESULTS.md and results.png into the output directory
(bench/ for a full run, bench/quick/ for --quick). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.broker_bench import PEERS, BrokerDriver, RedisServer
from bench.common import fs_of, fsync_probe, wait_for
from bench.measure import Driver, Measure, core
from bench.pgserver import DURABLE, PostgresCluster
from bench.render import render
from bench.uwsgi_bench import (
    KIT,
    KIT_NORMAL,
    KIT_PG,
    KIT_PG_3,
    RAW,
    UWSGI_TASKS,
    UwsgiDriver,
    UwsgiSystem,
    drain_under_web_load,
)

log = logging.getLogger("bench")
UWSGI_SYSTEMS = [KIT, KIT_PG, KIT_PG_3, KIT_NORMAL, RAW, UWSGI_TASKS]
#: Every scale step, whatever it costs: the issue's targets are about these. The kit on
#: PostgreSQL (one node or three) is compared with the kit on SQLite, and is budgeted like
#: the peers (three nodes with a budget of their own, Plan.nodes_step_budget).
EVERY_STEP = {"kit", "kit-normal", "raw", "uwsgi-tasks"}
ON_BOTH_FILESYSTEMS = {"kit", "raw"}
#: Drained with idle and with busy web workers: (row, system, extra environment).
UNDER_WEB_LOAD = [
    ("kit", KIT, {}),
    ("kit, SPOOLKIT_SPOOLER_NICE=10", KIT, {"SPOOLKIT_SPOOLER_NICE": "10"}),
    ("kit, SPOOLKIT_SPOOLER_NICE=0", KIT, {"SPOOLKIT_SPOOLER_NICE": "0"}),
    ("raw", RAW, {}),
]


@dataclass(frozen=True)
class Plan:
    quick: bool
    trial_seconds: float  # aim for trials this long (N is adapted to each system's speed)
    max_n: int
    trials: int
    pickups: int
    bursts: int
    wrk_seconds: int
    backlogs: tuple[int, ...]
    far: int
    far_pickups: int
    beside: int
    step_budget: float  # skip a scale step expected to take longer than this (seconds)
    load_n: int  # backlog drained with idle, then busy, web workers
    load_window: float  # seconds
    #: The step budget of a system of several uWSGI instances (kit-pg-3): smaller in
    #: --quick, where it would otherwise add minutes to a CI-sized run.
    nodes_step_budget: float
    #: Jobs enqueued one at a time, then in batches (the kit's bulk enqueue step).
    bulk_n: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 1.0, 300, 1, 10, 1, 2, (200, 1000), 1000, 10, 300, 30.0, 500, 2.0,
                       8.0, 1000)  # fmt: skip
        return cls(
            False, 5.0, 5000, 3, 100, 3, 10, (1000, 10_000, 100_000), 100_000, 50, 10_000, 45.0,
            10_000, 8.0, 45.0, 5000,
        )  # fmt: skip


def adapted_n(driver: Driver, plan: Plan) -> int:
    """A pilot run sizes N so that one trial takes about ``trial_seconds``."""
    driver.start()
    try:
        measure = Measure(driver)
        measure.drain(50)
        pilot = measure.drain(200)
    finally:
        driver.stop()
    rate = min(pilot["drain_per_s"], pilot["enqueue_per_s"])
    return max(100, min(plan.max_n, int(rate * plan.trial_seconds) // 100 * 100))


def extended(driver: Driver, plan: Plan, rates: dict[str, float]) -> dict[str, Any]:
    """Burst tail, HTTP enqueue (uWSGI systems), backlogs, far-future backlog, RSS."""
    out: dict[str, Any] = {}
    enqueue, drain = rates["enqueue_per_s"], rates["drain_per_s"]
    several = isinstance(driver, UwsgiDriver) and len(driver.nodes) > 1
    budget = plan.nodes_step_budget if several else plan.step_budget

    def affordable(seconds: float) -> bool:
        # The kit on SQLite and the raw systems always run every step: the targets
        # are about them, and they take minutes. The budget keeps the slow peers
        # (RQ forks a process per job), and the kit on PostgreSQL, from stretching
        # the run past 20 minutes.
        return driver.key in EVERY_STEP or seconds <= budget

    def cost(n: int) -> float:  # expected seconds to queue and drain n jobs
        return n / enqueue + n / drain

    driver.start()
    try:
        measure = Measure(driver)
        measure.drain(50)
        out["burst_tails_s"] = measure.burst_tails(plan.bursts)
        if isinstance(driver, UwsgiDriver):
            out["http"] = driver.wrk(plan.wrk_seconds)
        rss_before = measure.consumer_rss()
        out["backlog"] = {}
        for n in plan.backlogs:
            if affordable(cost(n)):
                out["backlog"][str(n)] = measure.backlog(n)
            else:
                out["backlog"][str(n)] = {"skipped": f"would take ~{_duration(cost(n))}"}
        out["consumer_rss_mib"] = {"before": rss_before, "after": measure.consumer_rss()}
        if driver.key == "uwsgi-tasks":
            out["far"] = {"skipped": "uwsgi-tasks has no per-call at"}
        elif affordable(plan.far / enqueue + cost(plan.beside)):
            far: dict[str, Any] = {"jobs": plan.far, "enqueue_per_s": measure.far_future(plan.far)}
            far["pickup"] = measure.pickup(plan.far_pickups, seed=13)
            far["backlog"] = measure.backlog(plan.beside)
            out["far"] = far
        else:
            seconds = plan.far / enqueue + cost(plan.beside)
            out["far"] = {"skipped": f"would take ~{_duration(seconds)}"}
        if isinstance(driver, UwsgiDriver) and driver.system.kit:
            out["bulk"] = bulk_enqueue(driver, plan)
    finally:
        driver.stop()
    return out


#: Jobs per ``task.map`` call in the bulk enqueue step.
BATCH = 100


def bulk_enqueue(driver: UwsgiDriver, plan: Plan) -> dict[str, Any]:
    """The same N enqueued one ``delay()`` at a time, then ``BATCH`` per ``task.map``,
    back to back on the same instance and disk, each drained before the next."""
    n = plan.bulk_n
    figures: dict[str, Any] = {"n": n, "batch": BATCH}
    for step, first, enqueue in (
        ("single", 50_000_000, lambda first: driver.enqueue_many(first, n)),
        ("batched", 60_000_000, lambda first: driver.enqueue_batched(first, n, BATCH)),
    ):
        t0, t1, cpu = enqueue(first)
        figures[step] = {"per_s": n / (t1 - t0), "cpu_ms_per_job": cpu * 1000 / n}
        wait_for(driver.drained, 600, f"the {step} jobs to drain", interval=0.2)
    figures["ratio"] = figures["batched"]["per_s"] / figures["single"]["per_s"]
    return figures


def _duration(seconds: float) -> str:
    """'40 s' or '3 min': a skipped step's expected length (a budget may be seconds)."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def web_load(plan: Plan, disk: Path, only: set[str]) -> dict[str, Any]:
    """The spoolers' nice 19 at work: drain with idle, then busy, web workers."""
    out = {}
    for row, system, env in UNDER_WEB_LOAD:
        if only and system.key not in only:
            continue
        log.info("drain under web load: %s", row)
        driver = UwsgiDriver(system, disk / "web-load", extra_env=env, workers=2)
        out[row] = drain_under_web_load(driver, plan.load_n, plan.load_window)
        log.info("  %s", out[row])
    return out


@contextlib.contextmanager
def peer_failure_recorded(driver: Driver, step: str, errors: dict[str, str]) -> Iterator[None]:
    """A peer's failed step is written into the results and the run goes on.

    The peers are the comparison, not the subject: one of them tripping over
    the harness (a fork-per-job worker exiting mid-signal, a broker hiccup)
    must not throw away every other figure. The uWSGI systems are the subject,
    so their failures still abort the run and fail ``make bench``.
    """
    if isinstance(driver, UwsgiDriver):
        yield
        return
    try:
        yield
    except Exception as exc:  # recorded in results.json and RESULTS.md
        log.exception("%s failed; recorded, the run goes on", step)
        errors[step] = f"{type(exc).__name__}: {exc}"


def start_postgres(disk: Path) -> PostgresCluster:
    """The kit-pg and kit-pg-3 systems' server: PostgreSQL's durable defaults (fsync,
    synchronous_commit, full_page_writes on), data directory on the same disk as the
    SQLite kit's store, a unix socket. Stopped by pid (``close()``) when the run ends,
    failed or not."""
    disk.mkdir(parents=True, exist_ok=True)
    cluster = PostgresCluster(DURABLE, parent=disk, timeout=60)
    try:
        return cluster.start()
    except BaseException:
        cluster.close()
        raise


def postgres_facts(cluster: PostgresCluster) -> dict[str, Any]:
    """What RESULTS.md says about the server: version, the settings behind a commit, disk."""
    with cluster.connect() as conn:
        found = {
            name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes",
                         "wal_sync_method", "shared_buffers")
        }  # fmt: skip
    found["filesystem"] = fs_of(cluster.data_dir)
    found["connection"] = "unix socket"
    return found


def measure_all(drivers: list[tuple[str, Driver]], plan: Plan, results: dict[str, Any]) -> None:
    """The main table for every row, then the scale steps for the rows on disk."""
    for row, driver in drivers:
        log.info("main table: %s", row)
        base = driver.base
        results["filesystems"]["tmpfs" if "@tmpfs" in row else "disk"] = fs_of(base.parent)
        results["labels"][driver.key] = driver.label
        results["promises"][driver.key] = driver.promises
        if isinstance(driver, UwsgiDriver):
            results["shapes"][driver.key] = {
                "nodes": driver.system.nodes,
                "spoolers_per_node": driver.system.spoolers,
            }
        with peer_failure_recorded(driver, f"{row}: main table", results["errors"]):
            n = adapted_n(driver, plan)
            results["core"][row] = core(driver, n, plan.trials, plan.pickups)
            log.info("  %s", {k: v for k, v in results["core"][row].items() if k != "trials"})
    for row, driver in drivers:
        if row.endswith("@tmpfs") or row not in results["core"]:
            continue
        log.info("scale: %s", row)
        with peer_failure_recorded(driver, f"{row}: scale", results["errors"]):
            results["extended"][row] = extended(driver, plan, results["core"][row])
            log.info("  %s", results["extended"][row])


def machine() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = Path("/proc/meminfo").read_text().split()[1]
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(int(memory) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in (
        "uwsgi",
        "flask",
        "celery",
        "kombu",
        "redis",
        "rq",
        "huey",
        "dramatiq",
        "uwsgi-tasks",
        "psycopg",
    ):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI-sized run (a few minutes)")
    parser.add_argument("--only", default="", help="comma-separated system keys")
    parser.add_argument("--out", default=None, help="output directory")
    parser.add_argument("--disk", default="/tmp/spoolkit-bench", help="base directory on disk")
    parser.add_argument(
        "--tmpfs", default="/dev/shm/spoolkit-bench", help="base directory on tmpfs"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    plan = Plan.make(args.quick)
    only = {key for key in args.only.split(",") if key}
    out_dir = Path(args.out or (Path(__file__).parent / ("quick" if args.quick else ".")))
    out_dir.mkdir(parents=True, exist_ok=True)
    disk, tmpfs = Path(args.disk), Path(args.tmpfs)
    started = time.time()
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "versions": versions(),
        "filesystems": {"disk": None, "tmpfs": None},
        "core": {},
        "extended": {},
        "web_load": {},
        "labels": {},
        "promises": {},
        "shapes": {},  # uWSGI systems: instances (nodes) and spoolers per node
        "errors": {},
    }

    def wanted(key: str) -> bool:
        return not only or key in only

    uwsgi_systems: list[UwsgiSystem] = [s for s in UWSGI_SYSTEMS if wanted(s.key)]
    redis: RedisServer | None = None
    postgres: PostgresCluster | None = None
    peers: list[BrokerDriver] = []
    try:
        if any(wanted(peer.key) for peer in PEERS):
            redis = RedisServer(disk / "redis").start()
            peers = [peer(disk / "peers" / peer.key, redis) for peer in PEERS if wanted(peer.key)]
        if any(system.postgres for system in uwsgi_systems):
            postgres = start_postgres(disk)
            results["postgres"] = postgres_facts(postgres)
            log.info("PostgreSQL: %s", results["postgres"])
        drivers: list[tuple[str, Driver]] = []
        for system in uwsgi_systems:
            places = ("disk", "tmpfs") if system.key in ON_BOTH_FILESYSTEMS else ("disk",)
            for place in places:
                base = (disk if place == "disk" else tmpfs) / system.key
                driver = UwsgiDriver(system, base, postgres=postgres)
                drivers.append((f"{system.key}@{place}", driver))
        drivers += [(f"{peer.key}@disk", peer) for peer in peers]
        # The disk's own fsync rate, just before the kit is measured on it and again at
        # the end (file churn changes this disk as the run goes).
        results["fsync_probe"] = {"before": fsync_probe(disk / "probe")}
        log.info("fsync probe: %s", results["fsync_probe"])
        measure_all(drivers, plan, results)
        results["web_load"] = web_load(plan, disk, only)
        results["fsync_probe"]["after"] = fsync_probe(disk / "probe")
        log.info("fsync probe: %s", results["fsync_probe"])
    finally:
        try:
            if redis is not None:
                results["redis"] = {"port": redis.port}
                redis.stop()
        finally:
            if postgres is not None:
                postgres.close()  # by pid (SIGQUIT to the postmaster), then its directory
    results["seconds"] = round(time.time() - started)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    render(results, out_dir)
    log.info("done in %ds: %s", results["seconds"], out_dir / "RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
