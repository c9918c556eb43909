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
from .registry import TaskRegistry
from .runner import Deferred, Handoff, hand_over
from .schedule import Parking, spool_mtime
from .spoolfile import SpoolDirectory, is_own_file, spool_file_name
from .store import Store
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


class SpoolerRunner:
    name = "spooler"
    #: A housekeeper (the uWSGI mule) maintains the store and recovers lost deliveries.
    housekept = True
    runs_inline = False

    def __init__(self, app: Flask, config: Config, store: Store, registry: TaskRegistry) -> None:
        path = runtime.spooler_directory()
        self.waker = runtime.SpoolerWaker(path)
        self.directory = SpoolDirectory(path, wake=self.waker)
        self.directory.prepare()
        self.ordered = (runtime.uwsgi_option("spooler-ordered") or "").lower() in _TRUE
        self.priority_unsupported = None if self.ordered else (
            "priority needs 'spooler-ordered = true' in uwsgi.ini: without it uWSGI "
            "never looks into the priority directories"
        )  # fmt: skip
        self.parking = Parking(config.spool_ahead)
        self.host = runtime.UwsgiHost()
        self.nice = config.spooler_nice
        #: How long a staged file waits for its row (see ``stage``), in seconds.
        self.hold = config.store_timeout + 30.0
        self.retention = config.result_ttl
        self.purge_interval = config.housekeeping_interval
        self._next_purge = 0.0
        follow_ups = FollowUps(registry, config, self.delivery_for)
        self.worker = Worker.for_config(app, config, store, registry, self.host, self.parking,
                                        follow_ups)  # fmt: skip
        self._reniced_pid: int | None = None
        self.compat = Compat(app, config, store, registry, self.directory)
        self.store = store
        if runtime.in_master_before_fork() and runtime.uwsgi_option("spooler"):
            # After a crash of the machine, files can be torn; uWSGI handles
            # those badly (see SpoolDirectory.is_torn), so set them aside
            # before any spooler scans. Their jobs are spooled again from the
            # store by the housekeeper.
            self.spooled_files(time.time(), check_all=True)
        dispatcher.install(self)
        server = runtime.uwsgi_module()
        if server is not None:
            self.compat.install(server)

    @property
    def spool_path(self) -> str:
        return self.directory.path

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
    ) -> Handoff:
        """Write the job's file now, not due for ``hold`` seconds (or until its own
        time, if later); ``commit`` makes it due and wakes the spoolers, ``abort``
        removes it. A web worker that dies in between leaves a file that runs when
        the hold ends; a row that took longer than the hold finds its file
        quarantined by a spooler (no job yet) and the housekeeper spools it again."""
        if delivery is None:
            return Deferred()  # parked: the housekeeper spools it when it is nearly due
        now = time.time()
        due = spool_mtime(run_at, now)
        staged = max(due, math.ceil(now + self.hold))
        entries, body = to_spool_entries(job_id, task, payload)
        self.directory.write(delivery, entries, body, staged, wake=False)
        return _StagedFile(self.directory, delivery, due if due < staged else None)

    def submit(self, job: Job, payload: str) -> None:
        if job.spool_file is None:
            return  # parked: the housekeeper spools it when it is nearly due
        entries, body = to_spool_entries(job.id, job.task, payload)
        self.directory.write(
            job.spool_file, entries, body, spool_mtime(job.scheduled_for, time.time())
        )

    def release(self, job: Job) -> None:
        """Make a cancelled job's file due now, so a spooler drops it at its next scan."""
        if job.spool_file and not is_local_delivery(job.spool_file):
            self.directory.set_mtime(job.spool_file, spool_mtime(None, time.time()))
            self.directory.wake()

    # -- running (in a spooler process, called by the dispatcher) -------------------------

    def handle(self, spool: Mapping[Any, Any], name: str, directory: str) -> int:
        """Run the job of spool file ``name`` found in ``directory``; a uWSGI return code."""
        if self._reniced_pid != os.getpid():
            # uWSGI has no hook after a spooler's fork: the first file of each does it.
            self._reniced_pid = os.getpid()
            runtime.renice_spooler(self.nice)
        # The row names the file by its path under the spool directory ("07/..." for priority 7).
        delivery = self.directory.relative_of(directory, name)
        try:
            envelope = from_spool_dict(spool)
        except DecodeError as exc:
            foreign = b"spoolkit" not in spool
            adopted = self.compat.adopt(spool, delivery, time.time()) if foreign else None
            if adopted is None:
                return self._quarantine(directory, name, str(exc))
            args, kwargs = decode_arguments(self.store.payload(adopted.id))
            envelope = Envelope(adopted.id, adopted.task, args, kwargs)
        step = self.worker.process(
            envelope.job_id, delivery, envelope.task, envelope.args, envelope.kwargs
        )
        hand_over(self, step.follow_ups)
        if step.verdict is Verdict.QUARANTINE:
            return self._quarantine(directory, name, step.reason)
        if step.verdict is Verdict.AGAIN:
            if step.at is not None:
                dispatcher.postpone(directory, name, step.at)
            return dispatcher.SPOOL_RETRY
        return dispatcher.SPOOL_OK

    def _quarantine(self, directory: str, name: str, reason: str) -> int:
        kept = self.directory.quarantine(directory, name)
        if kept is None:
            # Could not keep a copy: do not destroy the only one. Park it for a day.
            log.error("spool file %s rejected (%s) but could not be quarantined; parked for 24h",
                      name, reason)  # fmt: skip
            dispatcher.postpone(directory, name, time.time() + 86400)
            return dispatcher.SPOOL_RETRY
        log.error("spool file %s rejected: %s; moved to %s", name, reason, kept)
        return dispatcher.SPOOL_OK

    # -- housekeeping -------------------------------------------------------------------

    def spooled_files(self, now: float, *, check_all: bool = False) -> set[str]:
        """The job files a spooler can run; torn ones go to the quarantine on the way.

        The kit's own files are written under a lock and can only be torn by a
        crash of the machine: at start-up (``check_all``, before any spooler
        runs) every file is checked; on later passes only files of other
        writers here, and the kit's own in ``survey``, a batch at a time.
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

    def survey(self, now: float) -> Callable[[Job], bool]:
        """List the spool directory once; the check says whether a job's file will reach
        a spooler (a torn one is set aside: no). A job left by a local runner is on its
        way while that process lives."""
        files = self.spooled_files(now)

        def on_its_way(job: Job) -> bool:
            if job.spool_file is None:
                return False
            if is_local_delivery(job.spool_file):
                return local_delivery_alive(job.spool_file)
            if job.spool_file not in files:
                return False
            stale = job.updated_at < now - TORN_AFTER
            return not (stale and self._set_aside_if_torn(job.spool_file, now))

        return on_its_way

    def maintain(self, now: float) -> None:
        """Recreate a removed spool directory (the housekeeper's next pass spools its jobs
        again from the store), tell producers in other instances which spoolers to wake,
        and purge quarantined files past ``SPOOLKIT_RESULT_TTL``."""
        if self.directory.usable() == "spool directory missing":
            log.error("spool directory %s is gone; creating it again (its jobs are spooled "
                      "again from the store)", self.directory.path)  # fmt: skip
            self.directory.prepare()
        if runtime.uwsgi_option("spooler"):
            runtime.publish_spoolers(self.directory.path)
        if self.retention > 0 and now >= self._next_purge:
            self._next_purge = now + self.purge_interval
            if purged := self.directory.purge_quarantine(now - self.retention):
                log.info("purged %d quarantined spool files older than %.0fs",
                         purged, self.retention)  # fmt: skip

    def health(self) -> tuple[bool, dict[str, Any]]:
        pids = runtime.spooler_pids()
        configured = runtime.configured_spoolers()
        alive = sum(1 for pid in pids if runtime.process_exists(pid))
        report: dict[str, Any] = {
            "spoolers": {"configured": configured, "alive": alive},
            "spool_dir": self.directory.path,
        }
        ok = configured > 0 and alive == configured
        if runtime.uwsgi_option("spooler") is None:
            # A producer-only instance (spooler-external): another instance runs the jobs.
            external = len(self.waker.published())
            report["spoolers"]["external"] = external
            ok = external > 0
        problem = self.directory.usable()
        report["spool"] = problem or "ok"
        report["quarantined"] = len(self.directory.quarantined())
        return ok and problem is None, report
