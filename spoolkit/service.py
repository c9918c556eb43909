"""The kit bound to one Flask app: queue, read, cancel and retry jobs.

``SpoolKit.init_app`` builds one :class:`JobService` per app and stores it
in ``app.extensions["spoolkit"]``; ``Task.delay()`` finds it through
``current_app``, or, outside an app context (a spooler, the mule, a
script), through the process's default service.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, has_app_context

from .config import Config
from .encoding import encode_arguments
from .errors import ConfigurationError, JobNotFound, SpoolWriteError
from .job import Job
from .registry import TaskRegistry
from .retry import RetryPolicy
from .schedule import resolve_run_at, validate_priority
from .states import JobState
from .store import NewJob, SQLiteStore

if TYPE_CHECKING:
    from .backends import Backend
    from .task import Task
    from .worker import Worker

log = logging.getLogger("spoolkit")

_process_service: JobService | None = None


def set_process_service(service: JobService) -> None:
    global _process_service
    _process_service = service


def current_service() -> JobService:
    """The service of the current app, else of the app this process set up last."""
    if has_app_context():
        service = current_app.extensions.get("spoolkit")
        if isinstance(service, JobService):
            return service
    if _process_service is not None:
        return _process_service
    raise ConfigurationError(
        "spoolkit is not set up in this process: create SpoolKit(app) (or call "
        "kit.init_app(app)) before queueing jobs"
    )


def new_job_id() -> str:
    """22 URL-safe characters, 128 random bits: unguessable."""
    return secrets.token_urlsafe(16)


class JobService:
    def __init__(
        self,
        app: Flask,
        config: Config,
        registry: TaskRegistry,
        store: SQLiteStore,
        backend: Backend,
    ) -> None:
        from .worker import Worker

        self.app = app
        self.config = config
        self.registry = registry
        self.store = store
        self.backend = backend
        self.worker: Worker = Worker(self)

    # -- queueing ------------------------------------------------------------------

    def enqueue(
        self,
        task: Task[Any, Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        at: object = None,
        countdown: object = None,
        priority: object = None,
        max_attempts: object = None,
    ) -> Job:
        """Validate, record, then spool one job. Raises before anything is stored."""
        names = task.check_arguments(args, kwargs)
        payload = encode_arguments(task.name, args, kwargs, names)
        now = time.time()
        run_at = resolve_run_at(at, countdown, now)
        if not self.backend.honours_schedule:
            run_at = None
        checked_priority = validate_priority(priority)
        if checked_priority is not None:
            self.backend.check_priority()
        policy = task.policy
        if max_attempts is not None:
            policy = RetryPolicy(max_attempts=max_attempts, backoff=policy.backoff)  # type: ignore[arg-type]
        job_id = new_job_id()
        job = self.store.insert(
            NewJob(
                id=job_id,
                task=task.name,
                payload=payload,
                max_attempts=policy.max_attempts,
                backoff=policy.backoff,
                priority=checked_priority,
                created_at=now,
                run_at=run_at,
                spool_file=None
                if self.parks(run_at, now)
                else self.backend.spool_file_for(job_id, checked_priority, now),
            )
        )
        try:
            self.backend.submit(job, payload)
        except SpoolWriteError:
            self.store.delete(job.id)
            raise
        log.info(
            "job %s %s: %s (max %d attempts)", job.id, job.state.value, job.task, job.max_attempts
        )
        if self.backend.name == "eager":
            return self.get(job.id)
        return job

    def parks(self, run_at: float | None, now: float) -> bool:
        """Does a job due at ``run_at`` wait in the store rather than in the spool?"""
        return bool(
            self.backend.parks and run_at is not None and run_at > now + self.config.spool_ahead
        )

    def enqueue_by_name(
        self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any], **options: Any
    ) -> Job:
        return self.enqueue(self.registry.get(name), args, kwargs, **options)

    # -- reading and managing --------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}")
        return job

    def list_jobs(
        self, state: JobState | None = None, task: str | None = None, limit: int = 50
    ) -> list[Job]:
        return self.store.list_jobs(state=state, task=task, limit=limit)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or scheduled job: it will never run.

        Only the row changes. A spooler that already holds the file claims
        nothing (the claim sees ``cancelled``) and drops it; the file is
        made due now so that happens at the next scan, not at its ``at``.
        """
        job = self.store.cancel(job_id, time.time())
        self.backend.release(job)
        log.info("job %s cancelled", job.id)
        return job

    def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again with a fresh attempt budget."""
        now = time.time()
        current = self.get(job_id)
        spool_file = self.backend.spool_file_for(job_id, current.priority, now)
        job = self.store.restart(job_id, spool_file, now)
        self.backend.submit(job, self.store.payload(job_id))
        log.info("job %s queued again by request (was %s)", job.id, current.state.value)
        return job

    def health(self) -> tuple[bool, dict[str, Any]]:
        report: dict[str, Any] = {"mode": self.backend.name}
        healthy = True
        try:
            report["jobs"] = self.store.counts()
            report["store"] = "ok"
        except Exception as exc:
            report["store"] = f"unavailable: {exc}"
            healthy = False
        backend_ok, backend_report = self.backend.health()
        report.update(backend_report)
        healthy = healthy and backend_ok
        report["status"] = "ok" if healthy else "unhealthy"
        return healthy, report
