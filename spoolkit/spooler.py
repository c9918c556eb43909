"""The uWSGI spooler runner, the production one: one spool file per job, run by the
spooler processes configured in uwsgi.ini.

Setting it up prepares the spool directory, sets torn files aside (in the
master, before any spooler scans) and makes the kit's dispatcher the
callable uWSGI hands spool files to. Jobs due more than
``SPOOLKIT_SPOOL_AHEAD`` seconds ahead are parked in the store.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask

from . import dispatcher, runtime
from .compat import Compat
from .config import Config
from .encoding import Envelope, decode_arguments, from_spool_dict, to_spool_entries
from .errors import DecodeError
from .followups import FollowUps
from .job import Job
from .local import is_local_delivery, local_delivery_alive
from .queues import DEFAULT_QUEUE
from .registry import TaskRegistry
from .runner import Deferred, Handoff, WorkerRunner, delivery_of, hand_over
from .schedule import Parking, spool_mtime
from .spoolfile import SpoolDirectory, is_own_file, spool_file_name
from .store import SharedStore, Store
from .worker import Verdict, Worker

log = logging.getLogger("spoolkit.spooler")

_TRUE = {"1", "true", "yes", "on"}
#: A file shorter than uWSGI's header, due for this long, is torn (uWSGI's own
#: writer holds a lock on the empty file only for the moment it writes it).
TORN_AFTER = 5.0


class _StagedFile:
    def __init__(self, directory: SpoolDirectory, relative: str, due: int | None) -> None:
        self.directory = directory
        self.relative = relative
        self.due = due

    def commit(self) -> None:
        try:
            if self.due is not None and not self.directory.set_mtime(self.relative, self.due):
                log.warning("staged spool file %s vanished; the housekeeper spools its job "
                            "again", self.relative)  # fmt: skip
        except OSError as exc:
            log.error("staged spool file %s: cannot make it due (%s); it runs when its "
                      "hold ends", self.relative, exc.strerror)  # fmt: skip
        self.directory.wake()

    def abort(self) -> None:
        if not self.directory.remove_unclaimed(self.relative):
            log.warning("staged spool file %s is held by a spooler, which will find no job "
                        "for it and quarantine it", self.relative)  # fmt: skip


class SpoolerRunner(WorkerRunner):
    name = "spooler"
    #: A housekeeper (the uWSGI mule) maintains the store and recovers lost deliveries.
    housekept = True
    runs_inline = False

    def __init__(self, app: Flask, config: Config, store: Store, registry: TaskRegistry) -> None:
        #: Each queue's spool directory (uwsgi.ini declares them; see ``runtime.spooler_queues``).
        self.directories: dict[str, SpoolDirectory] = {}
        self.wakers: dict[str, runtime.SpoolerWaker] = {}
        paths = runtime.spooler_queues()
        for queue, path in paths.items():
            self.wakers[queue] = runtime.SpoolerWaker(path, paths.values())
            self.directories[queue] = SpoolDirectory(path, wake=self.wakers[queue])
            self.directories[queue].prepare()
        self.queues = tuple(self.directories)
        #: The default queue's directory and waker.
        self.directory = self.directories[DEFAULT_QUEUE]
        self.waker = self.wakers[DEFAULT_QUEUE]
        self._strays: set[str] = set()
        self.ordered = (runtime.uwsgi_option("spooler-ordered") or "").lower() in _TRUE
        self.priority_unsupported = None if self.ordered else (
            "priority needs 'spooler-ordered = true' in uwsgi.ini: without it uWSGI "
            "never looks into the priority directories"
        )  # fmt: skip
        #: Several hosts share the store: every job is parked and this node's
        #: housekeeper claims them for its idle spoolers (see ``store.SharedStore``).
        self.node = config.node if isinstance(store, SharedStore) else None
        self.parking = Parking(config.spool_ahead, everything=self.node is not None,
                               batches=True)  # fmt: skip
        #: Spoolers per queue as uwsgi.ini sizes them (``spooler-processes``): what a
        #: spooler refills its queue up to (see ``_refill``).
        processes = runtime.uwsgi_option("spooler-processes") or "1"
        self.per_queue = max(1, int(processes)) if processes.isdigit() else 1
        self.host = runtime.UwsgiHost()
        self.nice = config.spooler_nice
        #: How long a staged file waits for its row (see ``stage``), in seconds.
        self.hold = config.store_timeout + 30.0
        self.retention = config.result_ttl
        self.purge_interval = config.housekeeping_interval
        self._next_purge = 0.0
        # Callbacks and webhook deliveries: parked too where nodes claim jobs.
        follow_ups = FollowUps(registry, config, lambda job_id, priority, now: delivery_of(
            self, job_id, priority, None, now))  # fmt: skip
        self.worker = Worker.for_config(app, config, store, registry, self.host, self.parking,
                                        follow_ups, self.node)  # fmt: skip
        self._reniced_pid: int | None = None
        self.compat = Compat(app, config, store, registry, self.directories)
        self.store = store
        if runtime.in_master_before_fork() and runtime.uwsgi_option("spooler"):
            # After a crash of the machine, files can be torn; uWSGI handles
            # those badly (see SpoolDirectory.is_torn), so set them aside
            # before any spooler scans. Their jobs are spooled again from the
            # store by the housekeeper.
            self.spooled_files(time.time(), check_all=True)
        dispatcher.install(self, self.spool_paths)
        server = runtime.uwsgi_module()
        if server is not None:
            self.compat.install(server)

    @property
    def spool_path(self) -> str:
        return self.directory.path

    @property
    def spool_paths(self) -> list[str]:
        """Every queue's spool directory."""
        return [directory.path for directory in self.directories.values()]

    def _directory(self, queue: str) -> SpoolDirectory:
        """The queue's directory; a queue no longer declared in uwsgi.ini runs in the
        default one (its jobs would wait forever otherwise), said once in the log."""
        found = self.directories.get(queue)
        if found is not None:
            return found
        if queue not in self._strays:
            self._strays.add(queue)
            log.error("queue %r is not declared in uwsgi.ini (any more); its jobs run in the "
                      "default queue", queue)  # fmt: skip
        return self.directory

    def _queue_serving(self, directory: str | None) -> str | None:
        """The queue whose spool directory, or a priority subdirectory of it, is ``directory``."""
        found = runtime.spool_directory_of(directory, self.spool_paths)
        return next((q for q, spool in self.directories.items() if spool.path == found), None)

    # -- queueing -------------------------------------------------------------------

    def delivery_for(self, job_id: str, priority: int | None, now: float) -> str:
        return self.directory.relative_name(spool_file_name(job_id, now), priority)

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
        """Write the job's file into its queue's directory now, not due for ``hold``
        seconds (or until its own time, if later); ``commit`` makes it due and wakes
        the spoolers, ``abort`` removes it. A web worker that dies in between leaves a
        file that runs when the hold ends; a row that took longer than the hold finds its
        file quarantined by a spooler (no job yet) and the housekeeper spools it again."""
        if delivery is None:
            return Deferred()  # parked: the housekeeper spools it when it is nearly due
        now = time.time()
        due = spool_mtime(run_at, now)
        staged = max(due, math.ceil(now + self.hold))
        entries, body = to_spool_entries(job_id, task, payload)
        directory = self._directory(queue)
        directory.write(delivery, entries, body, staged, wake=False)
        return _StagedFile(directory, delivery, due if due < staged else None)

    def submit(self, job: Job, payload: str) -> None:
        if job.spool_file is None:
            return  # parked: the housekeeper spools it when it is nearly due
        entries, body = to_spool_entries(job.id, job.task, payload)
        self._directory(job.queue).write(
            job.spool_file, entries, body, spool_mtime(job.scheduled_for, time.time())
        )

    def hand_off_only(self) -> None:
        """Nothing to change: this process only writes spool files; spoolers run them."""

    def capacity(self) -> dict[str, int]:
        """Each queue's live spoolers (none for a producer-only instance)."""
        if not runtime.uwsgi_option("spooler"):
            return {}
        _, report = self.health()
        return {queue: entry["spoolers_alive"] for queue, entry in report["queues"].items()}

    def release(self, job: Job) -> None:
        """Make a cancelled job's file due now, so a spooler drops it at its next scan."""
        if job.spool_file and not is_local_delivery(job.spool_file):
            directory = self._directory(job.queue)
            directory.set_mtime(job.spool_file, spool_mtime(None, time.time()))
            directory.wake()

    # -- running (in a spooler process, called by the dispatcher) -------------------------

    def handle(self, spool: Mapping[Any, Any], name: str, directory: str) -> int:
        """Run the job of spool file ``name`` found in ``directory``; a uWSGI return code."""
        if self._reniced_pid != os.getpid():
            # uWSGI has no hook after a spooler's fork: the first file of each does it.
            self._reniced_pid = os.getpid()
            runtime.renice_spooler(self.nice)
        # The row names the file by its path under its queue's directory ("07/..." for
        # priority 7); with spooler-chdir set, the default queue's directory is searched.
        queue = self._queue_serving(directory) or DEFAULT_QUEUE
        delivery = self.directories[queue].relative_of(directory, name)
        try:
            envelope = from_spool_dict(spool)
        except DecodeError as exc:
            foreign = b"spoolkit" not in spool
            adopted = self.compat.adopt(spool, delivery, time.time(), queue) if foreign else None
            if adopted is None:
                return self._quarantine(directory, name, str(exc))
            args, kwargs = decode_arguments(self.store.payload(adopted.id))
            envelope = Envelope(adopted.id, adopted.task, args, kwargs)
        step = self.worker.process(
            envelope.job_id, delivery, envelope.task, envelope.args, envelope.kwargs
        )
        hand_over(self, step.follow_ups)
        self._refill(queue)
        if step.verdict is Verdict.QUARANTINE:
            return self._quarantine(directory, name, step.reason)
        if step.verdict is Verdict.AGAIN:
            if step.at is not None:
                dispatcher.postpone(directory, name, step.at)
            return dispatcher.SPOOL_RETRY
        return dispatcher.SPOOL_OK

    def _refill(self, queue: str) -> None:
        """Where nodes claim jobs: this spooler is about to be free, so claim the
        queue's next jobs for this node now (up to its spoolers, minus those it holds)
        and spool them here. Without this every job would wait for the mule to be
        woken and to claim it; the mule still claims on every tick and notification."""
        store = self.store
        if self.node is None or not isinstance(store, SharedStore):
            return
        now = time.time()
        try:
            claimed = store.claim_parked(
                self.node, None, {queue: self.per_queue}, now + 0.5, now,
                lambda job: self.delivery_for(job.id, job.priority, now), self.tasks(),
            )  # fmt: skip
            for job, payload in claimed:
                self.submit(job, payload)
        except Exception as exc:  # the mule's next tick claims them: never fail the job
            log.warning("queue %s: claiming the next jobs failed: %s", queue, exc)

    def _quarantine(self, directory: str, name: str, reason: str) -> int:
        """Keep a copy in the quarantine of the queue the file was found in."""
        queue = self._queue_serving(directory) or DEFAULT_QUEUE
        kept = self.directories[queue].quarantine(directory, name)
        if kept is None:
            # Could not keep a copy: do not destroy the only one. Park it for a day.
            log.error("spool file %s rejected (%s) but could not be quarantined; parked for 24h",
                      name, reason)  # fmt: skip
            dispatcher.postpone(directory, name, time.time() + 86400)
            return dispatcher.SPOOL_RETRY
        log.error("spool file %s rejected: %s; moved to %s", name, reason, kept)
        return dispatcher.SPOOL_OK

    # -- housekeeping -------------------------------------------------------------------

    def spooled_files(self, now: float, *, check_all: bool = False) -> dict[str, set[str]]:
        """Per queue, the job files a spooler can run; torn ones go to the quarantine
        on the way.

        The kit's own files are written under a lock and can only be torn by a
        crash of the machine: at start-up (``check_all``, before any spooler
        runs) every file is checked; on later passes only files of other
        writers here, and the kit's own in ``survey``, a batch at a time.
        """
        found: dict[str, set[str]] = {}
        for queue, directory in self.directories.items():
            files = found[queue] = set()
            for relative in directory.names():
                if (check_all or not is_own_file(relative)) and self._set_aside_if_torn(
                    directory, relative, now, check_all
                ):
                    continue
                files.add(relative)
        return found

    @staticmethod
    def _set_aside_if_torn(
        directory: SpoolDirectory, relative: str, now: float, at_start: bool = False
    ) -> bool:
        try:
            info = os.lstat(directory.absolute(relative))
        except FileNotFoundError:
            return True
        due = at_start or info.st_mtime < now - TORN_AFTER
        if not (due and directory.is_torn(relative, info)):
            return False
        kept = directory.set_aside_torn(relative)
        log.error("spool file %s is torn (%d bytes); moved to %s", relative, info.st_size, kept)
        return kept is not None

    def survey(self, now: float) -> Callable[[Job], bool]:
        """List each queue's spool directory once; the check says whether a job's file
        will reach a spooler of its queue (a torn one is set aside: no). A job left by a
        local runner is on its way while that process lives."""
        files = self.spooled_files(now)

        def on_its_way(job: Job) -> bool:
            if job.spool_file is None:
                return False
            if is_local_delivery(job.spool_file):
                return local_delivery_alive(job.spool_file)
            queue = job.queue if job.queue in files else DEFAULT_QUEUE  # see _directory
            if job.spool_file not in files[queue]:
                return False
            stale = job.updated_at < now - TORN_AFTER
            directory = self.directories[queue]
            return not (stale and self._set_aside_if_torn(directory, job.spool_file, now))

        return on_its_way

    def maintain(self, now: float) -> None:
        """For each queue: recreate a removed spool directory (the housekeeper's next pass
        spools its jobs again from the store), tell producers in other instances which
        spoolers to wake, and purge quarantined files past ``SPOOLKIT_RESULT_TTL``."""
        purge = self.retention > 0 and now >= self._next_purge
        if purge:
            self._next_purge = now + self.purge_interval
        for queue, directory in self.directories.items():
            if directory.usable() == "spool directory missing":
                log.error("spool directory %s of queue %s is gone; creating it again (its jobs "
                          "are spooled again from the store)", directory.path, queue)  # fmt: skip
                directory.prepare()
            if runtime.uwsgi_option("spooler"):
                runtime.publish_spoolers(directory.path, self.spool_paths)
            if purge and (purged := directory.purge_quarantine(now - self.retention)):
                log.info("purged %d quarantined spool files of queue %s older than %.0fs",
                         purged, queue, self.retention)  # fmt: skip

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Spoolers configured and alive, and per queue: its spoolers alive, its spool
        directory, its quarantine. A queue with no live spooler is unhealthy, unless a
        live spooler serves no directory the kit knows right now (just forked, or a task
        changed its working directory): it is given the benefit of the doubt."""
        cwds = {pid: runtime.spooler_cwd(pid) for pid in runtime.spooler_pids()
                if runtime.process_exists(pid)}  # fmt: skip
        configured = runtime.configured_spoolers()
        alive = len(cwds)
        report: dict[str, Any] = {
            "spoolers": {"configured": configured, "alive": alive},
            "spool_dir": self.directory.path,
            "spool_dirs": {queue: spool.path for queue, spool in self.directories.items()},
        }
        serving = {pid: self._queue_serving(cwd) for pid, cwd in cwds.items()}
        producer = runtime.uwsgi_option("spooler") is None
        ok = configured > 0 and alive == configured
        if producer:
            # A producer-only instance (spooler-external): another instance runs the jobs.
            external = len(self.waker.published())
            report["spoolers"]["external"] = external
            ok = external > 0
        queues: dict[str, dict[str, Any]] = {}
        problems = []
        for queue, directory in self.directories.items():
            # Its spoolers here, and those another instance serving it published there.
            mine = {pid for pid, served in serving.items() if served == queue}
            spoolers = len(mine | set(self.wakers[queue].published()))
            problem = directory.usable()
            if problem is not None:
                problems.append(problem if queue == DEFAULT_QUEUE else f"queue {queue}: {problem}")
            queues[queue] = {"spoolers_alive": spoolers, "spool": problem or "ok",
                             "quarantined": len(directory.quarantined())}  # fmt: skip
            if spoolers == 0 and None not in serving.values():
                ok = False
        report["spool"] = "; ".join(problems) or "ok"
        report["quarantined"] = sum(entry["quarantined"] for entry in queues.values())
        report["queues"] = queues
        return ok and not problems, report
