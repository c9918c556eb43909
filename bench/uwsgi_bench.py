"""The uWSGI-based systems: the kit (SQLite or PostgreSQL store), raw
uwsgidecorators @spool, uwsgi-tasks.

Each runs in its own uWSGI instance: 1 web worker (which runs the producer
loop: uwsgi.spool() and the wake-up only exist there), 2 spoolers,
spooler-frequency 1, request logging off. The kit runs on the repository's
own uwsgi.ini (its default section: web workers and spoolers), so its
settings are the kit's defaults. Its store is a SQLite file in the
instance's directory, or, for ``kit-pg``, a fresh database on a PostgreSQL
server the run started (``PostgresDatabase``).

``kit-pg-3`` is three such instances on one fresh database: three spooler nodes
of a multi-host deployment (each its own spool directory, ``SPOOLKIT_NODE``,
HTTP port and stats address), all on this machine. The producer loop runs in
the first node's web worker; the jobs are parked in PostgreSQL and each node's
housekeeping mule claims them for its idle spoolers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from bench.common import (
    REPO,
    cpu_seconds,
    descendants,
    free_port,
    get_json,
    read_stats,
    records_in,
    stop_tree,
    wait_for,
    wait_records,
)
from bench.measure import Measure
from bench.pgserver import PostgresCluster


@dataclass(frozen=True)
class UwsgiSystem:
    key: str
    label: str
    module: str
    kit: bool
    http_path: str
    http_body: str
    promises: str
    env: tuple[tuple[str, str], ...] = ()
    postgres: bool = False  # the store on the run's PostgreSQL server, not a SQLite file
    nodes: int = 1  # uWSGI instances (spooler nodes) on one store: more than 1 needs postgres
    spoolers: int = 2  # spooler processes of the jobs' queue, per node


KIT = UwsgiSystem(
    "kit", "spoolkit (this kit)", "bench.apps.kit_app:app", True, "/jobs",
    '{"task": "bench.noop", "args": [1]}',
    "job row fsynced (SQLite FULL) before 202; status, attempts and result kept",
)  # fmt: skip
KIT_NORMAL = UwsgiSystem(
    "kit-normal", "spoolkit, SPOOLKIT_SYNC=normal", "bench.apps.kit_app:app", True, "/jobs",
    '{"task": "bench.noop", "args": [1]}',
    "no fsync: a power cut may lose the jobs accepted just before it; status kept",
    env=(("SPOOLKIT_SYNC", "normal"),),
)  # fmt: skip
KIT_PG = UwsgiSystem(
    "kit-pg", "spoolkit, PostgreSQL store (1 node)", "bench.apps.kit_app:app", True, "/jobs",
    '{"task": "bench.noop", "args": [1]}',
    "job row committed with synchronous_commit=on (WAL fsynced) before 202; status, attempts "
    "and result kept",
    postgres=True,
)  # fmt: skip
KIT_PG_3 = UwsgiSystem(
    "kit-pg-3", "spoolkit, PostgreSQL store, 3 nodes x 2 spoolers (6 in all, 1 machine)",
    "bench.apps.kit_app:app", True, "/jobs", '{"task": "bench.noop", "args": [1]}',
    "as kit-pg; each job claimed by one node (FOR UPDATE SKIP LOCKED) and spooled there",
    postgres=True, nodes=3,
)  # fmt: skip
RAW = UwsgiSystem(
    "raw", "raw uWSGI spooler (uwsgidecorators @spool)", "bench.apps.raw_app:app", False,
    "/bench/http", '{"args": [1]}', "spool file not fsynced; no status, no result",
)  # fmt: skip
UWSGI_TASKS = UwsgiSystem(
    "uwsgi-tasks", "uwsgi-tasks @task(SPOOLER)", "bench.apps.tasks_app:app", False,
    "/bench/http", '{"args": [1]}', "spool file not fsynced; no status, no result",
)  # fmt: skip


class Store(Protocol):
    """Where a kit instance keeps its jobs: made fresh at each start, dropped at stop."""

    def create(self, base: Path) -> str:
        """A new, empty store for an instance in ``base``; returns its SPOOLKIT_DATABASE."""
        ...

    def drop(self) -> None: ...

    def server_pids(self) -> list[int]:
        """Processes outside the instance doing the store's work (none for SQLite)."""
        ...

    def waiting(self) -> int | None:
        """Jobs queued or running that may have no spool file (parked in the store);
        None where every such job has one (SQLite: the spool files say it all)."""
        ...


class SQLiteFile:
    """The kit's default: a SQLite file in the instance's spool directory (deleted
    with the directory at the next start)."""

    def create(self, base: Path) -> str:
        return str(base / "spool" / "spoolkit.db")

    def drop(self) -> None:
        pass

    def server_pids(self) -> list[int]:
        return []

    def waiting(self) -> int | None:
        return None


class PostgresDatabase:
    """A database of its own on the run's PostgreSQL server for each start; the kit
    creates its schema at start-up, as in production."""

    def __init__(self, cluster: PostgresCluster) -> None:
        self.cluster = cluster
        self.name: str | None = None

    def create(self, base: Path) -> str:
        self.drop()
        self.name = self.cluster.create_database()
        return self.cluster.dsn(self.name)

    def drop(self) -> None:
        if self.name is not None:
            self.cluster.drop_database(self.name)
            self.name = None

    def server_pids(self) -> list[int]:
        """The postmaster and everything under it: the backends serving the instance's
        connections, the WAL writer, the checkpointer, autovacuum."""
        return self.cluster.processes()

    def waiting(self) -> int | None:
        """On PostgreSQL every job is parked in the store until a node claims it, so the
        spool directories hold only the few claimed ones: count the rest here."""
        assert self.name is not None
        with self.cluster.connect(self.name) as conn:
            row = conn.execute(
                "SELECT count(*) FROM spoolkit_jobs WHERE state IN ('queued', 'running')"
            ).fetchone()
        return int(row[0]) if row else 0


class UwsgiNode:
    """One uWSGI instance of a system: its directory, spool directory, ports, process.
    ``name`` is its SPOOLKIT_NODE (None: the kit's default, the host name)."""

    def __init__(self, base: Path, name: str | None, ports: set[int]) -> None:
        self.base = base
        self.name = name
        self.spool_dir = base / "spool" / "jobs"
        self.port = self._port(ports)
        self.stats_port = self._port(ports)
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def _port(taken: set[int]) -> int:
        """A free port no other node of the system was given."""
        while (port := free_port()) in taken:
            pass
        taken.add(port)
        return port

    @property
    def log_path(self) -> Path:
        return self.base / "uwsgi.log"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stats(self) -> dict[str, Any]:
        return read_stats(f"127.0.0.1:{self.stats_port}")

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.stats()["workers"]]

    def consumer_pids(self) -> list[int]:
        wanted = os.path.realpath(self.spool_dir)
        try:
            spoolers = self.stats().get("spoolers", [])
        except OSError:
            return []
        return [
            s["pid"]
            for s in spoolers
            if s.get("pid") and os.path.realpath(str(s.get("dir", ""))) == wanted
        ]

    def other_pids(self) -> list[int]:
        """The instance's processes that are neither web workers nor the jobs' spoolers:
        the master, the kit's housekeeping mule, the idle spoolers of its slow queue."""
        if self.process is None or self.process.poll() is not None:
            return []
        try:
            known = {*self.worker_pids(), *self.consumer_pids()}
        except OSError:
            return []
        tree = [self.process.pid, *descendants(self.process.pid)]
        return [pid for pid in tree if pid not in known]


class UwsgiDriver:
    def __init__(
        self,
        system: UwsgiSystem,
        base: Path,
        extra_env: dict[str, str] | None = None,
        workers: int = 1,
        postgres: PostgresCluster | None = None,
    ) -> None:
        self.system = system
        self.key, self.label, self.promises = system.key, system.label, system.promises
        self.base = base
        self.store: Store = SQLiteFile()
        if system.postgres:
            if postgres is None:
                raise ValueError(f"{system.key} needs the run's PostgreSQL server (postgres=)")
            self.store = PostgresDatabase(postgres)
        elif system.nodes > 1:
            raise ValueError(f"{system.key}: several nodes share a PostgreSQL store only")
        self.workers = workers
        self.extra_env = {**dict(system.env), **(extra_env or {})}
        self.record = str(base / "records.bin")  # every node's spoolers append to it
        ports: set[int] = set()
        if system.nodes == 1:
            self.nodes = [UwsgiNode(base, None, ports)]
        else:
            self.nodes = [
                UwsgiNode(base / f"node-{i}", f"bench-node-{i}", ports)
                for i in range(1, system.nodes + 1)
            ]
        # The producer's node: every enqueue, HTTP request and web load goes to it.
        self.front = self.nodes[0]
        self.spool_dir = self.front.spool_dir
        self.port = self.front.port
        self.stats_port = self.front.stats_port

    # -- life cycle --------------------------------------------------------------

    def command(self, node: UwsgiNode | None = None) -> list[str]:
        node = node or self.front
        uwsgi = str(Path(sys.executable).with_name("uwsgi"))
        common = ["--disable-logging", "--pythonpath", str(REPO)]
        if self.system.kit:
            # harakiri 0: the producer loop (up to 100k jobs) runs inside one request.
            ini = str(REPO / "uwsgi.ini")
            return [uwsgi, "--ini", ini, "--module", self.system.module, "--harakiri", "0", *common]
        return [
            uwsgi, "--master", "--need-app", "--die-on-term", "--module", self.system.module,
            "--http-socket", f"127.0.0.1:{node.port}", "--processes", str(self.workers),
            "--spooler", str(node.spool_dir), "--spooler-processes", str(self.system.spoolers),
            "--spooler-frequency", "1", "--spooler-quiet",
            "--stats", f"127.0.0.1:{node.stats_port}", *common,
        ]  # fmt: skip

    def start(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        for node in self.nodes:
            (node.base / "spool").mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOLKIT_")}
        try:
            env.update(
                BENCH_RECORD=self.record,
                SPOOLKIT_DATABASE=self.store.create(self.base),
                SPOOLKIT_WORKERS=str(self.workers),
                SPOOLKIT_SPOOLERS=str(self.system.spoolers),
                **self.extra_env,
            )
            # Several nodes start one after another, each once the one before answers:
            # a node's start-up creates the store's schema, and on PostgreSQL that
            # (ALTER TABLE ... ADD COLUMN IF NOT EXISTS, an exclusive lock each time)
            # once deadlocked with a node that was already claiming jobs, and the
            # starting node exited. An idle neighbour makes that rarer, not impossible.
            for node in self.nodes:
                node_env = {
                    **env,
                    "SPOOLKIT_HTTP": f"127.0.0.1:{node.port}",
                    "SPOOLKIT_STATS": f"127.0.0.1:{node.stats_port}",
                    "SPOOLKIT_SPOOL_DIR": str(node.spool_dir),
                    **({"SPOOLKIT_NODE": node.name} if node.name else {}),
                }
                with open(node.log_path, "wb") as log:  # the child keeps its own copy
                    node.process = subprocess.Popen(
                        self.command(node), cwd=REPO, env=node_env, stdout=log,
                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    )  # fmt: skip
                wait_for(partial(self._node_up, node), 60, f"{self._which(node)} to start")
        except BaseException:
            self.stop()
            raise

    def _which(self, node: UwsgiNode) -> str:
        return f"{self.key} ({node.name})" if node.name else self.key

    def _node_up(self, node: UwsgiNode) -> bool:
        assert node.process is not None
        if node.process.poll() is not None:
            raise RuntimeError(f"{self._which(node)} exited:\n{node.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(node.url("/bench/one?i=-1"), timeout=2):
                return len(node.consumer_pids()) == self.system.spoolers
        except OSError:
            return False

    def stop(self) -> None:
        try:
            running = [node.process for node in self.nodes if node.process is not None]
            if len(running) > 1:  # the nodes stop side by side (each may take a second)
                with ThreadPoolExecutor(len(running)) as pool:
                    list(pool.map(stop_tree, running))
            elif running:
                stop_tree(running[0])
            for node in self.nodes:
                node.process = None
        finally:
            self.store.drop()

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The producer node's uWSGI master."""
        return self.front.process

    # -- the Driver interface ---------------------------------------------------------

    def url(self, path: str) -> str:
        return self.front.url(path)

    def enqueue_many(self, first: int, n: int) -> tuple[float, float, float]:
        workers = self.worker_pids()
        before = cpu_seconds(workers)
        answer = get_json(self.url(f"/bench/enqueue?n={n}&start={first}"), timeout=1800)
        return answer["t0"], answer["t1"], cpu_seconds(workers) - before

    def enqueue_batched(self, first: int, n: int, size: int) -> tuple[float, float, float]:
        """Like ``enqueue_many``, ``size`` jobs per ``task.map`` (the kit only)."""
        workers = self.worker_pids()
        before = cpu_seconds(workers)
        answer = get_json(
            self.url(f"/bench/enqueue_batch?n={n}&start={first}&size={size}"), timeout=1800
        )
        return answer["t0"], answer["t1"], cpu_seconds(workers) - before

    def enqueue_one(self, i: int) -> float:
        return float(get_json(self.url(f"/bench/one?i={i}"))["t0"])

    def burst(self, first: int, n: int, gap: float) -> float:
        return float(get_json(self.url(f"/bench/burst?n={n}&start={first}&gap={gap}"))["last"])

    def enqueue_far(self, first: int, n: int, at: float) -> float:
        answer = get_json(self.url(f"/bench/enqueue_at?n={n}&start={first}&at={at}"), timeout=1800)
        return n / (answer["t1"] - answer["t0"])

    def store_pids(self) -> list[int]:
        return self.store.server_pids()

    def consumer_pids(self) -> list[int]:
        """The spoolers of the spool directory the bench's jobs go to, on every node. The
        kit's uwsgi.ini also runs the spoolers of its "slow" queue, idle here: not
        consumers (they are among ``other_pids``)."""
        return [pid for node in self.nodes for pid in node.consumer_pids()]

    def other_pids(self) -> list[int]:
        """Every node's master, housekeeping mule (the kit's; on PostgreSQL it claims each
        job for its node's spoolers) and idle slow-queue spoolers."""
        return [pid for node in self.nodes for pid in node.other_pids()]

    # -- uWSGI specifics -----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return self.front.stats()

    def worker_pids(self) -> list[int]:
        """Every node's web workers (only the producer node's has work here)."""
        return [pid for node in self.nodes for pid in node.worker_pids()]

    def spool_files(self) -> list[str]:
        return [
            p.name
            for node in self.nodes
            for p in node.spool_dir.rglob("uwsgi_spoolfile_on_*")
            if "quarantine" not in p.parts
        ]

    def drained(self) -> bool:
        """No job left to run: no spool file, and none parked in the store."""
        return not self.spool_files() and not self.store.waiting()

    def web_load(self, seconds: float, connections: int) -> subprocess.Popen[bytes]:
        """Keep the web workers busy with 5 ms-of-CPU requests (wrk in the background)."""
        return subprocess.Popen(
            [self._wrk(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
             self.url("/bench/burn?ms=5")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    @staticmethod
    def _wrk() -> str:
        wrk = shutil.which("wrk")
        if wrk is None:
            raise RuntimeError("wrk is not installed (Debian package wrk)")
        return wrk

    def wrk(self, seconds: int, connections: int = 32) -> dict[str, Any]:
        """POST -> 202 over HTTP: the kit's POST /jobs, or a Flask route calling the system."""
        wrk = self._wrk()
        script = self.base / "post.lua"
        body = self.system.http_body.replace('"', '\\"')
        script.write_text(
            f'wrk.method = "POST"\nwrk.body = "{body}"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        done = subprocess.run(
            [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
             self.url(self.system.http_path)],
            capture_output=True, text=True, check=True, timeout=seconds + 120,
        )  # fmt: skip
        out = done.stdout
        requests = re.search(r"(\d+) requests in ([\d.]+)(m|s)", out)
        assert requests is not None, out
        elapsed = float(requests.group(2)) * (60 if requests.group(3) == "m" else 1)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
        wait_for(self.drained, 600, "wrk's jobs to drain", interval=0.2)
        return {
            "requests_per_s": int(requests.group(1)) / elapsed,
            "p50": latency.get("50", "?"),
            "p99": latency.get("99", "?"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        }


def nice_of(pid: int) -> int:
    """A process's niceness, from /proc/<pid>/stat (field 19)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[16])


def drain_under_web_load(
    driver: UwsgiDriver, n: int, window: float, connections: int = 4
) -> dict[str, Any]:
    """Drain a backlog of n jobs with idle web workers, then with busy ones.

    uWSGI starts every spooler at nice 19, so when the web workers (nice 0)
    keep every core busy the spoolers get what is left. The backlog is queued
    while the spoolers are stopped (SIGSTOP); the web load (wrk, 5 ms of CPU
    per request, ``connections`` at once) runs from a second before the
    release to the end of the window. Drain = jobs started in the window /
    the window, or n / (last start - release) when all started sooner.
    """
    driver.start()
    try:
        measure = Measure(driver)
        measure.drain(50)
        out: dict[str, Any] = {}
        loads: list[subprocess.Popen[bytes]] = []

        def start_load() -> None:
            loads.append(driver.web_load(window + 5, connections))
            time.sleep(1.0)  # let wrk bring the web workers to full CPU

        for phase, before_release in (("idle", lambda: None), ("loaded", start_load)):
            first, released, _ = measure.release_backlog(n, before_release)
            try:
                while time.time() < released + window:
                    if len(records_in(driver.record, first, n)) == n:
                        break
                    time.sleep(0.1)
                starts = records_in(driver.record, first, n)
            finally:
                while loads:
                    load = loads.pop()
                    load.terminate()
                    load.wait()
            if len(starts) == n:
                rate = n / (max(starts.values()) - released)
            else:
                rate = sum(1 for t in starts.values() if t <= released + window) / window
            out[phase] = {"drain_per_s": rate, "started": len(starts), "of": n}
            out["spooler_nice"] = [nice_of(pid) for pid in driver.consumer_pids()]
            wait_records(driver.record, first, n, 1800)  # the rest drains before the next phase
        out["ratio"] = out["loaded"]["drain_per_s"] / out["idle"]["drain_per_s"]
        return out
    finally:
        driver.stop()
