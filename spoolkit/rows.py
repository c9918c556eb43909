"""What every SQL store shares: the job row's columns, and how a row becomes a
:class:`~spoolkit.job.Job` and a :class:`~spoolkit.store.NewJob` becomes a row.

Statements are written with ``?`` placeholders (SQLite's); a store whose driver
wants another style converts them once (``postgres.py``).
"""

from __future__ import annotations

import json
from typing import Any

from .job import Job, JobError, Progress
from .states import JobState
from .store import NewJob

#: Attempts kept in a job's history.
HISTORY_LIMIT = 50

COLUMNS = (
    "id, task, state, attempts, max_attempts, backoff, priority, created_at, scheduled_for, "
    "started_at, finished_at, updated_at, progress, result, error_type, error_message, "
    "error_traceback, spool_file, runner, runner_pid, origin, parent_id, on_success, "
    "on_failure, callback_url, timeout, abort_requested, periodic_slot, queue"
)

INSERT = (
    "INSERT INTO spoolkit_jobs (id, task, payload, state, priority, max_attempts, backoff, "
    "created_at, scheduled_for, updated_at, spool_file, origin, parent_id, on_success, "
    "on_failure, callback_url, timeout, idempotency_key, idempotency_hash, queue) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def new_row(new: NewJob) -> tuple[tuple[Any, ...], Job]:
    """The values ``INSERT`` takes for ``new``, and the job they make."""
    state = JobState.SCHEDULED if new.run_at is not None else JobState.QUEUED
    values = (new.id, new.task, new.payload, state.value, new.priority, new.max_attempts,
              new.backoff, new.created_at, new.run_at, new.created_at, new.spool_file,
              new.origin, new.parent_id, new.on_success, new.on_failure, new.callback_url,
              new.timeout, new.idempotency_key, new.idempotency_hash, new.queue)  # fmt: skip
    job = Job(
        id=new.id, task=new.task, state=state, attempts=0, max_attempts=new.max_attempts,
        backoff=new.backoff, priority=new.priority, created_at=new.created_at,
        scheduled_for=new.run_at, started_at=None, finished_at=None, updated_at=new.created_at,
        progress=None, result=None, error=None, spool_file=new.spool_file, runner=None,
        runner_pid=None, origin=new.origin, parent_id=new.parent_id, on_success=new.on_success,
        on_failure=new.on_failure, callback_url=new.callback_url, timeout=new.timeout,
        queue=new.queue,
    )  # fmt: skip
    return values, job



def row_to_job(row: tuple[Any, ...]) -> Job:
    (id_, task, state, attempts, max_attempts, backoff, priority, created, scheduled, started,
     finished, updated, progress, result, etype, emessage, etraceback, spool_file, runner,
     runner_pid, origin, parent_id, on_success, on_failure, callback_url, timeout,
     abort_requested, periodic_slot, queue) = row  # fmt: skip
    return Job(
        id=id_,
        task=task,
        state=JobState(state),
        attempts=attempts,
        max_attempts=max_attempts,
        backoff=backoff,
        priority=priority,
        created_at=created,
        scheduled_for=scheduled,
        started_at=started,
        finished_at=finished,
        updated_at=updated,
        progress=Progress(**json.loads(progress)) if progress else None,
        result=json.loads(result) if result is not None else None,
        error=JobError(etype, emessage or "", etraceback) if etype else None,
        spool_file=spool_file,
        runner=runner,
        runner_pid=runner_pid,
        origin=origin,
        parent_id=parent_id,
        on_success=on_success,
        on_failure=on_failure,
        callback_url=callback_url,
        timeout=timeout,
        abort_requested=abort_requested is not None,
        periodic_slot=periodic_slot,
        queue=queue,
    )
