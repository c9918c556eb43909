"""The kit bound to one Flask app: queue, read, cancel and retry jobs.

``SpoolKit.init_app`` builds one :class:`JobService` per app and keeps it in
``app.extensions["spoolkit"]``, where ``Task.delay()`` finds it through
``current_app``. It records each job in the store, then hands it to the
runner; it never asks which runner it has.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app, has_app_context

from .config import Config
from .errors import (
    BatchItemError,
    ConfigurationError,
    EncodeError,
    InvalidJobState,
    InvalidSchedule,
    JobNotFound,
    StoreUnavailable,
    TaskNotFound,
)
from .firing import PeriodicJobs
from .followups import FollowUps
from .job import Job, new_job_id
from .queues import DEFAULT_QUEUE, check_configured, validate_queue
from .registry import TaskRegistry
from .retry import RetryPolicy
from .runner import Runner, delivery_of, hand_over, stage_each
from .schedule import resolve_run_at, validate_priority
from .states import FINISHED, JobState
from .store import HOUSEKEEPER_BEAT, NewJob, QueueCounts, Store
from .task import EXTENSION_KEY, Call

log = logging.getLogger("spoolkit")


#: Idempotency keys: 1 to 200 printable ASCII characters.
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,200}")
#: A per-job timeout above this is a mistake (spooler-harakiri bounds every job anyway).
MAX_TIMEOUT = 30 * 24 * 3600.0


def check_key(key: object) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise InvalidSchedule("an idempotency key is 1 to 200 printable ASCII characters")
    return key


def check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidSchedule(f"timeout must be a number of seconds, got {timeout!r}")
    if not 0 < timeout <= MAX_TIMEOUT:
        raise InvalidSchedule(f"timeout must be > 0 and at most {MAX_TIMEOUT:.0f} seconds")
    return float(timeout)


def call_hash(call: Call) -> str:
    """What an idempotency key is bound to: the task and its arguments."""
    return hashlib.sha256(f"{call.task}\0{call.payload}".encode()).hexdigest()


def current_service() -> JobService:
    """The job service of the current Flask app."""
    service = current_app.extensions.get(EXTENSION_KEY) if has_app_context() else None
    if not isinstance(service, JobService):
        raise ConfigurationError(
            "SpoolKit is not set up on the current app (or there is no app context): "
            "create SpoolKit(app), or call kit.init_app(app), and work inside the app"
        )
    return service


#: The options a job request (``POST /jobs``, a batch's item) may give.
JOB_OPTIONS = ("at", "countdown", "priority", "max_attempts", "on_success", "on_failure",
               "callback_url", "timeout", "queue")  # fmt: skip
JOB_FIELDS = frozenset({"task", "args", "kwargs", *JOB_OPTIONS})


class JobService:
    def __init__(
        self, app: Flask, config: Config, registry: TaskRegistry, store: Store, runner: Runner
    ) -> None:
        self.app = app
        self.config = config
        self.registry = registry
        self.store = store
        self.runner = runner
        self.follow_ups = FollowUps(registry, config, lambda job_id, priority, now: delivery_of(
            runner, job_id, priority, None, now))  # fmt: skip
        #: The periodic schedules, checked now: ConfigurationError stops the start-up.
        self.periodic = PeriodicJobs(registry, store, runner)

    # -- queueing ------------------------------------------------------------------

    def enqueue(
        self,
        call: Call,
        *,
        at: object = None,
        countdown: object = None,
        priority: object = None,
        max_attempts: object = None,
        on_success: object = None,
        on_failure: object = None,
        callback_url: object = None,
        key: object = None,
        timeout: object = None,
        queue: object = None,
    ) -> Job:
        """Validate the options, record, then hand to the runner. Raises before
        anything is stored. With ``key`` (an idempotency key), a job recorded under
        it before comes back instead (``job.replayed``). ``queue`` (else the task's,
        else ``default``) must be one of the runner's queues (``ConfigurationError``)."""
        new = self._new_job(
            call, time.time(), at=at, countdown=countdown, priority=priority,
            max_attempts=max_attempts, on_success=on_success, on_failure=on_failure,
            callback_url=callback_url, key=key, timeout=timeout, queue=queue,
        )  # fmt: skip
        # The spool file first, not yet due: a full disk refuses the job before
        # anything is recorded, and nothing runs before the row exists.
        handoff = self.runner.stage(
            new.id, new.task, new.spool_file, new.payload, new.run_at, new.priority,
            queue=new.queue,
        )  # fmt: skip
        try:
            job = self.store.insert(new)
        except BaseException:
            handoff.abort()
            raise
        if job.replayed:
            handoff.abort()  # the key's first job is the one that runs
            log.info("job %s returned again for its idempotency key", job.id)
            return job
        handoff.commit()
        log.info(
            "job %s %s: %s (max %d attempts)", job.id, job.state.value, job.task, job.max_attempts
        )
        return self.get(job.id) if self.runner.runs_inline else job

    def enqueue_many(self, requests: Sequence[tuple[Call, Mapping[str, Any]]]) -> list[Job]:
        """Queue several calls, all or nothing: each ``(call, options)`` is checked as
        ``enqueue`` checks one (idempotency keys excepted: ``ValueError``), then every
        job is recorded in one transaction (one fsync) and handed to the runner at once.
        A bad item raises ``BatchItemError`` naming its index, and nothing is recorded;
        more than ``SPOOLKIT_MAX_BATCH`` items raise ``ValueError``."""
        if len(requests) > self.config.max_batch:
            raise ValueError(
                f"at most {self.config.max_batch} jobs per batch (SPOOLKIT_MAX_BATCH), "
                f"got {len(requests)}"
            )
        now = time.time()
        news: list[NewJob] = []
        for index, (call, options) in enumerate(requests):
            try:
                if options.get("key") is not None:
                    raise ValueError("a job of a batch cannot carry an idempotency key")
                news.append(self._new_job(call, now, in_batch=True, **options))
            except (EncodeError, InvalidSchedule, ConfigurationError, TypeError,
                    ValueError) as exc:  # fmt: skip
                raise BatchItemError(index, exc) from exc
        handoff = stage_each(self.runner, news)
        try:
            jobs = self.store.insert_many(news)
        except BaseException:
            handoff.abort()
            raise
        handoff.commit()
        log.info("%d jobs queued in one batch", len(jobs))
        if self.runner.runs_inline:
            return [self.get(job.id) for job in jobs]
        return jobs

    def _new_job(
        self,
        call: Call,
        now: float,
        *,
        at: object = None,
        countdown: object = None,
        priority: object = None,
        max_attempts: object = None,
        on_success: object = None,
        on_failure: object = None,
        callback_url: object = None,
        key: object = None,
        timeout: object = None,
        queue: object = None,
        in_batch: bool = False,
    ) -> NewJob:
        """The job a call with these options makes, every option checked, its delivery
        named (``None``: parked).
        Raises before anything is staged or stored."""
        success = self._callback_task(on_success, call.on_success, "on_success")
        failure = self._callback_task(on_failure, call.on_failure, "on_failure")
        url = self._callback_url(callback_url)
        checked_key = check_key(key)
        limit = check_timeout(call.timeout if timeout is None else timeout)
        run_at = None if self.runner.runs_inline else resolve_run_at(at, countdown, now)
        checked_priority = validate_priority(priority)
        checked_queue = self._queue(call.queue if queue is None else queue)
        if checked_priority is not None and self.runner.priority_unsupported:
            raise ConfigurationError(self.runner.priority_unsupported)
        policy = call.policy
        if max_attempts is not None:
            policy = RetryPolicy(max_attempts=max_attempts, backoff=policy.backoff)  # type: ignore[arg-type]
        job_id = new_job_id()
        return NewJob(
            id=job_id,
            task=call.task,
            payload=call.payload,
            max_attempts=policy.max_attempts,
            backoff=policy.backoff,
            priority=checked_priority,
            created_at=now,
            run_at=run_at,
            spool_file=delivery_of(self.runner, job_id, checked_priority, run_at, now,
                                   batch=in_batch),
            origin=call.origin,
            on_success=success,
            on_failure=failure,
            callback_url=url,
            timeout=limit,
            idempotency_key=checked_key,
            idempotency_hash=call_hash(call) if checked_key else None,
            idempotency_ttl=self.config.idempotency_ttl,
            queue=checked_queue,
        )

    def _callback_task(self, given: object, default: str | None, option: str) -> str | None:
        """The registered name of an ``on_success``/``on_failure`` task (a task or a name)."""
        chosen = default if given is None else given
        if chosen is None:
            return None
        name = getattr(chosen, "name", chosen)
        if not isinstance(name, str) or name not in self.registry:
            raise ConfigurationError(f"{option}={chosen!r} is not a registered task")
        self._queue(self.registry.get(name).queue)  # its jobs go to its own queue
        return name

    def _queue(self, queue: object) -> str:
        """A queue the runner has (``None``: the default one), else ``ConfigurationError``."""
        name = DEFAULT_QUEUE if queue is None else validate_queue(queue)
        return check_configured(name, self.runner.queues)

    def _callback_url(self, url: object) -> str | None:
        if url is None:
            return None
        if not self.config.webhook_secret:
            raise ConfigurationError(
                "callback_url needs SPOOLKIT_WEBHOOK_SECRET: webhooks are always signed"
            )
        if not isinstance(url, str) or len(url) > 2000:
            raise ConfigurationError("callback_url must be an http(s) URL of at most 2000 chars")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"callback_url {url!r} is not an http(s) URL with a host")
        return url

    def enqueue_specs(self, specs: Sequence[Mapping[str, Any]]) -> list[Job]:
        """``enqueue_many`` for jobs described as ``POST /jobs`` takes them: each a
        mapping with ``task`` (a registered name, or the task), ``args``, ``kwargs``
        and the options. A wrong item raises ``BatchItemError`` with its index."""
        if len(specs) > self.config.max_batch:
            raise ValueError(f"at most {self.config.max_batch} jobs per batch "
                             f"(SPOOLKIT_MAX_BATCH), got {len(specs)}")  # fmt: skip
        requests: list[tuple[Call, Mapping[str, Any]]] = []
        for index, spec in enumerate(specs):
            try:
                requests.append(self._request(spec))
            except (TaskNotFound, TypeError, ValueError) as exc:
                raise BatchItemError(index, exc) from exc
        return self.enqueue_many(requests)

    def _request(self, spec: Mapping[str, Any]) -> tuple[Call, Mapping[str, Any]]:
        if not isinstance(spec, Mapping):
            raise TypeError("a job is an object with 'task' and, optionally, 'args', "
                            "'kwargs' and the options")  # fmt: skip
        unknown = sorted(set(spec) - JOB_FIELDS)
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(map(str, unknown))}")
        task = spec.get("task")
        name = getattr(task, "name", task)
        if not isinstance(name, str) or not name:
            raise ValueError("'task' must be the name of a registered task")
        args, kwargs = spec.get("args", []), spec.get("kwargs", {})
        if not isinstance(args, list | tuple):
            raise ValueError("'args' must be a list")
        if not isinstance(kwargs, Mapping):
            raise ValueError("'kwargs' must be an object")
        options = {key: spec[key] for key in JOB_OPTIONS if key in spec}
        return self.registry.get(name).call(args, kwargs), options

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
        collect = self.follow_ups.collect()
        job = self.store.cancel(job_id, time.time(), collect)
        self.runner.release(job)
        hand_over(self.runner, collect.made)
        log.info("job %s cancelled", job.id)
        return job

    def abort(self, job_id: str) -> Job:
        """Stop a job: a waiting one is cancelled as ``cancel`` does; a running one sees
        ``current_job.abort_requested`` and, if it goes on, its spooler is killed after
        ``SPOOLKIT_ABORT_GRACE`` (by the housekeeper). It ends ``cancelled``, is not
        retried and never runs again, even after a restart."""
        collect = self.follow_ups.collect()
        job = self.store.request_abort(job_id, time.time(), collect)
        if job.state is JobState.CANCELLED:
            self.runner.release(job)
            hand_over(self.runner, collect.made)
        log.info("job %s: abort requested (%s)", job.id, job.state.value)
        return job

    def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again with a fresh attempt budget.

        Staged like a new job: answered with an error, it never runs again.
        """
        now = time.time()
        current = self.get(job_id)
        delivery = delivery_of(self.runner, job_id, current.priority, None, now)
        handoff = self.runner.stage(
            job_id, current.task, delivery, self.store.payload(job_id), None, current.priority,
            queue=current.queue,
        )  # fmt: skip
        try:
            job = self.store.restart(job_id, delivery, now)
        except BaseException:
            handoff.abort()
            raise
        handoff.commit()
        log.info("job %s queued again by request (was %s)", job.id, current.state.value)
        return job

    def queue_report(
        self, now: float, spoolers: Mapping[str, int] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Per queue: ready, scheduled and running jobs, the age of the oldest ready job
        (seconds) and the spoolers alive, for ``/healthz`` and ``flask spoolkit queues``.

        ``spoolers`` are the runner's own figures (under uWSGI); without them, the ones
        the housekeeping mule last recorded in the store if they are recent (a CLI run
        outside uWSGI), else ``None``."""
        if spoolers is None:
            spoolers = self.recorded_spoolers(now)
        counts = self.store.queue_counts(now)
        names = {DEFAULT_QUEUE, *counts, *(self.runner.queues or ()), *(spoolers or {})}
        report = {}
        for name in sorted(names):
            found = counts.get(name, QueueCounts())
            oldest = found.oldest_ready
            report[name] = {
                "ready": found.ready,
                "scheduled": found.scheduled,
                "running": found.running,
                "oldest_ready_age": None if oldest is None else round(max(0.0, now - oldest), 1),
                "spoolers_alive": None if spoolers is None else spoolers.get(name, 0),
            }
        return report

    def recorded_spoolers(self, now: float) -> dict[str, int] | None:
        """Spoolers alive per queue as the housekeeper last recorded them, if that was
        recently (as ``health`` judges the housekeeper late)."""
        seen = self._spoolers_seen(now)
        if seen is None:
            return None
        return {str(queue): int(count) for queue, count in seen["queues"].items()}

    def _spoolers_seen(self, now: float) -> dict[str, Any] | None:
        """The spoolers of every live node as their housekeepers last recorded them,
        summed (per queue too): what a process outside uWSGI (the CLI) can know."""
        nodes = self.nodes(now)
        if not nodes:
            return None
        queues: dict[str, int] = {}
        counted = {"alive": 0, "configured": 0}
        for node in nodes:
            for queue, count in (node["queues"] or {}).items():
                queues[queue] = queues.get(queue, 0) + int(count)
            for state in counted:
                counted[state] += int((node["spoolers"] or {}).get(state) or 0)
        return {"queues": queues, "spoolers": counted}

    @property
    def _late_after(self) -> float:
        """Seconds after which the housekeeper's last pass is called late."""
        return max(30.0, 3 * self.config.housekeeping_interval)

    def nodes(self, now: float) -> list[dict[str, Any]]:
        """The servers whose housekeeper used this store recently (live nodes), with
        their spoolers: for ``/healthz``."""
        shown = []
        for node in self.store.nodes(now, max(self._late_after, self.config.node_timeout)):
            figures = json.loads(node.figures)
            shown.append({"id": node.id, "host": node.host, "last_beat_age": round(node.age, 1),
                          "spoolers": figures.get("spoolers"),
                          "queues": figures.get("queues")})  # fmt: skip
        return shown

    def housekeeper_age(self, now: float) -> float | None:
        """Seconds since the housekeeper's last pass; ``None`` before its first."""
        beat = self.store.get_meta(HOUSEKEEPER_BEAT)
        return round(now - float(beat), 1) if beat else None

    def spoolers(
        self, now: float, report: Mapping[str, Any] | None = None
    ) -> dict[str, int | None]:
        """Spoolers alive and configured: counted here under uWSGI (``report``: the
        runner's health report, if the caller has one), else as the housekeeper last
        recorded them (``None`` when unknown)."""
        if report is None:
            _, report = self.runner.health()
        counted = report.get("spoolers")
        if counted is None:
            seen = self._spoolers_seen(now)
            counted = seen.get("spoolers") if seen else None
        counted = counted or {}
        return {"alive": counted.get("alive"), "configured": counted.get("configured")}

    def overview(self, now: float) -> dict[str, Any]:
        """Everything an operator looks at first, for the dashboard, ``/metrics`` and
        ``flask spoolkit stats``: jobs per state, per queue (with the oldest ready
        job's age and its spoolers), spoolers alive of configured, jobs finished in
        the last 5 and 60 minutes, and the housekeeper's last pass.

        One look at the runner's processes serves the totals and the queues, and the
        jobs per state are summed from the per-queue counts (one scan of the table)."""
        per_queue: dict[str, dict[str, int]] = {}
        for (queue, state), count in self.store.state_counts().items():
            per_queue.setdefault(queue, {})[state] = count
        _, runner_report = self.runner.health()
        live = {name: entry["spoolers_alive"]
                for name, entry in runner_report.get("queues", {}).items()}  # fmt: skip
        queues = self.queue_report(now, live or None)
        for name, figures in queues.items():
            figures["states"] = {s.value: per_queue.get(name, {}).get(s.value, 0) for s in JobState}
        states = {s.value: sum(counts.get(s.value, 0) for counts in per_queue.values())
                  for s in JobState}  # fmt: skip
        return {
            "mode": self.runner.name,
            "states": states,
            "queues": queues,
            "spoolers": self.spoolers(now, runner_report),
            "nodes": self.nodes(now),
            "finished": {
                "5m": self.store.finished_since(now - 300),
                "60m": self.store.finished_since(now - 3600),
            },
            # Recorded by the server's housekeeper: a CLI process (not housekept itself)
            # reads it too.
            "housekeeper": {"last_run_age": age}
            if (age := self.housekeeper_age(now)) is not None or self.runner.housekept
            else None,
        }

    def retry_failed(self, task: str) -> tuple[list[Job], list[str]]:
        """Queue again every job of ``task`` failed now (each as ``retry`` does): the jobs
        queued, and a line for each that could not be (it changed meanwhile). A job that
        fails again while this runs is not retried twice."""
        failed: list[str] = []
        while batch := self.store.list_jobs(JobState.FAILED, task, 500, with_results=False,
                                            offset=len(failed)):  # fmt: skip
            failed += [job.id for job in batch]
        retried: list[Job] = []
        problems: list[str] = []
        for job_id in dict.fromkeys(failed):
            try:
                retried.append(self.retry(job_id))
            except (JobNotFound, InvalidJobState) as exc:
                problems.append(f"{job_id}: {exc}")
        return retried, problems

    def purge(self, finished_before: float, states: Collection[JobState] = FINISHED) -> int:
        """Delete every job in ``states`` finished before ``finished_before``; how many."""
        removed = 0
        while count := self.store.purge(finished_before, 1000, states):
            removed += count
        return removed

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = time.time()
        report: dict[str, Any] = {"mode": self.runner.name}
        healthy = True
        queues: dict[str, dict[str, Any]] | None = None
        runner_ok, runner_report = self.runner.health()
        runner_queues: dict[str, dict[str, Any]] = runner_report.get("queues", {})
        try:
            self.store.check()
            report["jobs"] = self.store.counts()
            live = {name: entry["spoolers_alive"] for name, entry in runner_queues.items()}
            queues = self.queue_report(now, live or None)
            report["store"] = "ok"
            report["nodes"] = self.nodes(now)
            me = socket.gethostname()
            others = sorted({node["host"] for node in report["nodes"] if node["host"] != me})
            if others and self.runner.node is None:
                # Spool files on this host's disk: only correct on one host (a store
                # several hosts share has nodes that claim jobs instead).
                report["store"] = (f"shared with {', '.join(others)}: one host per store "
                                   "unless it is PostgreSQL (README, Several hosts)")
                healthy = False
        except StoreUnavailable as exc:
            report["store"] = f"unavailable: {exc}"
            healthy = False
        report.update(runner_report)
        if queues is not None:
            report["queues"] = {name: {**figures, **runner_queues.get(name, {})}
                                for name, figures in queues.items()}  # fmt: skip
        if self.runner.node is not None:
            # One node of several: it serves requests as long as it reaches the store
            # (its spoolers and housekeeper show in the report and in /metrics; other
            # nodes take its jobs back if it goes silent).
            report["node"] = {"id": self.runner.node, "role": self.runner.name}
            report["status"] = "ok" if healthy else "unhealthy"
            return healthy, report
        healthy = healthy and runner_ok
        if self.runner.housekept and healthy:
            age = self.housekeeper_age(time.time())
            late = age is not None and age > self._late_after
            report["housekeeper"] = {"last_run_age": age, "ok": not late}
            healthy = not late
        report["status"] = "ok" if healthy else "unhealthy"
        return healthy, report
