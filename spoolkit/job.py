"""The job as users see it: a read-only snapshot of one row of the store."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from .queues import DEFAULT_QUEUE
from .schedule import isoformat
from .states import JobState


@dataclass(frozen=True)
class Progress:
    """What the task last reported through ``current_job.progress()``."""

    done: float
    total: float | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"done": _plain(self.done), "total": _plain(self.total), "message": self.message}


@dataclass(frozen=True)
class JobError:
    """Why the last attempt failed: exception type, message, end of the traceback."""

    type: str
    message: str
    traceback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


#: How an attempt ended, in a job's ``history``.
ATTEMPT_OUTCOMES = (
    "succeeded", "failed", "retry", "timeout", "worker_lost", "aborted", "interrupted",
)  # fmt: skip


@dataclass(frozen=True)
class Attempt:
    """One attempt of a job, for its ``history`` (the last 50 are kept)."""

    attempt: int
    started_at: float | None
    finished_at: float | None
    outcome: str
    error: JobError | None
    runner_pid: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "started_at": isoformat(self.started_at),
            "finished_at": isoformat(self.finished_at),
            "outcome": self.outcome,
            "error": {"type": self.error.type, "message": self.error.message}
            if self.error
            else None,
            "runner_pid": self.runner_pid,
        }


@dataclass(frozen=True)
class Job:
    """A snapshot of a job. Read it again with ``SpoolKit.get_job(job.id)``.

    Times are unix seconds (``to_dict()`` renders them as ISO 8601 UTC).
    ``spool_file``, ``runner`` and ``runner_pid`` are for diagnosis only.
    """

    id: str
    task: str
    state: JobState
    attempts: int
    max_attempts: int
    backoff: float
    priority: int | None
    created_at: float
    scheduled_for: float | None
    started_at: float | None
    finished_at: float | None
    updated_at: float
    progress: Progress | None
    result: Any
    error: JobError | None
    spool_file: str | None
    runner: str | None
    runner_pid: int | None
    #: "spoolkit", "uwsgidecorators" or "uwsgi-tasks": whose spool call queued it.
    origin: str = "spoolkit"
    #: The queue (spooler directory) that runs it; kept through retries and re-spooling.
    queue: str = DEFAULT_QUEUE
    #: The job whose outcome queued this one (a callback or a webhook delivery).
    parent_id: str | None = None
    on_success: str | None = None
    on_failure: str | None = None
    callback_url: str | None = None
    #: Seconds an attempt may run before ``JobTimeout`` (``None``: no limit but harakiri).
    timeout: float | None = None
    abort_requested: bool = False
    #: The slot a periodic schedule fired this job for (unix seconds), else ``None``.
    periodic_slot: float | None = None
    #: Several hosts on one store: the node that claimed the job, and that node's epoch
    #: when it did (its fencing token: every later write about the job must carry both).
    node: str | None = None
    node_epoch: int | None = None
    #: Jobs queued by this one's outcome (callbacks, webhook deliveries): ids.
    callbacks: tuple[str, ...] = ()
    history: tuple[Attempt, ...] = ()
    #: Returned for an idempotency key seen before (not part of the JSON).
    replayed: bool = False

    @property
    def is_finished(self) -> bool:
        return self.state.is_finished

    def to_dict(self, *, with_result: bool = True) -> dict[str, Any]:
        """The job as the HTTP API shows it (lists leave ``result`` and ``history`` out)."""
        shown = {
            "id": self.id,
            "task": self.task,
            "origin": self.origin,
            "queue": self.queue,
            "state": self.state.value,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "priority": self.priority,
            "created_at": isoformat(self.created_at),
            "scheduled_for": isoformat(self.scheduled_for),
            "started_at": isoformat(self.started_at),
            "finished_at": isoformat(self.finished_at),
            "progress": self.progress.to_dict() if self.progress else None,
            "result": self.result,
            "error": self.error.to_dict() if self.error else None,
            "parent_id": self.parent_id,
            "callbacks": list(self.callbacks),
            "on_success": self.on_success,
            "on_failure": self.on_failure,
            "callback_url": self.callback_url,
            "timeout": self.timeout,
            "abort_requested": self.abort_requested,
            "periodic_slot": isoformat(self.periodic_slot),
            "node": self.node,
        }
        if with_result:
            shown["history"] = [attempt.to_dict() for attempt in self.history]
        else:
            del shown["result"]
        return shown


def new_job_id() -> str:
    """22 URL-safe characters, 128 random bits: unguessable."""
    return secrets.token_urlsafe(16)


def _plain(number: float | None) -> float | int | None:
    """``3.0`` -> ``3`` so progress counts read as counts."""
    if number is not None and float(number).is_integer():
        return int(number)
    return number
