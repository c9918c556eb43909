"""The local runner (outside uWSGI, ``flask run``): a fixed number of threads in this
process, same store and states as under uWSGI.

Jobs wait in memory, in priority order. Jobs unfinished when the process
exits stay in the store; uWSGI's housekeeper spools them when it runs on
the same database (it judges a local delivery by whether its process lives).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask

from .config import Config
from .encoding import decode_arguments
from .followups import FollowUps
from .job import Job
from .queues import DEFAULT_QUEUE
from .registry import TaskRegistry
from .runner import Deferred, Handoff, WorkerRunner, hand_over
from .runtime import ProcessHost, runner_alive
from .schedule import Parking
from .store import Store
from .worker import Verdict, Worker

log = logging.getLogger("spoolkit.local")

#: A local delivery is named ``local:<instance id of the process>``.
LOCAL_PREFIX = "local:"


def is_local_delivery(delivery: str) -> bool:
    return delivery.startswith(LOCAL_PREFIX)


def local_delivery_alive(delivery: str) -> bool:
    """Is the process that holds this local delivery still running?"""
    return is_local_delivery(delivery) and runner_alive(delivery[len(LOCAL_PREFIX) :], None)


@dataclass(order=True)
class _Delivery:
    sort_key: tuple[float, int]
    job_id: str = field(compare=False)
    name: str = field(compare=False)
    task: str = field(compare=False)
    args: list[Any] = field(compare=False)
    kwargs: dict[str, Any] = field(compare=False)


class LocalRunner(WorkerRunner):
    """A bounded pool of threads in this process."""

    name = "local"
    #: A housekeeper (the uWSGI mule) maintains the store and recovers lost deliveries.
    housekept = False
    runs_inline = False
    priority_unsupported = None  # priorities order the in-memory queue
    parking = Parking()
    #: No directories outside uWSGI: a job's queue is recorded, and every queue name
    #: is accepted (the same threads run them all).
    queues = None

    def __init__(self, app: Flask, config: Config, store: Store, registry: TaskRegistry) -> None:
        self.workers = config.local_workers
        self.host = ProcessHost()
        follow_ups = FollowUps(registry, config, self.delivery_for)
        self.worker = Worker.for_config(app, config, store, registry, self.host,
                                        follow_ups=follow_ups)  # fmt: skip
        self._cond = threading.Condition()
        self._ready: list[_Delivery] = []
        self._delayed: list[tuple[float, int, _Delivery]] = []
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._hands_off = False
        log.warning(
            "not running under uWSGI: jobs run in %d threads of this process "
            "(local mode; SPOOLKIT_LOCAL_WORKERS). Run 'uwsgi --ini uwsgi.ini' for spoolers.",
            self.workers,
        )

    #: Runs the jobs of this process only: it claims nothing from other hosts.
    node = None

    def capacity(self) -> dict[str, int]:
        return {}

    def delivery_for(self, job_id: str, priority: int | None, now: float) -> str:
        return LOCAL_PREFIX + self.host.instance()

    def stage(
        self,
        job_id: str,
        task: str,
        delivery: str | None,
        payload: str,
        run_at: float | None,
        priority: int | None,
        *,
        queue: str = DEFAULT_QUEUE,
    ) -> Handoff:
        """Nothing can fail for want of space here: queue it in memory at ``commit``."""
        args, kwargs = decode_arguments(payload)
        queued = _Delivery((priority if priority is not None else 100, next(self._seq)),
                           job_id, delivery or "", task, args, kwargs)  # fmt: skip
        return Deferred(lambda: self._put(queued, run_at))

    def submit(self, job: Job, payload: str) -> None:
        self.stage(job.id, job.task, job.spool_file, payload, job.scheduled_for,
                   job.priority).commit()  # fmt: skip

    def release(self, job: Job) -> None:
        """Nothing to do: the queued entry is dropped when its claim sees ``cancelled``."""

    def hand_off_only(self) -> None:
        """Queue nothing in memory from now on. A job handed over keeps this process's
        delivery in its row; once the process has exited, the server's housekeeper
        sees that delivery dead and spools the job (within a pass and its grace)."""
        self._hands_off = True

    def _put(self, delivery: _Delivery, at: float | None) -> None:
        if self._hands_off:
            return
        with self._cond:
            if at is not None and at > time.time():
                heapq.heappush(self._delayed, (at, next(self._seq), delivery))
            else:
                heapq.heappush(self._ready, delivery)
            while len(self._threads) < self.workers:
                name = f"spoolkit-local-{len(self._threads) + 1}"
                thread = threading.Thread(target=self._loop, name=name,
                                          daemon=True)  # fmt: skip
                self._threads.append(thread)
                thread.start()
            self._cond.notify()

    def _next(self) -> _Delivery:
        with self._cond:
            while True:
                now = time.time()
                while self._delayed and self._delayed[0][0] <= now:
                    heapq.heappush(self._ready, heapq.heappop(self._delayed)[2])
                if self._ready:
                    return heapq.heappop(self._ready)
                timeout = self._delayed[0][0] - now if self._delayed else None
                self._cond.wait(timeout)

    def _loop(self) -> None:
        while True:
            delivery = self._next()
            try:
                step = self.worker.process(
                    delivery.job_id, delivery.name, delivery.task, delivery.args, delivery.kwargs
                )
            except Exception:
                log.exception("job %s: local delivery failed; trying again in 1 s", delivery.job_id)
                self._put(delivery, time.time() + 1)
                continue
            hand_over(self, step.follow_ups)
            if step.verdict is Verdict.AGAIN:
                self._put(delivery, step.at if step.at is not None else time.time() + 1)
            elif step.verdict is Verdict.QUARANTINE:
                log.error("job %s rejected: %s", delivery.job_id, step.reason)

    def survey(self, now: float) -> Callable[[Job], bool]:
        return lambda job: local_delivery_alive(job.spool_file or "")

    def maintain(self, now: float) -> None:
        """Nothing to keep in order: jobs wait in memory."""

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"local_workers": self.workers}
