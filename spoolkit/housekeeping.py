"""The housekeeper: makes "a job answered 202 runs" true when files go missing.

Spool files are not a safe record (uWSGI unlinks a file whose packet or
body is short, a web worker can die between committing the row and
writing the file, a person can delete one). The store is the record; every
``SPOOLKIT_HOUSEKEEPING_INTERVAL`` seconds, and once at start-up, this
walks the unfinished jobs and

* moves torn spool files (shorter than uWSGI's header, which uWSGI skips
  forever) to the quarantine;
* spools again a queued or scheduled job whose delivery is gone;
* queues again a running job whose runner is dead and whose file is gone
  (when the file is still there, its spooler's next scan handles it);
* deletes finished jobs older than ``SPOOLKIT_RESULT_TTL``.

Every change is a conditional update, so a claim, a cancel or a second
housekeeper racing it cannot make a job run twice from two files.
Under uWSGI it runs in a mule (``mule = spoolkit.mule:run`` in uwsgi.ini).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import runtime
from .backends import HOUSEKEEPER_KEY
from .states import WAITING, JobState

if TYPE_CHECKING:
    from .service import JobService

log = logging.getLogger("spoolkit.housekeeping")

BATCH = 500
#: Jobs touched more recently than this are left alone (an enqueue may be
#: between its commit and its file write).
GRACE_SECONDS = 2.0


@dataclass
class Report:
    respooled: int = 0
    requeued: int = 0
    purged: int = 0


class Housekeeper:
    def __init__(self, service: JobService) -> None:
        self.service = service

    def run_once(self, now: float | None = None) -> Report:
        service = self.service
        store, backend = service.store, service.backend
        now = time.time() if now is None else now
        report = Report()
        files = backend.spooled_files(now)
        after = ""
        while True:
            jobs = store.unfinished(after, BATCH, updated_before=now - GRACE_SECONDS)
            if not jobs:
                break
            after = jobs[-1].id
            for job in jobs:
                if backend.delivery_ok(job, files):
                    continue
                if job.state in WAITING:
                    requeue = False
                elif job.state is JobState.RUNNING and not runtime.runner_alive(
                    job.runner, job.runner_pid
                ):
                    requeue = True
                else:
                    continue
                token = backend.spool_file_for(job.id, job.priority, time.time())
                if not store.reassign(job, token, time.time(), requeue=requeue):
                    continue  # changed under us: whoever changed it owns it
                fresh = store.get(job.id)
                if fresh is None:
                    continue
                backend.submit(fresh, store.payload(job.id))
                if requeue:
                    report.requeued += 1
                    log.warning("job %s: runner %s pid %s is gone and so is its file; queued again",
                                job.id, job.runner, job.runner_pid)  # fmt: skip
                else:
                    report.respooled += 1
                    log.warning("job %s: %s delivery %s was missing; spooled again",
                                job.id, job.state.value, job.spool_file)  # fmt: skip
        if service.config.result_ttl > 0:
            while True:
                purged = store.purge(now - service.config.result_ttl)
                report.purged += purged
                if purged == 0:
                    break
        store.set_meta(HOUSEKEEPER_KEY, repr(now))
        return report

    def run_forever(self) -> None:
        interval = self.service.config.housekeeping_interval
        log.info("housekeeper started: every %.1fs", interval)
        while True:
            try:
                report = self.run_once()
                if report.respooled or report.requeued or report.purged:
                    log.info("housekeeping: %s", report)
            except Exception:
                log.exception("housekeeping pass failed; next try in %.1fs", interval)
            time.sleep(interval)
