"""How queued jobs reach a runner: uWSGI spoolers, local threads, or inline.

* :class:`SpoolerBackend` (under uWSGI): one spool file per job, run by the
  spooler processes configured in uwsgi.ini. The production mode.
* :class:`LocalBackend` (outside uWSGI, ``flask run``): a fixed number of
  threads in this process, same store and states. Jobs unfinished when the
  process exits stay in the store; uWSGI's housekeeper spools them when it
  runs on the same database.
* :class:`EagerBackend` (``SPOOLKIT_EAGER=1``): the job runs inside
  ``delay()``, retries included, ignoring ``at``/``countdown``: for tests.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from . import runtime
from .encoding import decode_arguments, to_spool_entries
from .errors import ConfigurationError
from .job import Job
from .schedule import spool_mtime
from .spoolfile import SpoolDirectory, is_own_file, spool_file_name
from .worker import Verdict

if TYPE_CHECKING:
    from .service import JobService

log = logging.getLogger("spoolkit.backend")

HOUSEKEEPER_KEY = "housekeeper"
#: A file shorter than uWSGI's header, due for this long, is torn (uWSGI's own
#: writer holds a lock on the empty file only for the moment it writes it).
TORN_AFTER = 5.0


class Backend(Protocol):
    name: str
    #: False when ``at``/``countdown`` are ignored (eager mode).
    honours_schedule: bool

    #: True when far-future jobs wait in the store (spooler mode).
    parks: bool

    def attach(self, service: JobService) -> None: ...
    def spool_file_for(self, job_id: str, priority: int | None, now: float) -> str | None: ...
    def submit(self, job: Job, payload: str) -> None: ...
    def release(self, job: Job) -> None: ...
    def check_priority(self) -> None: ...
    def spooled_files(self, now: float) -> set[str]: ...
    def delivery_ok(self, job: Job, files: set[str], now: float) -> bool: ...
    def health(self) -> tuple[bool, dict[str, Any]]: ...


def local_token() -> str:
    return f"local:{runtime.instance_id()}"


def _local_delivery_alive(job: Job) -> bool:
    token = job.spool_file or ""
    return token.startswith("local:") and runtime.runner_alive(token[6:], None)


class SpoolerBackend:
    name = "spooler"
    honours_schedule = True
    parks = True

    def __init__(
        self, directory: SpoolDirectory, ordered: bool, waker: runtime.SpoolerWaker | None = None
    ) -> None:
        self.directory = directory
        self.ordered = ordered
        self.waker = waker
        self._service: JobService | None = None

    def attach(self, service: JobService) -> None:
        self._service = service

    def spool_file_for(self, job_id: str, priority: int | None, now: float) -> str:
        return self.directory.relative_name(spool_file_name(job_id, now), priority)

    def submit(self, job: Job, payload: str) -> None:
        if job.spool_file is None:
            return  # parked: the housekeeper spools it when it is nearly due
        entries, body = to_spool_entries(job.id, job.task, payload)
        self.directory.write(
            job.spool_file, entries, body, spool_mtime(job.scheduled_for, time.time())
        )

    def release(self, job: Job) -> None:
        if job.spool_file and not job.spool_file.startswith("local:"):
            self.directory.set_mtime(job.spool_file, spool_mtime(None, time.time()))
            self.directory.wake()

    def check_priority(self) -> None:
        if not self.ordered:
            raise ConfigurationError(
                "priority needs 'spooler-ordered = true' in uwsgi.ini: without it uWSGI "
                "never looks into the priority directories"
            )

    def spooled_files(self, now: float, *, check_all: bool = False) -> set[str]:
        """The job files a spooler can run; torn ones go to the quarantine on the way.

        The kit's own files are written under a lock and can only be torn by a
        crash of the machine: at start-up (``check_all``, before any spooler
        runs) every file is checked; on later passes only files of other
        writers here, and the kit's own in ``delivery_ok``, a batch at a time.
        """
        files = set()
        for relative in self.directory.names():
            if (check_all or not is_own_file(relative)) and self._set_aside_if_torn(
                relative, now, check_all
            ):
                continue
            files.add(relative)
        return files

    def _set_aside_if_torn(self, relative: str, now: float, at_start: bool = False) -> bool:
        try:
            info = os.lstat(self.directory.absolute(relative))
        except FileNotFoundError:
            return True
        due = at_start or info.st_mtime < now - TORN_AFTER
        if not (due and self.directory.is_torn(relative, info)):
            return False
        kept = self.directory.set_aside_torn(relative)
        log.error("spool file %s is torn (%d bytes); moved to %s", relative, info.st_size, kept)
        return kept is not None

    def delivery_ok(self, job: Job, files: set[str], now: float) -> bool:
        """Will the job's spool file reach a spooler? (A torn one is set aside: no.)"""
        if job.spool_file is None:
            return False
        if job.spool_file.startswith("local:"):
            return _local_delivery_alive(job)
        if job.spool_file not in files:
            return False
        stale = job.updated_at < now - TORN_AFTER
        return not (stale and self._set_aside_if_torn(job.spool_file, now))

    def health(self) -> tuple[bool, dict[str, Any]]:
        pids = runtime.spooler_pids()
        uwsgi = runtime.uwsgi_module()
        configured = len(uwsgi.spooler_pids()) if uwsgi is not None else 0
        alive = sum(1 for pid in pids if runtime.process_exists(pid))
        report: dict[str, Any] = {
            "spoolers": {"configured": configured, "alive": alive},
            "spool_dir": self.directory.path,
        }
        ok = configured > 0 and alive == configured
        if runtime.uwsgi_option("spooler") is None and self.waker is not None:
            # A producer-only instance (spooler-external): another instance runs the jobs.
            external = len(self.waker.published())
            report["spoolers"]["external"] = external
            ok = external > 0
        if self._service is not None:
            beat = self._service.store.get_meta(HOUSEKEEPER_KEY)
            age = round(time.time() - float(beat), 1) if beat else None
            report["housekeeper"] = {"last_run_age": age}
        return ok, report


@dataclass(order=True)
class _Delivery:
    sort_key: tuple[float, int]
    job_id: str = field(compare=False)
    token: str = field(compare=False)
    task: str = field(compare=False)
    args: list[Any] = field(compare=False)
    kwargs: dict[str, Any] = field(compare=False)


class LocalBackend:
    """A bounded pool of threads in this process; jobs wait in memory, in priority order."""

    name = "local"
    honours_schedule = True
    parks = False

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._service: JobService | None = None
        self._cond = threading.Condition()
        self._ready: list[_Delivery] = []
        self._delayed: list[tuple[float, int, _Delivery]] = []
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []

    def attach(self, service: JobService) -> None:
        self._service = service

    def spool_file_for(self, job_id: str, priority: int | None, now: float) -> str:
        return local_token()

    def submit(self, job: Job, payload: str) -> None:
        args, kwargs = decode_arguments(payload)
        seq = next(self._seq)
        delivery = _Delivery((job.priority if job.priority is not None else 100, seq),
                             job.id, job.spool_file or "", job.task, args, kwargs)  # fmt: skip
        self._put(delivery, job.scheduled_for)

    def _put(self, delivery: _Delivery, at: float | None) -> None:
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
        assert self._service is not None
        while True:
            delivery = self._next()
            try:
                step = self._service.worker.process(
                    delivery.job_id, delivery.token, delivery.task, delivery.args, delivery.kwargs
                )
            except Exception:
                log.exception("job %s: local delivery failed; trying again in 1 s", delivery.job_id)
                self._put(delivery, time.time() + 1)
                continue
            if step.verdict is Verdict.AGAIN:
                self._put(delivery, step.at if step.at is not None else time.time() + 1)
            elif step.verdict is Verdict.QUARANTINE:
                log.error("job %s rejected: %s", delivery.job_id, step.reason)

    def release(self, job: Job) -> None:
        """Nothing to do: the queued entry is dropped when its claim sees ``cancelled``."""

    def check_priority(self) -> None:
        """Priorities order the in-memory queue; nothing to check."""

    def spooled_files(self, now: float) -> set[str]:
        return set()

    def delivery_ok(self, job: Job, files: set[str], now: float) -> bool:
        return _local_delivery_alive(job)

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"local_workers": self.workers}


class EagerBackend:
    """Runs each job inside ``delay()``: for tests and debugging, never for production."""

    name = "eager"
    honours_schedule = False
    parks = False

    def __init__(self) -> None:
        self._service: JobService | None = None

    def attach(self, service: JobService) -> None:
        self._service = service

    def spool_file_for(self, job_id: str, priority: int | None, now: float) -> str:
        return "eager"

    def submit(self, job: Job, payload: str) -> None:
        assert self._service is not None
        args, kwargs = decode_arguments(payload)
        for _ in range(job.max_attempts + 1):
            step = self._service.worker.process(job.id, "eager", job.task, args, kwargs)
            if step.verdict is not Verdict.AGAIN:
                return

    def release(self, job: Job) -> None:
        """Nothing to release: an eager job has already run."""

    def check_priority(self) -> None:
        """Priorities mean nothing when jobs run at once."""

    def spooled_files(self, now: float) -> set[str]:
        return set()

    def delivery_ok(self, job: Job, files: set[str], now: float) -> bool:
        return True

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {}
