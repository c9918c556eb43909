"""What a spooler does with a job file it was handed: the claim decision.

This is the kit's answer to uWSGI's blunt model (a file runs again whenever
it is still there and unlocked). The decision is a pure function of the
job's row, so it is unit-tested apart from any spooler:

* the row must name this very file, or the file is stale and is dropped;
* a row still ``running`` means the previous holder of the file's lock is
  gone. Who it was tells why: a spooler of *this* uWSGI instance died under
  the job (kill -9, OOM, harakiri), which uses up an attempt; a spooler of a
  *previous* instance was killed by a stop or reload, which must not
  (a deploy never turns jobs into ``failed``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import StrEnum

from .job import Job
from .states import FINISHED, WAITING, JobState


class ClaimAction(StrEnum):
    RUN = "run"  # start a new attempt
    RERUN = "rerun"  # the last attempt was cut short by a restart: run again, uncounted
    CRASHED = "crashed"  # the last attempt's spooler died in this instance: count it, then retry
    BUSY = "busy"  # a live spooler runs it right now (its lock was lost): leave it alone
    EARLY = "early"  # its time has not come (the file's mtime was moved): put it back
    DISCARD = "discard"  # stale file: the job finished, was cancelled or re-spooled
    UNKNOWN = "unknown"  # no such job in the store: an orphan file


def decide_claim(
    job: Job | None,
    delivery: str,
    instance: str,
    now: float,
    is_alive: Callable[[int], bool],
    node: str | None = None,
) -> ClaimAction:
    """Decide what to do with ``delivery`` of ``job``.

    ``delivery`` is the spool file's path relative to the spool directory (or
    the marker of a local-mode delivery); the job's row must name it.

    ``instance`` identifies the running server instance (see runtime.py);
    ``is_alive(pid)`` says whether a spooler of this instance is alive. ``node``:
    the node this spooler belongs to when several hosts share the store; a job
    another node claimed is not this spooler's to run.
    """
    if job is None:
        return ClaimAction.UNKNOWN
    if job.spool_file is None or job.spool_file != delivery or job.node not in (None, node):
        return ClaimAction.DISCARD
    if job.state in FINISHED:
        return ClaimAction.DISCARD
    if job.state is JobState.RUNNING:
        if job.runner != instance:
            return ClaimAction.RERUN
        if job.runner_pid and job.runner_pid != os.getpid() and is_alive(job.runner_pid):
            return ClaimAction.BUSY
        return ClaimAction.CRASHED
    if job.state in WAITING and job.scheduled_for is not None and job.scheduled_for > now:
        return ClaimAction.EARLY
    return ClaimAction.RUN
