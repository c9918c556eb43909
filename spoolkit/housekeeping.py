"""The housekeeper: makes "a job answered 202 runs" true when files go missing.

Spool files are not a safe record (uWSGI unlinks a file whose packet or
body is short, a web worker can die between committing the row and
writing the file, a person can delete one). The store is the record. The
housekeeper runs in a mule (``mule = spoolkit.mule:run`` in uwsgi.ini) and

* every half second, spools the parked jobs (scheduled further ahead than
  ``SPOOLKIT_SPOOL_AHEAD``, kept out of the spool directory) that are nearly due;
* once at start-up over every job, then every
  ``SPOOLKIT_HOUSEKEEPING_INTERVAL`` seconds over the next batch of them:
  moves torn spool files to the quarantine, spools again a queued or
  scheduled job whose file is gone, queues again a running job whose runner
  is dead and whose file is gone (when the file is still there, its
  spooler's next scan handles it);
* deletes finished jobs older than ``SPOOLKIT_RESULT_TTL``.

A pass looks at a bounded number of jobs, continuing where the last one
stopped, so a backlog of 100,000 jobs costs each pass the same as one of
a thousand. Every change is a conditional update, so a claim, a cancel or
a second housekeeper racing it cannot make a job run twice from two files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import runtime
from .backends import HOUSEKEEPER_KEY
from .job import Job
from .states import WAITING, JobState

if TYPE_CHECKING:
    from .service import JobService

log = logging.getLogger("spoolkit.housekeeping")

BATCH = 500
#: Jobs looked at per periodic pass (the start-up pass looks at all).
PASS_LIMIT = 2000
#: Jobs touched more recently than this are left alone (an enqueue may be
#: between its commit and its file write).
GRACE_SECONDS = 2.0
#: How often parked jobs are checked for being nearly due.
SCHEDULER_TICK = 0.5


@dataclass
class Report:
    respooled: int = 0
    requeued: int = 0
    purged: int = 0
    unparked: int = 0


class Housekeeper:
    def __init__(self, service: JobService) -> None:
        self.service = service
        self._cursor = ""

    def run_once(self, now: float | None = None, limit: int | None = PASS_LIMIT) -> Report:
        """One pass over up to ``limit`` unfinished jobs (all with ``None``)."""
        service = self.service
        store, backend = service.store, service.backend
        now = time.time() if now is None else now
        report = Report()
        files = backend.spooled_files(now)
        seen = 0
        while limit is None or seen < limit:
            jobs = store.unfinished(self._cursor, BATCH, updated_before=now - GRACE_SECONDS)
            if not jobs:
                self._cursor = ""  # wrapped around: the next pass starts again
                break
            self._cursor = jobs[-1].id
            seen += len(jobs)
            for job in jobs:
                if not backend.delivery_ok(job, files, now):
                    self._recover(job, report)
        if service.config.result_ttl > 0:
            while purged := store.purge(now - service.config.result_ttl):
                report.purged += purged
        store.set_meta(HOUSEKEEPER_KEY, repr(now))
        return report

    def _recover(self, job: Job, report: Report) -> None:
        store, backend = self.service.store, self.service.backend
        if job.state in WAITING:
            requeue = False
        elif job.state is JobState.RUNNING and not runtime.runner_alive(job.runner, job.runner_pid):
            requeue = True
        else:
            return
        now = time.time()
        far = job.state is JobState.SCHEDULED and self.service.parks(job.scheduled_for, now)
        token = None if far else backend.spool_file_for(job.id, job.priority, now)
        if not store.reassign(job, token, now, requeue=requeue):
            return  # changed under us: whoever changed it owns it
        fresh = store.get(job.id)
        if fresh is None:
            return
        backend.submit(fresh, store.payload(job.id))
        if requeue:
            report.requeued += 1
            log.warning("job %s: runner %s pid %s is gone and so is its file; queued again",
                        job.id, job.runner, job.runner_pid)  # fmt: skip
        else:
            report.respooled += 1
            log.warning("job %s: %s delivery %s was missing; %s",
                        job.id, job.state.value, job.spool_file,
                        "parked until nearly due" if far else "spooled again")  # fmt: skip

    def spool_due(self, now: float | None = None) -> int:
        """Spool the parked jobs due within ``SPOOLKIT_SPOOL_AHEAD``; return how many."""
        store, backend = self.service.store, self.service.backend
        now = time.time() if now is None else now
        spooled = 0
        while jobs := store.due_parked(now + self.service.config.spool_ahead, BATCH):
            for job in jobs:
                token = backend.spool_file_for(job.id, job.priority, now)
                if store.reassign(job, token, now, requeue=False) and (fresh := store.get(job.id)):
                    backend.submit(fresh, store.payload(job.id))
                    spooled += 1
            if len(jobs) < BATCH:
                break
        return spooled

    def publish(self) -> None:
        """Tell producers in other instances which spoolers to wake (spooler mode only)."""
        backend = self.service.backend
        directory = getattr(backend, "directory", None)
        if directory is not None and runtime.uwsgi_option("spooler"):
            runtime.publish_spoolers(directory.path)

    def run_forever(self) -> None:
        interval = self.service.config.housekeeping_interval
        log.info("housekeeper started: parked jobs every %.1fs, housekeeping every %.1fs",
                 SCHEDULER_TICK, interval)  # fmt: skip
        next_pass, limit = 0.0, None  # the first pass, at start-up, looks at every job
        while True:
            now = time.time()
            try:
                self.publish()
                self.spool_due(now)
                self.service.store.checkpoint()
                if now >= next_pass:
                    report = self.run_once(now, limit)
                    next_pass, limit = now + interval, PASS_LIMIT
                    if report.respooled or report.requeued or report.purged:
                        log.info("housekeeping: %s", report)
            except Exception:
                log.exception("housekeeping failed; trying again in %.1fs", SCHEDULER_TICK)
                next_pass = now + interval
            time.sleep(SCHEDULER_TICK)
