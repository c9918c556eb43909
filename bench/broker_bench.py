"""The broker-based peers: Celery, RQ, Huey, Dramatiq. 2 worker processes with
concurrency 1 each; the producer loop runs in this process, through each
library's normal enqueue call. Redis is started here on a free loopback port,
without persistence (as in ../shared/bench/)."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.common import REPO, descendants, free_port, stop_tree, wait_for

BIN = Path(sys.executable).parent


class RedisServer:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.base.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.base),
             "--logfile", str(self.base / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(self.ping, 20, "redis to answer")
        return self

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)

    def ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except Exception:  # not up yet
            return False

    def flush(self) -> None:
        self.client().flushall()

    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            stop_tree(self.process)
            self.process = None


class BrokerDriver:
    """One peer: its worker processes, and its enqueue calls made from here."""

    key = label = promises = ""
    worker_count = 1  # processes to start with worker_command()
    uses_redis = True  # the jobs go through the run's Redis server

    def __init__(self, base: Path, redis: RedisServer) -> None:
        self.base = base
        self.redis = redis
        self.record = str(base / "records.bin")
        self.workers: list[subprocess.Popen[bytes]] = []
        self.env: dict[str, str] = {}

    def worker_command(self) -> list[str]:
        raise NotImplementedError

    def module(self) -> ModuleType:
        raise NotImplementedError

    def start(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir(parents=True)
        self.redis.flush()
        self.env = {
            **os.environ,
            "BENCH_RECORD": self.record,
            "BENCH_REDIS_URL": self.redis.url,
            "BENCH_HUEY_DB": str(self.base / "huey.db"),
            "PYTHONPATH": str(REPO),
            **self.extra_env(),
        }
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("BENCH_")})
        self.setup_producer()
        log = open(self.base / "workers.log", "wb")  # noqa: SIM115 - the children own it
        for _ in range(self.worker_count):
            self.workers.append(subprocess.Popen(
                self.worker_command(), cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            ))  # fmt: skip
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """One probe job (number -1) must run; a worker that exits fails the run at once."""
        from bench.apps.record import read_records

        self.send(-1)

        def ready() -> bool:
            for process in self.workers:
                if process.poll() is not None:
                    tail = (self.base / "workers.log").read_text()[-2000:]
                    raise RuntimeError(f"{self.key} worker exited ({process.returncode}):\n{tail}")
            return any(i == -1 for i, _ in read_records(self.record))

        wait_for(ready, 60, f"{self.key} workers to run a job", interval=0.05)

    def extra_env(self) -> dict[str, str]:
        return {}

    def setup_producer(self) -> None:
        """Import (or re-import, for a second variant) the task module in this process."""

    def stop(self) -> None:
        for process in self.workers:
            stop_tree(process, timeout=20)
        self.workers = []

    def consumer_pids(self) -> list[int]:
        pids = []
        for process in self.workers:
            pids += [process.pid, *descendants(process.pid)]
        return pids

    def other_pids(self) -> list[int]:
        """None: every process the peer started is among its consumers."""
        return []

    def store_pids(self) -> list[int]:
        """redis-server, whose CPU per job is part of the peer's cost (Huey's SQLite
        flavour does not use it)."""
        return [self.redis.pid()] if self.uses_redis else []

    # -- enqueueing, through each library's own call ---------------------------------------

    def send(self, i: int) -> None:
        raise NotImplementedError

    def send_sleepy(self, i: int) -> None:
        raise NotImplementedError

    def send_at(self, i: int, at: float) -> None:
        raise NotImplementedError

    def enqueue_many(self, first: int, n: int) -> tuple[float, float, float]:
        cpu = time.process_time()
        t0 = time.time()
        for i in range(first, first + n):
            self.send(i)
        t1 = time.time()
        return t0, t1, time.process_time() - cpu

    def enqueue_one(self, i: int) -> float:
        t0 = time.time()
        self.send(i)
        return t0

    def burst(self, first: int, n: int, gap: float) -> float:
        last = 0.0
        for i in range(first, first + n):
            last = time.time()
            self.send_sleepy(i)
            time.sleep(gap)
        return last

    def enqueue_far(self, first: int, n: int, at: float) -> float:
        t0 = time.time()
        for i in range(first, first + n):
            self.send_at(i, at)
        return n / (time.time() - t0)


class CeleryDriver(BrokerDriver):
    key, label = "celery", "Celery + Redis"
    promises = "in Redis memory (no persistence here); results ignored"

    def worker_command(self) -> list[str]:
        return [
            str(BIN / "celery"), "-A", "bench.apps.celery_app", "worker", "-c", "2",
            "-P", "prefork", "-Q", "bench", "--without-heartbeat", "--without-gossip",
            "--without-mingle", "-l", "WARNING",
        ]  # fmt: skip

    def setup_producer(self) -> None:
        self.app = _fresh("bench.apps.celery_app")

    def send(self, i: int) -> None:
        self.app.noop.delay(i)

    def send_sleepy(self, i: int) -> None:
        self.app.sleepy.delay(i)

    def send_at(self, i: int, at: float) -> None:
        self.app.noop.apply_async((i,), eta=datetime.fromtimestamp(at, tz=UTC))


class RQDriver(BrokerDriver):
    key, label = "rq", "RQ + Redis (fork per job)"
    promises = "in Redis memory (no persistence here); result_ttl=0"
    worker_count = 2
    worker_class: str | None = None

    def worker_command(self) -> list[str]:
        command = [str(BIN / "rq"), "worker", "-u", self.redis.url, "-q", "bench"]
        if self.worker_class:
            command[2:2] = ["-w", self.worker_class]
        return command

    def setup_producer(self) -> None:
        from redis import Redis
        from rq import Queue

        self.tasks = _fresh("bench.apps.rq_app")
        self.queue = Queue("bench", connection=Redis.from_url(self.redis.url))

    def send(self, i: int) -> None:
        self.queue.enqueue(self.tasks.noop, i, result_ttl=0)

    def send_sleepy(self, i: int) -> None:
        self.queue.enqueue(self.tasks.sleepy, i, result_ttl=0)

    def send_at(self, i: int, at: float) -> None:
        self.queue.enqueue_at(datetime.fromtimestamp(at, tz=UTC), self.tasks.noop, i, result_ttl=0)


class RQSimpleDriver(RQDriver):
    key, label = "rq-simple", "RQ + Redis (SimpleWorker, no fork)"
    worker_class = "rq.worker.SimpleWorker"


class HueyDriver(BrokerDriver):
    key, label = "huey-sqlite", "Huey, SqliteHuey"
    promises = "SQLite file, WAL, synchronous=FULL (fsync per enqueue); results off"
    flavour = "sqlite"
    uses_redis = False

    def extra_env(self) -> dict[str, str]:
        return {"BENCH_HUEY": self.flavour}

    def worker_command(self) -> list[str]:
        return [
            str(BIN / "huey_consumer"),
            "bench.apps.huey_app.huey",
            "-w",
            "2",
            "-k",
            "process",
            "-q",
        ]

    def setup_producer(self) -> None:
        os.environ["BENCH_HUEY"] = self.flavour
        self.tasks = _fresh("bench.apps.huey_app")

    def send(self, i: int) -> None:
        self.tasks.noop(i)

    def send_sleepy(self, i: int) -> None:
        self.tasks.sleepy(i)

    def send_at(self, i: int, at: float) -> None:
        self.tasks.noop.schedule((i,), eta=datetime.fromtimestamp(at, tz=UTC).replace(tzinfo=None))


class HueyRedisDriver(HueyDriver):
    key, label = "huey-redis", "Huey, RedisHuey"
    promises = "in Redis memory (no persistence here); results off"
    flavour = "redis"
    uses_redis = True


class DramatiqDriver(BrokerDriver):
    key, label = "dramatiq", "Dramatiq + Redis"
    promises = "in Redis memory (no persistence here); no results"

    def worker_command(self) -> list[str]:
        return [
            str(BIN / "dramatiq"),
            "bench.apps.dramatiq_app",
            "-p",
            "2",
            "-t",
            "1",
            "-Q",
            "bench",
        ]

    def setup_producer(self) -> None:
        self.tasks = _fresh("bench.apps.dramatiq_app")

    def send(self, i: int) -> None:
        self.tasks.noop.send(i)

    def send_sleepy(self, i: int) -> None:
        self.tasks.sleepy.send(i)

    def send_at(self, i: int, at: float) -> None:
        self.tasks.noop.send_with_options(args=(i,), delay=int((at - time.time()) * 1000))


def _fresh(name: str) -> ModuleType:
    """Import a task module, re-running it if imported before (new broker URL, new flavour)."""
    module = sys.modules.get(name)
    return importlib.reload(module) if module is not None else importlib.import_module(name)


PEERS: list[type[BrokerDriver]] = [
    CeleryDriver, RQDriver, RQSimpleDriver, HueyDriver, HueyRedisDriver, DramatiqDriver,
]  # fmt: skip
