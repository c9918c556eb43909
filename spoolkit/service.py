"""The kit bound to one Flask app: queue, read, cancel and retry jobs.

``SpoolKit.init_app`` builds one :class:`JobService` per app and keeps it in
``app.extensions["spoolkit"]``, where ``Task.delay()`` finds it through
``current_app``. It records each job in the store, then hands it to the
runner; it never asks which runner it has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Flask, current_app, has_app_context

from .config import Config
from .errors import ConfigurationError, JobNotFound, StoreUnavailable
from .job import Job, new_job_id
from .registry import TaskRegistry
from .retry import RetryPolicy
from .runner import Runner
from .schedule import resolve_run_at, validate_priority
from .states import JobState
from .store import HOUSEKEEPER_BEAT, NewJob, Store
from .task import EXTENSION_KEY, Call

log = logging.getLogger("spoolkit")


def current_service() -> JobService:
    """The job service of the current Flask app."""
    service = current_app.extensions.get(EXTENSION_KEY) if has_app_context() else None
    if not isinstance(service, JobService):
        raise ConfigurationError(
            "SpoolKit is not set up on the current app (or there is no app context): "
            "create SpoolKit(app), or call kit.init_app(app), and work inside the app"
        )
    return service


class JobService:
    def __init__(
        self, app: Flask, config: Config, registry: TaskRegistry, store: Store, runner: Runner
    ) -> None:
        self.app = app
        self.config = config
        self.registry = registry
        self.store = store
        self.runner = runner

    # -- queueing ------------------------------------------------------------------

    def enqueue(
        self,
        call: Call,
        *,
        at: object = None,
        countdown: object = None,
        priority: object = None,
        max_attempts: object = None,
    ) -> Job:
        """Validate the options, record, then hand to the runner. Raises before
        anything is stored."""
        now = time.time()
        run_at = None if self.runner.runs_inline else resolve_run_at(at, countdown, now)
        checked_priority = validate_priority(priority)
        if checked_priority is not None and self.runner.priority_unsupported:
            raise ConfigurationError(self.runner.priority_unsupported)
        policy = call.policy
        if max_attempts is not None:
            policy = RetryPolicy(max_attempts=max_attempts, backoff=policy.backoff)  # type: ignore[arg-type]
        job_id = new_job_id()
        delivery = (
            None
            if self.runner.parking.parks(run_at, now)
            else self.runner.delivery_for(job_id, checked_priority, now)
        )
        # The spool file first, not yet due: a full disk refuses the job before
        # anything is recorded, and nothing runs before the row exists.
        handoff = self.runner.stage(
            job_id, call.task, delivery, call.payload, run_at, checked_priority
        )
        try:
            job = self.store.insert(
                NewJob(
                    id=job_id,
                    task=call.task,
                    payload=call.payload,
                    max_attempts=policy.max_attempts,
                    backoff=policy.backoff,
                    priority=checked_priority,
                    created_at=now,
                    run_at=run_at,
                    spool_file=delivery,
                    origin=call.origin,
                )
            )
        except BaseException:
            handoff.abort()
            raise
        handoff.commit()
        log.info(
            "job %s %s: %s (max %d attempts)", job.id, job.state.value, job.task, job.max_attempts
        )
        return self.get(job.id) if self.runner.runs_inline else job

    def enqueue_by_name(
        self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any], **options: Any
    ) -> Job:
        """Queue a call of the task registered as ``name`` (``TaskNotFound`` if none)."""
        return self.enqueue(self.registry.get(name).call(args, kwargs), **options)

    # -- reading and managing --------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}")
        return job

    def list_jobs(
        self,
        state: JobState | None = None,
        task: str | None = None,
        limit: int = 50,
        *,
        with_results: bool = True,
    ) -> list[Job]:
        return self.store.list_jobs(state=state, task=task, limit=limit, with_results=with_results)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or scheduled job: it will never run.

        Only the row changes. A spooler that already holds the file claims
        nothing (the claim sees ``cancelled``) and drops it; the file is
        made due now so that happens at the next scan, not at its ``at``.
        """
        job = self.store.cancel(job_id, time.time())
        self.runner.release(job)
        log.info("job %s cancelled", job.id)
        return job

    def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again with a fresh attempt budget.

        Staged like a new job: answered with an error, it never runs again.
        """
        now = time.time()
        current = self.get(job_id)
        delivery = self.runner.delivery_for(job_id, current.priority, now)
        handoff = self.runner.stage(
            job_id, current.task, delivery, self.store.payload(job_id), None, current.priority
        )
        try:
            job = self.store.restart(job_id, delivery, now)
        except BaseException:
            handoff.abort()
            raise
        handoff.commit()
        log.info("job %s queued again by request (was %s)", job.id, current.state.value)
        return job

    def health(self) -> tuple[bool, dict[str, Any]]:
        report: dict[str, Any] = {"mode": self.runner.name}
        healthy = True
        try:
            self.store.check()
            report["jobs"] = self.store.counts()
            report["store"] = "ok"
        except StoreUnavailable as exc:
            report["store"] = f"unavailable: {exc}"
            healthy = False
        runner_ok, runner_report = self.runner.health()
        report.update(runner_report)
        healthy = healthy and runner_ok
        if self.runner.housekept and healthy:
            beat = self.store.get_meta(HOUSEKEEPER_BEAT)
            age = round(time.time() - float(beat), 1) if beat else None
            late = age is not None and age > max(30.0, 3 * self.config.housekeeping_interval)
            report["housekeeper"] = {"last_run_age": age, "ok": not late}
            healthy = not late
        report["status"] = "ok" if healthy else "unhealthy"
        return healthy, report
