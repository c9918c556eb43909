"""What only the SQLite store does: its file, its durability, its waits on locks."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from spoolkit.errors import StoreUnavailable
from spoolkit.lifecycle import ClaimAction
from spoolkit.sqlite import SQLiteStore
from spoolkit.store import NewJob


def _store(tmp_path: Path, **options: object) -> SQLiteStore:
    store = SQLiteStore(str(tmp_path / "sub" / "jobs.db"), **options)  # type: ignore[arg-type]
    store.setup()
    return store


def _running_job(store: SQLiteStore) -> str:
    job_id = "a" * 22
    store.insert(NewJob(id=job_id, task="t", payload='{"args":[],"kwargs":{}}', max_attempts=2,
                        backoff=1.0, priority=None, created_at=100.0, run_at=None,
                        spool_file="f"))  # fmt: skip
    action, _ = store.claim(job_id, "f", "host:1:50:0", 77, 200.0, lambda pid: False)
    assert action is ClaimAction.RUN
    return job_id


def test_setup_is_private_and_idempotent(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.setup()
    assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o700
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    assert store.get_meta("schema") == "5"


def test_store_errors_are_named(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    broken = SQLiteStore(str(directory / "missing" / "deeper" / "jobs.db"))
    with pytest.raises(StoreUnavailable, match="job store"):
        broken.get("a" * 22)
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


def _hold_write_lock(path: str, seconds: float, held: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    held.set()
    time.sleep(seconds)
    conn.execute("ROLLBACK")
    conn.close()


def test_a_write_gives_up_after_the_timeout(tmp_path: Path) -> None:
    store = _store(tmp_path, timeout=0.2)
    held = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(store.path, 1.5, held))
    holder.start()
    held.wait(5)
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            store.set_meta("k", "v")
    finally:
        holder.join()


def test_an_outcome_waits_past_the_timeout_until_it_is_written(tmp_path: Path) -> None:
    """The one retry loop: an attempt's outcome is never dropped, however long the lock."""
    store = _store(tmp_path, timeout=0.2)
    job_id = _running_job(store)
    held = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(store.path, 1.0, held))
    holder.start()
    held.wait(5)
    started = time.monotonic()
    try:
        assert store.finish(job_id, 77, 201.0, result="1")  # waits out the lock
    finally:
        holder.join()
    assert time.monotonic() - started > 0.5  # well past the 0.2 s timeout
    job = store.get(job_id)
    assert job is not None and job.result == 1


def test_a_store_of_the_first_schema_gains_the_origin_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE spoolkit_jobs (id TEXT PRIMARY KEY, task TEXT NOT NULL, payload TEXT "
        "NOT NULL, state TEXT NOT NULL, priority INTEGER, attempts INTEGER NOT NULL DEFAULT 0, "
        "max_attempts INTEGER NOT NULL, backoff REAL NOT NULL, created_at REAL NOT NULL, "
        "scheduled_for REAL, started_at REAL, finished_at REAL, updated_at REAL NOT NULL, "
        "progress TEXT, result TEXT, error_type TEXT, error_message TEXT, error_traceback TEXT, "
        "spool_file TEXT, runner TEXT, runner_pid INTEGER);"
        "CREATE TABLE spoolkit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO spoolkit_meta VALUES ('schema', '1');"
        "INSERT INTO spoolkit_jobs (id, task, payload, state, max_attempts, backoff, created_at,"
        " updated_at) VALUES ('bbbbbbbbbbbbbbbbbbbbbb', 't', '{}', 'queued', 3, 1.0, 1.0, 1.0);"
    )
    old.close()
    store = SQLiteStore(str(path))
    store.setup()
    job = store.get("b" * 22)
    assert job is not None and job.origin == "spoolkit"
    assert store.get_meta("schema") == "5"
