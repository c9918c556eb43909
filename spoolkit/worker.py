"""Running one delivery of a job: claim it, call the task in the app context, record
the outcome.

Shared by every runner (uWSGI spooler, local threads, eager), so a job goes
through the same states and retries whichever runs it. The worker is given
its collaborators (the app, the store, the task registry, and a
:class:`Host` that knows the processes of the runner it works for) and
never asks the runner anything else. What happens to the delivery (the
spool file) afterwards is the runner's business: this module answers with
a :class:`Step`.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from flask import Flask

from .config import Config
from .context import JobContext, running
from .encoding import encode_result
from .errors import EncodeError, JobTimeout, StoreUnavailable, TaskNotFound
from .followups import FollowUps
from .job import Job, JobError, Progress
from .lifecycle import ClaimAction
from .registry import TaskRegistry
from .retry import DEFAULT_MAX_BACKOFF, GiveUp, Retry, compute_backoff
from .schedule import Parking
from .store import NewJob, Store
from .task import Task

log = logging.getLogger("spoolkit.worker")

_TRACEBACK_TAIL = 4000
_MESSAGE_LIMIT = 2000


class Verdict(StrEnum):
    DONE = "done"  # the file has served its purpose: SPOOL_OK
    AGAIN = "again"  # keep the file, run it again at ``at``: SPOOL_RETRY
    QUARANTINE = "quarantine"  # keep a copy aside for a person, then drop it


@dataclass(frozen=True)
class Step:
    """What the runner does with the delivery: a verdict, a time for AGAIN, a reason."""

    verdict: Verdict
    at: float | None = None
    reason: str = ""
    #: Jobs the outcome queued (callbacks, webhook deliveries), recorded with it: the
    #: runner hands them over.
    follow_ups: tuple[NewJob, ...] = ()


class Host(Protocol):
    """The processes a runner runs jobs in, as the worker needs to know them."""

    def instance(self) -> str:
        """This run of the server, for the current process (see ``lifecycle``)."""
        ...

    def is_alive(self, pid: int) -> bool:
        """Is ``pid`` a live runner process of this instance?"""
        ...

    def time_limit(self) -> int | None:
        """Seconds after which the host kills an attempt (uWSGI's spooler-harakiri)."""
        ...

    def runner_alive(self, runner: str | None, pid: int | None) -> bool:
        """Could the process a row names as a job's runner still be running it? (For the
        housekeeper; judges runners of earlier instances and of local processes too.)"""
        ...

    def limit(self, seconds: float | None, grace: float) -> AbstractContextManager[None]:
        """Around an attempt: ``JobTimeout`` inside it after ``seconds``, and its process
        killed ``grace`` seconds later if it has not returned (where the host can)."""
        ...

    def kill(self, runner: str | None, pid: int | None) -> bool:
        """Kill the process running a job (an abort past its grace); ``False`` if this
        host cannot (not its process, or threads)."""
        ...


def error_from(exc: BaseException) -> JobError:
    """Type, message and the end of the traceback of an exception, for the job's ``error``."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    try:
        message = str(exc)
    except Exception:  # a __str__ that fails must not lose the outcome
        message = f"<{name} whose message cannot be shown>"
    try:
        trace = "".join(traceback.format_exception(exc))
    except Exception:
        trace = ""
    return JobError(
        type=name,
        message=storable(message[:_MESSAGE_LIMIT]),
        traceback=storable(trace[-_TRACEBACK_TAIL:]),
    )


def _outcome(error: JobError | None, retry_at: float | None) -> str:
    """The attempt's outcome for the history (the store says ``aborted`` when it was)."""
    if error is None:
        return "succeeded"
    if error.type == "Timeout":
        return "timeout"
    if error.type == "WorkerLost":
        return "worker_lost"
    return "retry" if retry_at is not None else "failed"


def storable(text: str) -> str:
    """``text`` with what UTF-8 cannot hold (lone surrogates) escaped as ``\\udcff``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class Worker:
    @classmethod
    def for_config(
        cls,
        app: Flask,
        config: Config,
        store: Store,
        registry: TaskRegistry,
        host: Host,
        parking: Parking | None = None,
        follow_ups: FollowUps | None = None,
        node: str | None = None,
    ) -> Worker:
        """A worker with the limits the kit's settings give."""
        return cls(app, store, registry, host, parking=parking, max_backoff=config.max_backoff,
                   max_result_bytes=config.max_result_bytes, follow_ups=follow_ups,
                   timeout_grace=config.timeout_grace, node=node)  # fmt: skip

    def __init__(
        self,
        app: Flask,
        store: Store,
        registry: TaskRegistry,
        host: Host,
        *,
        parking: Parking | None = None,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        max_result_bytes: int | None = None,
        follow_ups: FollowUps | None = None,
        timeout_grace: float = 5.0,
        node: str | None = None,
    ) -> None:
        self.app = app
        #: The node this worker's runner claims jobs for (several hosts on one store):
        #: it runs only jobs that node claimed. ``None`` on one host.
        self.node = node
        self.follow_ups = follow_ups
        self.timeout_grace = timeout_grace
        self.store = store
        self.registry = registry
        self.host = host
        self.parking = parking or Parking()
        self.max_backoff = max_backoff
        self.max_result_bytes = max_result_bytes

    def process(
        self,
        job_id: str,
        delivery: str,
        task_name: str,
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> Step:
        """Handle one delivery of a job: ``delivery`` is the spool file's path relative
        to the spool directory, or the marker of a local runner."""
        now = time.time()
        action, job = self.store.claim(
            job_id, delivery, self.host.instance(), os.getpid(), now, self.host.is_alive, self.node
        )
        if action is ClaimAction.UNKNOWN or job is None:
            return Step(Verdict.QUARANTINE, reason=f"no job {job_id} in the store")
        if action is ClaimAction.DISCARD:
            log.debug("job %s: dropping stale delivery %s (%s)", job_id, delivery, job.state.value)
            return Step(Verdict.DONE)
        if action is ClaimAction.BUSY:
            log.warning(
                "job %s is running in live spooler pid %s; leaving it", job_id, job.runner_pid
            )
            return Step(Verdict.AGAIN)
        if action is ClaimAction.EARLY:
            return Step(Verdict.AGAIN, at=job.scheduled_for)
        if action is ClaimAction.CRASHED:
            return self._record(
                job, now, error=self._lost_error(job, now), runner_pid=job.runner_pid
            )
        if job.abort_requested:  # asked before a restart: it never runs again
            return self._record(job, now, error=JobError("Aborted", "abort requested"),
                                retryable=False)  # fmt: skip
        if action is ClaimAction.RERUN:
            log.info("job %s: attempt %d was cut short by a restart; running it again, not counted",
                     job.id, job.attempts)  # fmt: skip
        if task_name != job.task:
            reason = f"spool file names task {task_name!r}, the store says {job.task!r}"
            self._record(job, now, error=JobError("SpoolFileRejected", reason), retryable=False)
            return Step(Verdict.QUARANTINE, reason=reason)
        try:
            task = self.registry.get(job.task, origin=job.origin)
        except TaskNotFound as exc:
            self._record(job, now, error=error_from(exc), retryable=False)
            return Step(Verdict.QUARANTINE, reason=str(exc))
        return self._run(job, task, args, kwargs)

    def _run(self, job: Job, task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> Step:
        context = JobContext(
            job.id, job.task, job.attempts, job.max_attempts, self._reporter(job),
            lambda: self.store.abort_requested(job.id),
        )  # fmt: skip
        log.info(
            "job %s running: %s (attempt %d/%d)", job.id, job.task, job.attempts, job.max_attempts
        )
        started = time.monotonic()
        result: str | None = None
        error: JobError | None = None
        countdown: float | None = None
        retryable = True
        runner = os.getpid()
        try:
            with (
                self.host.limit(job.timeout, self.timeout_grace),
                self.app.app_context(),
                running(context),
            ):
                value = task.fn(*args, **kwargs)
        except JobTimeout as exc:
            error = JobError("Timeout", storable(str(exc)), error_from(exc).traceback)
        except Retry as exc:
            countdown = exc.countdown
            error = JobError("Retry", storable(str(exc)))
        except GiveUp as exc:
            error, retryable = error_from(exc), False
        except Exception as exc:
            error = error_from(exc)
        else:
            try:
                result = encode_result(job.task, value, self.max_result_bytes)
            except EncodeError as exc:
                error, retryable = error_from(exc), False
        finally:
            if os.getpid() != runner:
                # A task forked and the child returned here: it must never act as the
                # runner (record an outcome, return into uWSGI's spooler loop).
                os._exit(0 if error is None else 1)
            self._flush(context, job.id)
        elapsed = time.monotonic() - started
        return self._record(job, time.time(), result=result, error=error, countdown=countdown,
                            retryable=retryable, elapsed=elapsed)  # fmt: skip

    def _record(
        self,
        job: Job,
        now: float,
        *,
        result: str | None = None,
        error: JobError | None = None,
        countdown: float | None = None,
        retryable: bool = True,
        elapsed: float | None = None,
        runner_pid: int | None = None,
    ) -> Step:
        retry_at = None
        if error is not None and retryable and job.attempts < job.max_attempts:
            if countdown is None:
                delay = compute_backoff(job.attempts, base=job.backoff, cap=self.max_backoff)
            else:  # Retry(countdown=...) from, say, an upstream Retry-After: capped too
                delay = min(countdown, self.max_backoff)
            retry_at = now + delay
        pid = os.getpid() if runner_pid is None else runner_pid
        park = self.parking.parks(retry_at, now)
        follow_ups = self.follow_ups
        collect = follow_ups.collect() if follow_ups and follow_ups.possible(job) else None
        recorded = self.store.finish(
            job.id, pid, now, result=result, error=error, retry_at=retry_at, park=park,
            outcome=_outcome(error, retry_at), follow_up=collect, node=job.node,
            epoch=job.node_epoch,
        )  # fmt: skip
        if not recorded:
            log.warning("job %s was taken over by another runner; dropping this delivery", job.id)
            return Step(Verdict.DONE)
        if collect is not None and collect.made:
            log.info("job %s queued %s", job.id,
                     ", ".join(f"{new.task} {new.id}" for new in collect.made))  # fmt: skip
            return Step(Verdict.DONE, follow_ups=tuple(collect.made))
        took = f" in {elapsed:.3f}s" if elapsed is not None else ""
        attempt = f"attempt {job.attempts}/{job.max_attempts}"
        if error is None:
            log.info("job %s succeeded%s (%s)", job.id, took, attempt)
            return Step(Verdict.DONE)
        if retry_at is not None:
            level = logging.INFO if error.type == "Retry" else logging.WARNING
            log.log(level, "job %s will retry in %.1fs (%s): %s: %s",
                    job.id, retry_at - now, attempt, error.type, error.message)  # fmt: skip
            # A parked retry waits in the store: this file is done with.
            return Step(Verdict.DONE) if park else Step(Verdict.AGAIN, at=retry_at)
        log.error(
            "job %s failed%s (%s, no retry): %s: %s",
            job.id,
            took,
            attempt,
            error.type,
            error.message,
        )
        return Step(Verdict.DONE)

    def lost(self, job: Job, why: str) -> Step:
        """Record that the attempt running ``job`` was lost with its node (another node's
        housekeeper found that node's heartbeat stale): counted as ``WorkerLost``, then
        retried or failed as its budget says. Fenced like any outcome: if the node came
        back and recorded one first, this records nothing."""
        return self._record(job, time.time(), error=JobError("WorkerLost", why),
                            runner_pid=job.runner_pid)  # fmt: skip

    def _lost_error(self, job: Job, now: float) -> JobError:
        elapsed = now - (job.started_at or now)
        if job.timeout and elapsed >= job.timeout:
            return JobError(
                "Timeout",
                f"attempt {job.attempts} ran past its timeout of {job.timeout:g} s, ignored "
                f"JobTimeout for {self.timeout_grace:g} s and was killed",
            )
        limit = self.host.time_limit()
        if limit and elapsed >= limit - 1:
            return JobError(
                "Timeout",
                f"attempt {job.attempts} timed out after {limit} s "
                "and was killed by spooler-harakiri",
            )
        return JobError(
            "WorkerLost",
            f"the spooler process running attempt {job.attempts} (pid {job.runner_pid}) died "
            f"after {elapsed:.1f} s: killed by a signal, out of memory, or exited",
        )

    def _reporter(self, job: Job) -> Callable[[Progress], None]:
        def report(progress: Progress) -> None:
            self.store.set_progress(job.id, progress, time.time(), job.node, job.node_epoch)

        return report

    def _flush(self, context: JobContext, job_id: str) -> None:
        try:
            context.flush()
        except StoreUnavailable as exc:
            log.warning("job %s: progress not saved: %s", job_id, exc)
