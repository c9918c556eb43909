"""What every SQL store shares: the job row's columns, how a row becomes a
:class:`~spoolkit.job.Job` and a :class:`~spoolkit.store.NewJob` becomes a row,
how an attempt's end settles a job, and :class:`SQLStore`, the reads and state
changes whose SQL is the same on SQLite and PostgreSQL.

Statements are written with ``?`` placeholders (SQLite's); a store whose driver
wants another style converts them where they run (``postgres.py``: ``_read``
and ``_change``).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

from . import stats
from .errors import InvalidJobState, JobNotFound
from .job import Job, JobError, Progress
from .states import FINISHED, RETRYABLE, WAITING, JobState
from .store import FollowUp, NewJob, Node, QueueCounts, SlotRecord

#: Attempts kept in a job's history.
HISTORY_LIMIT = 50

COLUMNS = (
    "id, task, state, attempts, max_attempts, backoff, priority, created_at, scheduled_for, "
    "started_at, finished_at, updated_at, progress, result, error_type, error_message, "
    "error_traceback, spool_file, runner, runner_pid, origin, parent_id, on_success, "
    "on_failure, callback_url, timeout, abort_requested, periodic_slot, queue, node, node_epoch"
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



def batch_rows(jobs: Sequence[NewJob]) -> tuple[list[tuple[Any, ...]], list[Job]]:
    """What ``INSERT`` takes for each job of a batch, and the jobs they make."""
    if any(new.idempotency_key is not None for new in jobs):
        raise ValueError("a batch cannot carry idempotency keys")
    made = [new_row(new) for new in jobs]
    return [values for values, _ in made], [job for _, job in made]


def row_to_job(row: tuple[Any, ...]) -> Job:
    (id_, task, state, attempts, max_attempts, backoff, priority, created, scheduled, started,
     finished, updated, progress, result, etype, emessage, etraceback, spool_file, runner,
     runner_pid, origin, parent_id, on_success, on_failure, callback_url, timeout,
     abort_requested, periodic_slot, queue, node, node_epoch) = row  # fmt: skip
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
        node=node,
        node_epoch=node_epoch,
    )


def state_marks(values: Collection[JobState]) -> tuple[str, list[str]]:
    """``?, ?, ?`` and the states' values, for ``state IN (...)``."""
    return ",".join("?" * len(values)), [state.value for state in values]


def settle(
    job: Job, error: JobError | None, retry_at: float | None, outcome: str | None, now: float
) -> tuple[JobState, float | None, str, float | None]:
    """How an attempt's end leaves ``job`` (as it was while running): its new state,
    ``finished_at``, the history's label, and when it runs again. An abort requested
    meanwhile wins: ``cancelled``, whatever the attempt did."""
    label = outcome or ("succeeded" if error is None else "failed")
    if job.abort_requested:
        return JobState.CANCELLED, now, "aborted", None
    if error is None:
        return JobState.SUCCEEDED, now, label, retry_at
    if retry_at is not None:
        return JobState.SCHEDULED, None, label, retry_at
    return JobState.FAILED, now, label, retry_at


def check_change(job: Job | None, job_id: str, allowed: frozenset[JobState], action: str) -> Job:
    """``job`` if it exists and is in one of the ``allowed`` states, else the named error."""
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
    if job.state not in allowed:
        states = " or ".join(sorted(state.value for state in allowed))
        raise InvalidJobState(
            f"job {job_id} is {job.state.value}; only {states} jobs can be {action}",
            state=job.state.value,
        )
    return job


#: The ``UPDATE`` of an attempt's outcome (``finish``): state, times, result, error,
#: the retry's due time, and the spool file (and the claiming node) forgotten when the
#: retry is parked: any node may claim it then.
FINISH = (
    "UPDATE spoolkit_jobs SET state = ?, finished_at = ?, updated_at = ?, "
    "result = ?, scheduled_for = COALESCE(?, scheduled_for), error_type = ?, "
    "error_message = ?, error_traceback = ?, "
    "spool_file = CASE WHEN ? THEN NULL ELSE spool_file END, "
    "node = CASE WHEN ? THEN NULL ELSE node END, "
    "node_epoch = CASE WHEN ? THEN NULL ELSE node_epoch END WHERE id = ?"
)
#: The fence every write about a running job carries (``claim``, ``set_progress``,
#: ``finish``): the node that claimed it and its epoch then, both ``None`` on one host.
#: A node that was frozen or cut off while another took its jobs back finds them
#: changed and its write dropped.
FENCE = "COALESCE(node, '') = COALESCE(?, '') AND COALESCE(node_epoch, -1) = COALESCE(?, -1)"
#: The claim's condition on the node: a spooler takes only what its own node claimed,
#: or a row no node claimed that names a file on its disk (a ``uwsgi.spool()`` job the
#: kit adopted). On one host the parameter is ``None``: rows no node claimed.
OWN_NODE = "(node IS NULL OR node = ?)"
#: The fast claim: a waiting, due job named by this delivery, in one statement.
CLAIM = (
    "UPDATE spoolkit_jobs SET state = ?, attempts = attempts + 1, started_at = ?, "
    "finished_at = NULL, runner = ?, runner_pid = ?, updated_at = ?, node = COALESCE(node, ?) "
    "WHERE id = ? AND spool_file = ? AND state IN (?, ?) "
    f"AND (scheduled_for IS NULL OR scheduled_for <= ?) AND {OWN_NODE} RETURNING {COLUMNS}"
)
#: The claim's decided case (``RUN`` or ``RERUN``), on a row already read.
CLAIM_DECIDED = (
    "UPDATE spoolkit_jobs SET state = ?, attempts = attempts + ?, started_at = ?, "
    "finished_at = NULL, runner = ?, runner_pid = ?, updated_at = ?, node = COALESCE(node, ?) "
    "WHERE id = ?"
)
#: A running job is its spooler's node's (``COALESCE(node, ?)`` in the claims): a row no
#: node claimed (a ``uwsgi.spool()`` file the kit adopted) becomes that node's when it
#: starts, so only that node recovers it, and others take it back if the node dies.
TOTALS = (
    "INSERT INTO spoolkit_stats (task, series, value) VALUES (?, ?, ?) "
    "ON CONFLICT (task, series) DO UPDATE SET value = spoolkit_stats.value + excluded.value"
)
#: A node's beat (see ``SQLStore.CLOCK``).
BEAT = (
    "INSERT INTO spoolkit_nodes (id, host, beat, figures) VALUES (?, ?, {clock}, ?) "
    "ON CONFLICT (id) DO UPDATE SET host = excluded.host, beat = excluded.beat, "
    "figures = excluded.figures"
)
ATTEMPT = (
    "INSERT INTO spoolkit_attempts (job_id, attempt, started_at, finished_at, outcome, "
    "error_type, error_message, runner_pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def claim_params(
    job_id: str, delivery: str, instance: str, pid: int, now: float, node: str | None
) -> list[Any]:
    return [JobState.RUNNING.value, now, instance, pid, now, node, job_id, delivery,
            JobState.QUEUED.value, JobState.SCHEDULED.value, now, node]  # fmt: skip


def finish_params(
    job_id: str,
    state: JobState,
    finished: float | None,
    now: float,
    result: str | None,
    retry: float | None,
    error: JobError | None,
    park: bool,
) -> tuple[Any, ...]:
    """What ``FINISH`` takes: ``park`` (a retry that waits in the store) forgets the
    spool file and the node."""
    parked = park and retry is not None
    return (state.value, finished, now, result, retry, error.type if error else None,
            error.message if error else None, error.traceback if error else None,
            parked, parked, parked, job_id)  # fmt: skip


def attempt_params(job: Job, now: float, outcome: str, error: JobError | None) -> tuple[Any, ...]:
    return (job.id, job.attempts, job.started_at, now, outcome, error.type if error else None,
            error.message if error else None, job.runner_pid)  # fmt: skip


def ended_totals(
    job: Job, outcome: str, now: float, final: JobState | None
) -> list[tuple[str, str, float]]:
    """The ``spoolkit_stats`` rows an attempt's end adds to."""
    series = stats.ended_attempt(job, outcome, now, final.value if final else None)
    return [(job.task, name, value) for name, value in series]


class SQLStore:
    """The reads and state changes that are the same SQL on every SQL store.

    A subclass gives ``_read`` (a read, ``?`` placeholders) and ``_change`` (one
    job changed, durably, if its state allows), and implements the rest of
    ``store.Store`` itself: its connections, transactions and locking differ.
    ``CLOCK`` is the SQL for "now" in unix seconds: ``?`` (the caller's ``now``) on
    SQLite, the server's clock on PostgreSQL, which every host shares.
    """

    CLOCK = "?"

    def _clock(self, now: float) -> list[float]:
        """The parameters ``CLOCK`` takes (none when it is the server's clock)."""
        return [now]

    def nodes(self, now: float, within: float) -> list[Node]:
        rows = self._read(
            f"SELECT id, host, {self.CLOCK} - beat, figures FROM spoolkit_nodes "
            f"WHERE {self.CLOCK} - beat < ? ORDER BY id",
            [*self._clock(now), *self._clock(now), within],
        )
        return [Node(node, host, max(0.0, age), figures) for node, host, age, figures in rows]

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _change(
        self,
        job_id: str,
        allowed: frozenset[JobState],
        action: str,
        sets: str,
        params: list[Any],
        follow_up: FollowUp | None = None,
    ) -> Job:
        raise NotImplementedError

    def payload(self, job_id: str) -> str:
        rows = self._read("SELECT payload FROM spoolkit_jobs WHERE id = ?", (job_id,))
        if not rows:
            raise JobNotFound(f"no job {job_id!r}")
        return str(rows[0][0])

    def list_jobs(
        self,
        state: JobState | None = None,
        task: str | None = None,
        limit: int = 50,
        *,
        with_results: bool = True,
        queue: str | None = None,
        id_prefix: str | None = None,
        offset: int = 0,
    ) -> list[Job]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("state", state.value if state else None), ("task", task),
                              ("queue", queue)):  # fmt: skip
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if id_prefix:
            where.append("substr(id, 1, ?) = ?")
            params += [len(id_prefix), id_prefix]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        columns = COLUMNS if with_results else COLUMNS.replace(" result,", " NULL,")
        rows = self._read(
            f"SELECT {columns} FROM spoolkit_jobs {clause} ORDER BY created_at DESC, id "
            "LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [row_to_job(row) for row in rows]

    def state_counts(self) -> dict[tuple[str, str], int]:
        rows = self._read("SELECT queue, state, COUNT(*) FROM spoolkit_jobs GROUP BY queue, state")
        return {(queue, state): int(count) for queue, state, count in rows}

    def finished_since(self, since: float) -> dict[str, int]:
        """Through the (state, updated_at) index: a job's last update is its finish,
        or later (``updated_at >= finished_at``), so the range holds every one."""
        marks, finished = state_marks(FINISHED)
        rows = self._read(
            f"SELECT state, COUNT(*) FROM spoolkit_jobs WHERE state IN ({marks}) "
            "AND updated_at >= ? AND finished_at >= ? GROUP BY state",
            [*finished, since, since],
        )
        found = dict(rows)
        return {state.value: int(found.get(state.value, 0)) for state in FINISHED}

    def changed_since(self, after: float, limit: int) -> list[Job]:
        """Every state named, so SQLite walks the (state, updated_at) index once per
        state instead of reading every row; results are left out."""
        marks = ",".join("?" * len(JobState))
        columns = COLUMNS.replace(" result,", " NULL,")
        rows = self._read(
            f"SELECT {columns} FROM spoolkit_jobs WHERE state IN ({marks}) AND updated_at > ? "
            "ORDER BY updated_at, id LIMIT ?",
            [*(state.value for state in JobState), after, limit],
        )
        return [row_to_job(row) for row in rows]

    def totals(self) -> dict[str, dict[str, float]]:
        return stats.by_task(self._read("SELECT task, series, value FROM spoolkit_stats"))

    def counts(self) -> dict[str, int]:
        rows = self._read("SELECT state, COUNT(*) FROM spoolkit_jobs GROUP BY state")
        found = {state: count for state, count in rows}
        return {state.value: int(found.get(state.value, 0)) for state in JobState}

    def queue_counts(self, now: float) -> dict[str, QueueCounts]:
        """Ready (queued, or scheduled and due), scheduled and running jobs per queue.

        Reads every unfinished row through the state index, like ``counts`` reads every
        row (about 70 ms per 100,000 waiting jobs here); a covering index on the queue
        saved only a fifth of that and would cost every state change a write."""
        rows = self._read(
            "SELECT queue, CASE WHEN state = 'scheduled' AND scheduled_for > ? THEN 'later' "
            "ELSE state END AS kind, COUNT(*), MIN(COALESCE(scheduled_for, created_at)) "
            "FROM spoolkit_jobs WHERE state IN ('queued', 'scheduled', 'running') "
            "GROUP BY queue, kind",
            (now,),
        )
        tally: dict[str, dict[str, Any]] = {}
        for queue, kind, count, since in rows:
            entry = tally.setdefault(queue, {"ready": 0, "scheduled": 0, "running": 0,
                                             "oldest_ready": None})  # fmt: skip
            if kind == "later":
                entry["scheduled"] += count
            elif kind == JobState.RUNNING.value:
                entry["running"] += count
            else:  # queued, or scheduled and due
                entry["ready"] += count
                oldest = entry["oldest_ready"]
                entry["oldest_ready"] = since if oldest is None else min(oldest, since)
        return {queue: QueueCounts(**entry) for queue, entry in tally.items()}

    def unfinished(
        self, after_id: str, limit: int, updated_before: float, node: str | None = None
    ) -> list[Job]:
        """Unfinished jobs untouched since ``updated_before``, in id order after ``after_id``.

        Parked jobs (waiting, no spool file yet) are left out: ``due_parked`` finds them.
        With ``node`` (several hosts share the store): only the jobs that node claimed
        and those no node did that have a delivery (a CLI's), never another node's,
        and no unclaimed job (every node claims those).
        """
        finished_marks, finished = state_marks(FINISHED)
        scope, scoped = "", []
        if node is not None:
            scope, scoped = "AND (node = ? OR node IS NULL) AND spool_file IS NOT NULL ", [node]
        rows = self._read(
            f"SELECT {COLUMNS} FROM spoolkit_jobs "
            f"WHERE id > ? AND state NOT IN ({finished_marks}) AND updated_at < ? {scope}"
            "AND NOT (state IN ('queued', 'scheduled') AND spool_file IS NULL) "
            "ORDER BY id LIMIT ?",
            [after_id, *finished, updated_before, *scoped, limit],
        )
        return [row_to_job(row) for row in rows]

    def due_parked(self, until: float, limit: int) -> list[Job]:
        """Parked jobs (waiting, no spool file: scheduled far ahead, or of a batch) due
        by ``until``, soonest first."""
        rows = self._read(
            f"SELECT {COLUMNS} FROM spoolkit_jobs WHERE state IN ('queued', 'scheduled') "
            "AND spool_file IS NULL AND COALESCE(scheduled_for, created_at) <= ? "
            "ORDER BY COALESCE(scheduled_for, created_at) LIMIT ?",
            [until, limit],
        )
        return [row_to_job(row) for row in rows]

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM spoolkit_meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def cancel(self, job_id: str, now: float, follow_up: FollowUp | None = None) -> Job:
        """Cancel a waiting job; a spooler's later claim sees ``cancelled`` and drops the file."""
        return self._change(
            job_id, WAITING, "cancelled", "state = ?, finished_at = ?, updated_at = ?",
            [JobState.CANCELLED.value, now, now], follow_up,
        )  # fmt: skip

    def request_abort(self, job_id: str, now: float, follow_up: FollowUp | None = None) -> Job:
        """Cancel a waiting job, or mark a running one to be stopped (durably: the mark
        outlives a restart, and the job never runs again); a finished job is refused."""
        try:
            return self.cancel(job_id, now, follow_up)
        except InvalidJobState as exc:
            if exc.state != JobState.RUNNING.value:
                raise InvalidJobState(
                    f"job {job_id} is {exc.state}; only queued, scheduled or running jobs "
                    "can be aborted",
                    state=exc.state,
                ) from None
        return self._change(
            job_id, frozenset({JobState.RUNNING}), "aborted",
            "abort_requested = COALESCE(abort_requested, ?), updated_at = ?", [now, now],
        )  # fmt: skip

    def abort_requested(self, job_id: str) -> bool:
        rows = self._read(
            "SELECT abort_requested IS NOT NULL FROM spoolkit_jobs WHERE id = ?", (job_id,)
        )
        return bool(rows and rows[0][0])

    def aborting(self, requested_before: float) -> list[Job]:
        """Running jobs whose abort was requested before ``requested_before``."""
        rows = self._read(
            f"SELECT {COLUMNS} FROM spoolkit_jobs WHERE abort_requested IS NOT NULL "
            "AND state = 'running' AND abort_requested < ?",
            (requested_before,),
        )
        return [row_to_job(row) for row in rows]

    def restart(self, job_id: str, spool_file: str | None, now: float) -> Job:
        """Queue a failed or cancelled job again, with a fresh attempt budget."""
        return self._change(
            job_id,
            RETRYABLE,
            "retried",
            "state = ?, attempts = 0, scheduled_for = ?, started_at = NULL, "
            "finished_at = NULL, progress = NULL, result = NULL, error_type = NULL, "
            "error_message = NULL, error_traceback = NULL, spool_file = ?, runner = NULL, "
            "runner_pid = NULL, abort_requested = NULL, updated_at = ?",
            [JobState.QUEUED.value, now, spool_file, now],
        )

    def slots(self) -> dict[str, SlotRecord]:
        rows = self._read("SELECT name, last_slot, fired_slot, fired_job FROM spoolkit_periodic")
        return {name: SlotRecord(last, fired, job) for name, last, fired, job in rows}
