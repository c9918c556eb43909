"""The worker against a real SQLite store: claim, call the task in the app context, record.

No runner and no uWSGI: a fake :class:`~spoolkit.worker.Host` says which
pids are alive, and each test hands ``Worker.process`` one delivery.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, current_app

from spoolkit import Retry, current_job, spool
from spoolkit.job import JobError, Progress
from spoolkit.registry import TaskRegistry
from spoolkit.retry import DEFAULT_JITTER
from spoolkit.schedule import Parking
from spoolkit.sqlite import SQLiteStore
from spoolkit.states import JobState
from spoolkit.worker import Step, Verdict, Worker

from .standin import Calls, insert_job, make_app

REG = TaskRegistry()
CALLS = Calls()
INSTANCE = "testhost:4000001:1700000000:0"
DELIVERY = "uwsgi_spoolfile_on_spoolkit_1_delivery"


@spool(name="w.add", registry=REG)
def add(a: int, b: int) -> dict[str, int]:
    CALLS.add(task="w.add", a=a, b=b)
    return {"sum": a + b}


@spool(name="w.boom", registry=REG)
def boom(message: str) -> None:
    CALLS.add(task="w.boom")
    raise ValueError(message)


@spool(name="w.again", registry=REG)
def again(countdown: float) -> None:
    CALLS.add(task="w.again")
    raise Retry(countdown=countdown, reason="not yet")


@spool(name="w.opaque", registry=REG)
def opaque() -> object:
    CALLS.add(task="w.opaque")
    return object()


@spool(name="w.inspect", registry=REG)
def inspect_job() -> str:
    CALLS.add(
        task="w.inspect",
        id=current_job.id,
        attempt=current_job.attempt,
        max_attempts=current_job.max_attempts,
        name=current_job.task,
        app=current_app._get_current_object(),  # type: ignore[attr-defined]
    )
    current_job.progress(3, 10, "three of ten")
    return "ok"


class FakeHost:
    """A host whose live runner pids and time limit the test chooses."""

    def __init__(self, alive: set[int] | None = None, limit: int | None = None) -> None:
        self.alive = alive or set()
        self.harakiri = limit

    def instance(self) -> str:
        return INSTANCE

    def is_alive(self, pid: int) -> bool:
        return pid in self.alive

    def time_limit(self) -> int | None:
        return self.harakiri

    def runner_alive(self, runner: str | None, pid: int | None) -> bool:
        return runner == INSTANCE and pid in self.alive

    def limit(self, seconds: float | None, grace: float) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    def kill(self, runner: str | None, pid: int | None) -> bool:
        return False


@pytest.fixture(autouse=True)
def _forget_calls() -> None:
    CALLS.clear()


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return make_app(tmp_path)


def _worker(app: Flask, store: SQLiteStore, host: FakeHost | None = None, **options: Any) -> Worker:
    return Worker(app, store, REG, host or FakeHost(), **options)


def _run(worker: Worker, job_id: str, task: str, *args: Any, delivery: str = DELIVERY) -> Step:
    return worker.process(job_id, delivery, task, list(args), {})


def _queued(store: SQLiteStore, task: str, *args: Any, **options: Any) -> str:
    options.setdefault("spool_file", DELIVERY)
    return insert_job(store, task, args, created_at=time.time(), **options).id


def test_success_records_the_json_result(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.add", 2, 3)
    step = _run(_worker(app, store), job_id, "w.add", 2, 3)
    assert step.verdict is Verdict.DONE
    job = store.get(job_id)
    assert job is not None
    assert job.state is JobState.SUCCEEDED
    assert job.result == {"sum": 5}
    assert job.attempts == 1
    assert job.error is None
    assert job.finished_at is not None
    assert CALLS.seen == [{"task": "w.add", "a": 2, "b": 3}]


def test_failure_with_attempts_left_is_scheduled_after_the_backoff(
    app: Flask, store: SQLiteStore
) -> None:
    job_id = _queued(store, "w.boom", "broken", max_attempts=3, backoff=10.0)
    before = time.time()
    step = _run(_worker(app, store), job_id, "w.boom", "broken")
    after = time.time()
    assert step.verdict is Verdict.AGAIN
    assert step.at is not None
    assert before + 10 * (1 - DEFAULT_JITTER) <= step.at <= after + 10 * (1 + DEFAULT_JITTER)
    job = store.get(job_id)
    assert job is not None
    assert job.state is JobState.SCHEDULED
    assert job.scheduled_for == step.at
    assert job.attempts == 1
    assert job.spool_file == DELIVERY  # the same file runs again
    assert job.error is not None
    assert (job.error.type, job.error.message) == ("ValueError", "broken")
    assert job.error.traceback and "ValueError: broken" in job.error.traceback


def test_backoff_is_capped_by_max_backoff(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.boom", "broken", max_attempts=3, backoff=1000.0)
    before = time.time()
    step = _run(_worker(app, store, max_backoff=4.0), job_id, "w.boom", "broken")
    assert step.verdict is Verdict.AGAIN
    assert step.at is not None
    assert step.at <= time.time() + 4.0
    assert step.at >= before + 4.0 * (1 - DEFAULT_JITTER)


def test_the_last_attempt_fails_the_job(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.boom", "for good", max_attempts=1)
    step = _run(_worker(app, store), job_id, "w.boom", "for good")
    assert step.verdict is Verdict.DONE
    job = store.get(job_id)
    assert job is not None
    assert job.state is JobState.FAILED
    assert job.attempts == 1
    assert job.finished_at is not None
    assert job.error is not None and job.error.type == "ValueError"


def test_retry_countdown_overrides_the_backoff(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.again", 7, max_attempts=3, backoff=1000.0)
    before = time.time()
    step = _run(_worker(app, store), job_id, "w.again", 7)
    after = time.time()
    assert step.verdict is Verdict.AGAIN
    assert step.at is not None
    assert before + 7 <= step.at <= after + 7
    job = store.get(job_id)
    assert job is not None
    assert job.state is JobState.SCHEDULED
    assert job.error is not None
    assert (job.error.type, job.error.message) == ("Retry", "not yet")


def test_retry_countdown_is_capped_by_max_backoff(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.again", 100, max_attempts=3)
    step = _run(_worker(app, store, max_backoff=4.0), job_id, "w.again", 100)
    assert step.verdict is Verdict.AGAIN
    assert step.at is not None and step.at <= time.time() + 4.0


def test_a_result_that_is_not_json_fails_without_retry(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.opaque", max_attempts=5)
    step = _run(_worker(app, store), job_id, "w.opaque")
    assert step.verdict is Verdict.DONE
    job = store.get(job_id)
    assert job is not None
    assert job.state is JobState.FAILED
    assert job.attempts == 1
    assert job.error is not None
    assert job.error.type.endswith("EncodeError")
    assert "w.opaque" in job.error.message
    assert len(CALLS) == 1


def test_an_unknown_task_is_quarantined_and_failed(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.missing", max_attempts=5)
    step = _run(_worker(app, store), job_id, "w.missing")
    assert step.verdict is Verdict.QUARANTINE
    assert "w.missing" in step.reason
    job = store.get(job_id)
    assert job is not None
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.type.endswith("TaskNotFound")


def test_a_spool_file_naming_another_task_is_quarantined(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.add", 1, 1)
    step = _run(_worker(app, store), job_id, "w.boom", "forged")
    assert step.verdict is Verdict.QUARANTINE
    assert "w.boom" in step.reason and "w.add" in step.reason
    job = store.get(job_id)
    assert job is not None
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.type == "SpoolFileRejected"
    assert len(CALLS) == 0


def test_a_job_missing_from_the_store_is_quarantined(app: Flask, store: SQLiteStore) -> None:
    step = _run(_worker(app, store), "n" * 32, "w.add", 1, 1)
    assert step.verdict is Verdict.QUARANTINE
    assert len(CALLS) == 0


def test_a_delivery_the_row_does_not_name_is_dropped_unrun(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.add", 1, 1, spool_file="uwsgi_spoolfile_on_spoolkit_2_newer")
    step = _run(_worker(app, store), job_id, "w.add", 1, 1)
    assert step.verdict is Verdict.DONE
    job = store.get(job_id)
    assert job is not None
    assert (job.state, job.attempts) == (JobState.QUEUED, 0)
    assert len(CALLS) == 0


def test_a_cancelled_job_is_dropped_unrun(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.add", 1, 1)
    store.cancel(job_id, time.time())
    step = _run(_worker(app, store), job_id, "w.add", 1, 1)
    assert step.verdict is Verdict.DONE
    job = store.get(job_id)
    assert job is not None
    assert job.state is JobState.CANCELLED
    assert len(CALLS) == 0


def test_a_job_not_yet_due_goes_back(app: Flask, store: SQLiteStore) -> None:
    run_at = time.time() + 60
    job_id = _queued(store, "w.add", 1, 1, run_at=run_at)
    step = _run(_worker(app, store), job_id, "w.add", 1, 1)
    assert step == Step(Verdict.AGAIN, at=run_at)
    assert len(CALLS) == 0


def _running(store: SQLiteStore, job_id: str, runner: str, pid: int, started: float) -> None:
    action, _ = store.claim(job_id, DELIVERY, runner, pid, started, lambda pid: False)
    assert action.value == "run"


def test_a_dead_spooler_of_this_instance_costs_an_attempt(app: Flask, store: SQLiteStore) -> None:
    """The spooler holding the job died (kill -9, OOM): WorkerLost, counted, retried."""
    job_id = _queued(store, "w.add", 1, 1, max_attempts=3, backoff=10.0)
    _running(store, job_id, INSTANCE, 4242, time.time() - 3)
    step = _run(_worker(app, store, FakeHost(limit=30)), job_id, "w.add", 1, 1)
    assert step.verdict is Verdict.AGAIN
    job = store.get(job_id)
    assert job is not None
    assert job.state is JobState.SCHEDULED
    assert job.attempts == 1  # the lost attempt counts, and no new one started
    assert job.error is not None and job.error.type == "WorkerLost"
    assert "4242" in job.error.message
    assert len(CALLS) == 0


def test_a_lost_last_attempt_fails_the_job(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.add", 1, 1, max_attempts=1)
    _running(store, job_id, INSTANCE, 4242, time.time() - 3)
    step = _run(_worker(app, store), job_id, "w.add", 1, 1)
    assert step.verdict is Verdict.DONE
    job = store.get(job_id)
    assert job is not None
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.type == "WorkerLost"
    assert len(CALLS) == 0


def test_an_attempt_killed_at_the_time_limit_is_a_timeout(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.add", 1, 1, max_attempts=3)
    _running(store, job_id, INSTANCE, 4242, time.time() - 29.5)  # limit - 1 <= elapsed
    step = _run(_worker(app, store, FakeHost(limit=30)), job_id, "w.add", 1, 1)
    assert step.verdict is Verdict.AGAIN
    job = store.get(job_id)
    assert job is not None
    assert job.error is not None and job.error.type == "Timeout"
    assert "30 s" in job.error.message


def test_a_job_held_by_a_live_spooler_is_left_alone(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.add", 1, 1)
    _running(store, job_id, INSTANCE, 4242, time.time() - 3)
    step = _run(_worker(app, store, FakeHost(alive={4242})), job_id, "w.add", 1, 1)
    assert step == Step(Verdict.AGAIN)
    job = store.get(job_id)
    assert job is not None
    assert (job.state, job.runner_pid, job.attempts) == (JobState.RUNNING, 4242, 1)
    assert len(CALLS) == 0


def test_a_job_cut_short_by_a_restart_runs_again_uncounted(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.inspect", max_attempts=2)
    _running(store, job_id, "testhost:999:1600000000:0", 4242, time.time() - 3)
    step = _run(_worker(app, store), job_id, "w.inspect")
    assert step.verdict is Verdict.DONE
    job = store.get(job_id)
    assert job is not None
    assert (job.state, job.attempts, job.runner) == (JobState.SUCCEEDED, 1, INSTANCE)
    assert [call["attempt"] for call in CALLS.seen] == [1]


def test_a_retry_due_beyond_spool_ahead_is_parked(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.again", 100, max_attempts=3)
    worker = _worker(app, store, parking=Parking(10.0))
    before = time.time()
    step = _run(worker, job_id, "w.again", 100)
    assert step.verdict is Verdict.DONE  # this file is done with; the store holds the retry
    job = store.get(job_id)
    assert job is not None
    assert job.state is JobState.SCHEDULED
    assert job.spool_file is None
    assert job.scheduled_for is not None and job.scheduled_for >= before + 100


def test_a_retry_due_within_spool_ahead_keeps_its_file(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.again", 5, max_attempts=3)
    step = _run(_worker(app, store, parking=Parking(10.0)), job_id, "w.again", 5)
    assert step.verdict is Verdict.AGAIN
    job = store.get(job_id)
    assert job is not None
    assert (job.state, job.spool_file) == (JobState.SCHEDULED, DELIVERY)


def test_the_task_sees_its_job_and_app_and_its_progress_is_kept(
    app: Flask, store: SQLiteStore
) -> None:
    job_id = _queued(store, "w.inspect", max_attempts=4)
    step = _run(_worker(app, store), job_id, "w.inspect")
    assert step.verdict is Verdict.DONE
    [seen] = CALLS.seen
    assert seen["id"] == job_id
    assert (seen["attempt"], seen["max_attempts"], seen["name"]) == (1, 4, "w.inspect")
    assert seen["app"] is app
    job = store.get(job_id)
    assert job is not None
    assert job.progress == Progress(3, 10, "three of ten")
    assert job.result == "ok"


def test_the_second_attempt_is_numbered_two(app: Flask, store: SQLiteStore) -> None:
    job_id = _queued(store, "w.inspect", max_attempts=3)
    _running(store, job_id, INSTANCE, 4242, time.time() - 3)
    assert store.finish(
        job_id, 4242, time.time() - 2, error=JobError("X", "x"), retry_at=time.time() - 1
    )
    step = _run(_worker(app, store), job_id, "w.inspect")
    assert step.verdict is Verdict.DONE
    assert [(call["attempt"], call["max_attempts"]) for call in CALLS.seen] == [(2, 3)]
