"""The SQLite store's state changes, on a real SQLite file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from spoolkit.errors import InvalidJobState, JobNotFound, StoreUnavailable
from spoolkit.job import JobError, Progress
from spoolkit.lifecycle import ClaimAction
from spoolkit.states import JobState
from spoolkit.store import NewJob, SQLiteStore

ME = "host:1:50:0"


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(str(tmp_path / "sub" / "jobs.db"))
    store.setup()
    return store


def _new(
    store: SQLiteStore, job_id: str = "a" * 22, run_at: float | None = None, **kw: object
) -> None:
    fields: dict[str, object] = dict(
        id=job_id, task="t", payload='{"args":[],"kwargs":{}}', max_attempts=2, backoff=1.0,
        priority=None, created_at=100.0, run_at=run_at, spool_file=f"file-{job_id}",
    )  # fmt: skip
    fields.update(kw)
    store.insert(NewJob(**fields))  # type: ignore[arg-type]


def _claim(store: SQLiteStore, job_id: str = "a" * 22, now: float = 200.0) -> ClaimAction:
    return store.claim(job_id, f"file-{job_id}", ME, 77, now, lambda pid: False)[0]


def test_setup_is_private_and_idempotent(tmp_path: Path, store: SQLiteStore) -> None:
    store.setup()
    assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o700
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    assert store.get_meta("schema") == "1"


def test_insert_states(store: SQLiteStore) -> None:
    _new(store, "q" * 22)
    _new(store, "s" * 22, run_at=500.0)
    assert store.get("q" * 22).state is JobState.QUEUED  # type: ignore[union-attr]
    scheduled = store.get("s" * 22)
    assert scheduled is not None and scheduled.state is JobState.SCHEDULED
    assert scheduled.scheduled_for == 500.0
    assert store.counts()["queued"] == 1 and store.counts()["scheduled"] == 1


def test_claim_run_and_succeed(store: SQLiteStore) -> None:
    _new(store)
    assert _claim(store) is ClaimAction.RUN
    job = store.get("a" * 22)
    assert job is not None
    assert (job.state, job.attempts, job.runner, job.runner_pid) == (JobState.RUNNING, 1, ME, 77)
    store.set_progress(job.id, Progress(1, 2, "half"), 201.0)
    assert store.finish(job.id, 77, 202.0, result="5")
    done = store.get(job.id)
    assert done is not None
    assert (done.state, done.result, done.finished_at) == (JobState.SUCCEEDED, 5, 202.0)
    assert done.progress == Progress(1, 2, "half")
    assert _claim(store) is ClaimAction.DISCARD  # its file, seen again, is stale


def test_finish_is_refused_to_a_runner_that_does_not_hold_the_job(store: SQLiteStore) -> None:
    _new(store)
    _claim(store)
    assert not store.finish("a" * 22, 78, 201.0, result="1")
    assert store.get("a" * 22).state is JobState.RUNNING  # type: ignore[union-attr]


def test_retry_then_fail(store: SQLiteStore) -> None:
    _new(store)
    _claim(store)
    boom = JobError("ValueError", "boom", "tb")
    assert store.finish("a" * 22, 77, 201.0, error=boom, retry_at=260.0)
    job = store.get("a" * 22)
    assert job is not None
    assert (job.state, job.scheduled_for, job.error) == (JobState.SCHEDULED, 260.0, boom)
    assert _claim(store, now=250.0) is ClaimAction.EARLY
    assert _claim(store, now=261.0) is ClaimAction.RUN
    assert store.finish("a" * 22, 77, 262.0, error=boom)
    failed = store.get("a" * 22)
    assert failed is not None
    assert (failed.state, failed.attempts, failed.finished_at) == (JobState.FAILED, 2, 262.0)


def test_restart_interruption_is_not_counted(store: SQLiteStore) -> None:
    _new(store)
    _claim(store)
    action, job = store.claim(
        "a" * 22, "file-" + "a" * 22, "host:1:99:1", 88, 300.0, lambda p: False
    )
    assert action is ClaimAction.RERUN
    assert job is not None and job.attempts == 1 and job.runner_pid == 88


def test_cancel_and_restart(store: SQLiteStore) -> None:
    _new(store, run_at=500.0)
    job = store.cancel("a" * 22, 150.0)
    assert job.state is JobState.CANCELLED and job.finished_at == 150.0
    with pytest.raises(InvalidJobState) as raised:
        store.cancel("a" * 22, 151.0)
    assert raised.value.state == "cancelled"
    with pytest.raises(JobNotFound):
        store.cancel("z" * 22, 151.0)
    again = store.restart("a" * 22, "new-file", 160.0)
    assert (again.state, again.attempts, again.spool_file) == (JobState.QUEUED, 0, "new-file")
    assert again.scheduled_for is None and again.finished_at is None
    with pytest.raises(InvalidJobState):
        store.restart("a" * 22, "x", 170.0)


def test_cancel_races_a_claim_and_exactly_one_wins(store: SQLiteStore) -> None:
    for i in range(40):
        job_id = f"{i:022d}"
        _new(store, job_id)
        outcomes: dict[str, object] = {}

        def cancel(job_id: str = job_id, outcomes: dict[str, object] = outcomes) -> None:
            try:
                outcomes["cancel"] = store.cancel(job_id, 150.0).state
            except InvalidJobState as exc:
                outcomes["cancel"] = exc.state

        def claim(job_id: str = job_id, outcomes: dict[str, object] = outcomes) -> None:
            outcomes["claim"] = _claim(store, job_id)

        threads = [threading.Thread(target=cancel), threading.Thread(target=claim)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        final = store.get(job_id)
        assert final is not None
        if outcomes["claim"] is ClaimAction.RUN:
            assert outcomes["cancel"] == "running" and final.state is JobState.RUNNING
        else:
            assert outcomes["claim"] is ClaimAction.DISCARD and final.state is JobState.CANCELLED


def test_reassign_is_conditional(store: SQLiteStore) -> None:
    _new(store)
    seen = store.get("a" * 22)
    assert seen is not None
    assert store.reassign(seen, "second", 300.0, requeue=False)
    assert not store.reassign(seen, "third", 301.0, requeue=False)  # stale view
    assert store.get("a" * 22).spool_file == "second"  # type: ignore[union-attr]


def test_list_unfinished_and_purge(store: SQLiteStore) -> None:
    for i in range(5):
        _new(store, f"{i:022d}", created_at=100.0 + i)
    assert [job.id[-1] for job in store.list_jobs(limit=3)] == ["4", "3", "2"]
    _claim(store, f"{0:022d}")
    store.finish(f"{0:022d}", 77, 150.0, result="1")
    assert [job.id[-1] for job in store.unfinished("", 10, updated_before=1e12)] == list("1234")
    assert [job.id[-1] for job in store.unfinished(f"{2:022d}", 10, updated_before=1e12)] == [
        "3",
        "4",
    ]
    assert store.purge(finished_before=149.0) == 0
    assert store.purge(finished_before=151.0) == 1
    assert store.get(f"{0:022d}") is None


def test_store_errors_are_named(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    broken = SQLiteStore(str(directory / "missing" / "deeper" / "jobs.db"))
    with pytest.raises(StoreUnavailable, match="job store"):
        broken.ping()
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(str(directory / "x.db"), synchronous="sometimes")


def test_commits_are_durable_by_default(tmp_path: Path) -> None:
    """202 promises the row survives a power cut: SQLite synchronous=FULL in WAL mode."""
    store = SQLiteStore(str(tmp_path / "jobs.db"))
    store.setup()
    conn = store._connection(durable=True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    # A spooler's writes may be lost in a power cut: the job then runs again.
    assert store._connection().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    relaxed = SQLiteStore(str(tmp_path / "jobs.db"), synchronous="normal")
    assert relaxed._connection(durable=True).execute("PRAGMA synchronous").fetchone()[0] == 1
    off = SQLiteStore(str(tmp_path / "jobs.db"), synchronous="off")
    assert off._connection().execute("PRAGMA synchronous").fetchone()[0] == 0
