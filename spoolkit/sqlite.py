"""The SQLite job store, the embedded default: the record of every accepted job.

The row is committed before a spool file exists, so a job answered ``202``
survives whatever happens to its file. Safe across uWSGI's forks the way
Huey's SqliteStorage is: WAL, a busy timeout, ``BEGIN IMMEDIATE`` for every
write, one connection per process and thread opened lazily, and no
connection open in the master when it forks (``setup()`` closes its own).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

from . import stats
from .errors import (
    IdempotencyConflict,
    StoreFull,
    StoreUnavailable,
)
from .job import Attempt, Job, JobError, Progress
from .lifecycle import ClaimAction, decide_claim
from .rows import (
    ATTEMPT,
    BEAT,
    CLAIM,
    CLAIM_DECIDED,
    COLUMNS,
    FENCE,
    FINISH,
    HISTORY_LIMIT,
    INSERT,
    TOTALS,
    SQLStore,
    attempt_params,
    batch_rows,
    check_change,
    claim_params,
    ended_totals,
    finish_params,
    new_row,
    row_to_job,
    settle,
    state_marks,
)
from .states import FINISHED, JobState
from .store import FollowUp, NewJob

log = logging.getLogger("spoolkit.store")
T = TypeVar("T")

SCHEMA_VERSION = 5
_TABLES = """
CREATE TABLE IF NOT EXISTS spoolkit_jobs (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    backoff REAL NOT NULL,
    created_at REAL NOT NULL,
    scheduled_for REAL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    progress TEXT,
    result TEXT,
    error_type TEXT,
    error_message TEXT,
    error_traceback TEXT,
    spool_file TEXT,
    runner TEXT,
    runner_pid INTEGER
);
CREATE TABLE IF NOT EXISTS spoolkit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spoolkit_attempts (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at REAL,
    finished_at REAL,
    outcome TEXT NOT NULL,
    error_type TEXT,
    error_message TEXT,
    runner_pid INTEGER
);
CREATE TABLE IF NOT EXISTS spoolkit_stats (
    task TEXT NOT NULL,
    series TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (task, series)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS spoolkit_nodes (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    beat REAL NOT NULL,
    figures TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS spoolkit_periodic (
    name TEXT PRIMARY KEY,
    last_slot REAL NOT NULL,
    fired_slot REAL,
    fired_job TEXT,
    updated_at REAL NOT NULL
);
"""
#: Columns added after the first release (setup() adds those a store lacks).
_ADDED_COLUMNS = {
    "origin": "TEXT NOT NULL DEFAULT 'spoolkit'",
    "parent_id": "TEXT",
    "on_success": "TEXT",
    "on_failure": "TEXT",
    "callback_url": "TEXT",
    "timeout": "REAL",
    "abort_requested": "REAL",
    "idempotency_key": "TEXT",
    "idempotency_hash": "TEXT",
    "periodic_slot": "REAL",
    "queue": "TEXT NOT NULL DEFAULT 'default'",
    "node": "TEXT",
    "node_epoch": "INTEGER",
}
_INDEXES = """
CREATE INDEX IF NOT EXISTS spoolkit_jobs_created ON spoolkit_jobs (created_at);
CREATE INDEX IF NOT EXISTS spoolkit_jobs_state ON spoolkit_jobs (state, updated_at);
CREATE INDEX IF NOT EXISTS spoolkit_jobs_parked ON spoolkit_jobs (scheduled_for)
    WHERE state = 'scheduled' AND spool_file IS NULL;
CREATE INDEX IF NOT EXISTS spoolkit_jobs_waiting_parked ON spoolkit_jobs
    (COALESCE(scheduled_for, created_at)) WHERE spool_file IS NULL
    AND state IN ('queued', 'scheduled');
CREATE INDEX IF NOT EXISTS spoolkit_jobs_parent ON spoolkit_jobs (parent_id)
    WHERE parent_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS spoolkit_jobs_key ON spoolkit_jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS spoolkit_jobs_aborting ON spoolkit_jobs (abort_requested)
    WHERE abort_requested IS NOT NULL AND state = 'running';
CREATE INDEX IF NOT EXISTS spoolkit_attempts_job ON spoolkit_attempts (job_id);
"""
#: Less free space than this beside the store: /healthz says its disk is full.
FULL_BELOW = 64 * 1024
# Connections inherited through fork() are never closed in the child (that can
# release the parent's locks); they are parked here instead.
_INHERITED: list[sqlite3.Connection] = []


def _record_follow_ups(conn: sqlite3.Connection, jobs: Sequence[NewJob]) -> None:
    for new in jobs:
        conn.execute(INSERT, new_row(new)[0])


def _remember(
    conn: sqlite3.Connection,
    job: Job,
    now: float,
    outcome: str,
    error: JobError | None,
    final: JobState | None = None,
) -> None:
    """Add the attempt that just ended to the job's history (the last HISTORY_LIMIT kept)
    and to its task's totals (``final``: the state the job ends in, if it ends)."""
    conn.executemany(TOTALS, ended_totals(job, outcome, now, final))
    conn.execute(ATTEMPT, attempt_params(job, now, outcome, error))
    if job.attempts > HISTORY_LIMIT:
        conn.execute(
            "DELETE FROM spoolkit_attempts WHERE job_id = ? AND rowid NOT IN (SELECT rowid "
            "FROM spoolkit_attempts WHERE job_id = ? ORDER BY rowid DESC LIMIT ?)",
            (job.id, job.id, HISTORY_LIMIT),
        )


def _read_only(exc: sqlite3.Error) -> bool:
    """SQLITE_READONLY and its extended codes (a file opened read-only, moved, ...)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_READONLY


def unavailable(what: str, exc: sqlite3.Error) -> StoreUnavailable:
    """The named error for a failed SQLite call: ``StoreFull`` when its disk is full.

    The message names the file, never its directory: it reaches HTTP clients.
    """
    full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return (StoreFull if full else StoreUnavailable)(f"{what}: {exc}")


class SQLiteStore(SQLStore):  # implements store.Store
    """Jobs in one SQLite file.

    ``synchronous`` (SQLite's) applies to the writes behind a promise made to
    a client: a job accepted (``202``), queued again, or cancelled. With FULL
    they survive a power cut. Every other write (a spooler's claim, outcome,
    progress; housekeeping) uses at most NORMAL, which skips the fsync: one
    lost in a power cut makes the job run again, which at-least-once delivery
    allows anyway. That saves two of the three fsyncs a job would cost.
    """

    def __init__(
        self,
        path: str,
        synchronous: str = "FULL",
        timeout: float = 10.0,
        autocheckpoint: int = 1000,
    ) -> None:
        if synchronous.upper() not in {"FULL", "NORMAL", "OFF"}:
            raise ValueError(f"synchronous must be FULL, NORMAL or OFF, got {synchronous!r}")
        self.path = os.path.abspath(path)
        self.name = os.path.basename(self.path)
        self._inode: int | None = None
        self.synchronous = synchronous.upper()
        self.timeout = timeout
        self.autocheckpoint = autocheckpoint
        self._local = threading.local()

    # -- connections ---------------------------------------------------------------

    def _open(self, synchronous: str | None = None) -> sqlite3.Connection:
        # timeout=0: no SQLite busy handler. Its waits grow 1, 2, 5, 10... ms; the
        # kit's own retry (_locked) polls in fractions of a millisecond instead.
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        conn.execute(f"PRAGMA synchronous={synchronous or self.synchronous}")
        conn.execute(f"PRAGMA wal_autocheckpoint={int(self.autocheckpoint)}")
        return conn

    def _connection(self, durable: bool = False) -> sqlite3.Connection:
        """This thread's connection (one durable, one relaxed), reopened after a fork."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            # Handles inherited through fork() are parked, never closed here.
            _INHERITED.extend(getattr(local, "conns", {}).values())
            local.conns, local.pid = {}, os.getpid()
        conn: sqlite3.Connection | None = local.conns.get(durable)
        if conn is None:
            # Called inside _locked: a store busy or missing while it opens is retried
            # (or reported) like any other store error.
            level = self.synchronous if durable or self.synchronous == "OFF" else "NORMAL"
            conn = local.conns[durable] = self._open(level)
        return conn

    def setup(self) -> None:
        """Create the file and schema, switch to WAL, then close: safe to call before forking."""
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        conn = self._open()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_TABLES)
            present = {row[1] for row in conn.execute("PRAGMA table_info(spoolkit_jobs)")}
            for column, definition in _ADDED_COLUMNS.items():
                if column not in present:  # a store made by an earlier version
                    conn.execute(f"ALTER TABLE spoolkit_jobs ADD COLUMN {column} {definition}")
            conn.executescript(_INDEXES)
            conn.execute(
                "INSERT OR REPLACE INTO spoolkit_meta (key, value) VALUES ('schema', ?)",
                (str(SCHEMA_VERSION),),
            )
        except sqlite3.Error as exc:
            raise unavailable(f"cannot set up the job store {self.name}", exc) from exc
        finally:
            conn.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.chmod(self.path + suffix, 0o600)
        self._inode = os.stat(self.path).st_ino

    def check(self) -> None:
        """Raise ``StoreUnavailable`` unless a job could be recorded now: the file is
        still the one set up (not removed or replaced under the open connections)
        and a write commits (not read-only, not full)."""
        try:
            inode = os.stat(self.path).st_ino
        except OSError as exc:
            raise StoreUnavailable(f"job store {self.name} is gone: {exc.strerror}") from exc
        if self._inode is not None and inode != self._inode:
            raise StoreUnavailable(f"job store {self.name} was replaced: restart the server")
        space = os.statvfs(os.path.dirname(self.path))
        if space.f_bavail * space.f_frsize < FULL_BELOW:
            # A small write can still land in the WAL's free pages: say it before a job fails.
            raise StoreFull(f"job store {self.name}: its disk is full")
        self.set_meta("checked", repr(time.time()))

    def _locked(self, attempt: Callable[[], T], *, patient: bool = False) -> T:
        """Run ``attempt`` until the database is not locked, for up to ``timeout`` seconds.

        ``patient``: for a write that must not be dropped (an attempt's
        outcome), keep trying past the timeout and through any other store
        error, backing off to one try every 5 s, until it is written.
        """
        deadline = time.monotonic() + self.timeout
        pause, backoff, failures = 0.0001, 0.05, 0
        while True:
            try:
                return attempt()
            except sqlite3.Error as exc:
                if _read_only(exc):
                    # SQLite opened the file read-only (it could not be written when
                    # opened) and stays so: open it again on the next try.
                    self._forget()
                message = str(exc)
                busy = isinstance(exc, sqlite3.OperationalError) and (
                    "locked" in message or "busy" in message
                )
                if busy and time.monotonic() < deadline:
                    time.sleep(pause)
                    pause = min(pause * 2, 0.001)
                    continue
                if not patient:
                    raise unavailable(f"job store {self.name}", exc) from exc
                failures += 1
                if failures % 10 == 1:
                    log.warning("job store unavailable, will keep trying: %s", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def close(self) -> None:
        """Close this thread's connections (the next call opens new ones)."""
        self._forget()

    def _forget(self) -> None:
        """Close this thread's connections; the next call opens new ones."""
        conns: dict[bool, sqlite3.Connection] = getattr(self._local, "conns", {})
        if getattr(self._local, "pid", None) == os.getpid():
            for conn in conns.values():
                conn.close()
            conns.clear()

    @contextmanager
    def _write(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction holding SQLite's write lock from the start (BEGIN IMMEDIATE)."""
        conn = self._locked(lambda: self._connection(durable))
        self._locked(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                if _read_only(exc):
                    self._forget()
                raise unavailable(f"job store {self.name}", exc) from exc
            raise

    def _transact(
        self,
        work: Callable[[sqlite3.Connection], T],
        *,
        durable: bool = False,
        patient: bool = False,
    ) -> T:
        """``work(conn)`` in one write transaction (BEGIN IMMEDIATE ... COMMIT), tried again
        whole while the database is locked (and, ``patient``, while it is unavailable)."""
        def attempt() -> T:
            conn = self._connection(durable)
            conn.execute("BEGIN IMMEDIATE")
            try:
                done = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return done

        return self._locked(attempt, patient=patient)

    def _statement(
        self,
        sql: str,
        params: tuple[Any, ...] | list[Any],
        durable: bool = False,
        patient: bool = False,
    ) -> sqlite3.Cursor:
        """One write statement, its own transaction: the write lock only while it runs."""
        return self._locked(
            lambda: self._connection(durable).execute(sql, params), patient=patient
        )

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._locked(lambda: self._connection().execute(sql, params).fetchall())

    @staticmethod
    def _fetch(conn: sqlite3.Connection, job_id: str) -> Job | None:
        row = conn.execute(
            f"SELECT {COLUMNS} FROM spoolkit_jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return row_to_job(row) if row else None

    # -- reading -------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """The job, with the ids of the jobs its outcome queued and its attempt history."""
        rows = self._read(f"SELECT {COLUMNS} FROM spoolkit_jobs WHERE id = ?", (job_id,))
        if not rows:
            return None
        children = self._read(
            "SELECT id FROM spoolkit_jobs WHERE parent_id = ? ORDER BY created_at, id", (job_id,)
        )
        attempts = self._read(
            "SELECT attempt, started_at, finished_at, outcome, error_type, error_message, "
            "runner_pid FROM spoolkit_attempts WHERE job_id = ? ORDER BY rowid",
            (job_id,),
        )
        history = tuple(
            Attempt(number, started, finished, outcome,
                    JobError(etype, emessage or "") if etype else None, pid)
            for number, started, finished, outcome, etype, emessage, pid in attempts
        )  # fmt: skip
        return replace(
            row_to_job(rows[0]), callbacks=tuple(row[0] for row in children), history=history
        )

    def checkpoint(self) -> None:
        """Copy the WAL into the database file, without waiting for readers (PASSIVE).

        Done here, by the housekeeper, so that a web request or a job's claim
        does not pay for it: SQLite otherwise checkpoints inside whichever
        commit crosses the threshold (``autocheckpoint`` pages).
        """
        self._locked(
            lambda: self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        )

    def wait(self, timeout: float) -> None:
        """Sleep: nothing announces a job here (one host, spool files wake spoolers)."""
        time.sleep(timeout)

    def beat(self, node: str, host: str, figures: str, now: float) -> None:
        self._statement(BEAT.format(clock="?"), (node, host, now, figures))

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO spoolkit_meta (key, value) VALUES (?, ?)", (key, value)
            )

    # -- writing ---------------------------------------------------------------------

    def insert(self, new: NewJob) -> Job:
        """Record an accepted job (durably: this is what a ``202`` promises).

        With an idempotency key still valid, the job recorded first under it comes
        back instead (``replayed``), or ``IdempotencyConflict`` when it was another
        task or other arguments; the unique index makes concurrent inserts agree.
        """
        values, recorded = new_row(new)
        sql = INSERT
        key = new.idempotency_key
        if key is None:
            self._statement(sql, values, durable=True)
            return recorded

        def work(conn: sqlite3.Connection) -> Job:
            conn.execute(
                "UPDATE spoolkit_jobs SET idempotency_key = NULL WHERE idempotency_key = ? "
                "AND created_at < ?",
                (key, new.created_at - new.idempotency_ttl),
            )
            first = conn.execute(
                "SELECT id, idempotency_hash FROM spoolkit_jobs WHERE idempotency_key = ?", (key,)
            ).fetchone()
            if first is None:
                conn.execute(sql, values)
                return recorded
            if first[1] != new.idempotency_hash:
                raise IdempotencyConflict(
                    f"Idempotency-Key {key!r} names job {first[0]}, of another task or with "
                    "other arguments"
                )
            earlier = self._fetch(conn, first[0])
            assert earlier is not None
            return replace(earlier, replayed=True)

        return self._transact(work, durable=True)

    def insert_many(self, jobs: Sequence[NewJob]) -> list[Job]:
        """One ``BEGIN IMMEDIATE`` transaction, one fsync, for the whole batch."""
        values, recorded = batch_rows(jobs)
        if values:
            self._transact(lambda conn: conn.executemany(INSERT, values), durable=True)
        return recorded

    def delete(self, job_id: str) -> None:
        """Remove a row that never reached the spool (its spool file could not be written)."""
        with self._write() as conn:
            conn.execute("DELETE FROM spoolkit_jobs WHERE id = ?", (job_id,))

    def claim(
        self,
        job_id: str,
        delivery: str,
        instance: str,
        pid: int,
        now: float,
        is_alive: Callable[[int], bool],
        node: str | None = None,
    ) -> tuple[ClaimAction, Job | None]:
        """Decide (see lifecycle.py) and, for RUN and RERUN, mark the job running by us.

        ``delivery`` names how the job reached this runner (its spool file's
        path relative to the spool directory, or a local runner's marker); the
        row must name it. The common case (a waiting, due job named by this
        delivery) is one
        ``UPDATE ... RETURNING``; anything else takes the full decision in a
        transaction.
        """
        claimed = self._statement(
            CLAIM, claim_params(job_id, delivery, instance, pid, now, node)
        ).fetchone()
        if claimed is not None:
            return ClaimAction.RUN, row_to_job(claimed)
        with self._write() as conn:
            job = self._fetch(conn, job_id)
            action = decide_claim(job, delivery, instance, now, is_alive, node)
            if action is ClaimAction.RERUN and job is not None:
                _remember(conn, job, now, "interrupted", None)
            if action in (ClaimAction.RUN, ClaimAction.RERUN):
                counted = 1 if action is ClaimAction.RUN else 0
                conn.execute(CLAIM_DECIDED, (JobState.RUNNING.value, counted, now, instance, pid,
                                             now, node, job_id))  # fmt: skip
                job = self._fetch(conn, job_id)
        return action, job

    def finish(
        self,
        job_id: str,
        runner_pid: int,
        now: float,
        *,
        result: str | None = None,
        error: JobError | None = None,
        retry_at: float | None = None,
        park: bool = False,
        outcome: str | None = None,
        follow_up: FollowUp | None = None,
        node: str | None = None,
        epoch: int | None = None,
    ) -> bool:
        """Record how an attempt ended: succeeded (no error), retry later, or failed; or
        ``cancelled`` whatever it was, when an abort was requested meanwhile.

        Only the runner that holds the job may do this (``runner_pid`` and
        ``state = running`` are checked): ``False`` means someone else owns it now.
        ``park`` (with ``retry_at``) forgets the spool file: the retry waits in the
        store and the housekeeper spools it when it is nearly due. In the same
        transaction: the attempt joins the history (``outcome``), and a final
        outcome records the jobs ``follow_up`` makes of it (callbacks, webhooks),
        so no crash can lose them or queue them for an outcome that was not
        recorded. Waits while the store is unavailable: an outcome is never dropped.
        """

        def work(conn: sqlite3.Connection) -> bool:
            current = conn.execute(
                f"SELECT {COLUMNS} FROM spoolkit_jobs WHERE id = ? AND state = ? "
                f"AND runner_pid = ? AND {FENCE}",
                (job_id, JobState.RUNNING.value, runner_pid, node, epoch),
            ).fetchone()
            if current is None:
                return False
            job = row_to_job(current)
            state, finished, label, retry = settle(job, error, retry_at, outcome, now)
            conn.execute(
                FINISH,
                finish_params(job_id, state, finished, now, result, retry, error, park),
            )
            _remember(conn, job, now, label, error, state if state.is_finished else None)
            if follow_up is not None and state.is_finished:
                done = self._fetch(conn, job_id)
                assert done is not None
                _record_follow_ups(conn, follow_up(done))
            return True

        return self._transact(work, patient=True)

    def set_progress(
        self,
        job_id: str,
        progress: Progress,
        now: float,
        node: str | None = None,
        epoch: int | None = None,
    ) -> None:
        self._statement(
            "UPDATE spoolkit_jobs SET progress = ?, updated_at = ? WHERE id = ? AND state = ? "
            f"AND {FENCE}",
            (json.dumps(progress.__dict__), now, job_id, JobState.RUNNING.value, node, epoch),
        )

    def _change(
        self,
        job_id: str,
        allowed: frozenset[JobState],
        action: str,
        sets: str,
        params: list[Any],
        follow_up: FollowUp | None = None,
    ) -> Job:
        """Update one job if its state is in ``allowed``; else a named error (durably).
        A job it finishes records what ``follow_up`` makes of it in the same transaction."""

        def work(conn: sqlite3.Connection) -> Job:
            check_change(self._fetch(conn, job_id), job_id, allowed, action)
            conn.execute(f"UPDATE spoolkit_jobs SET {sets} WHERE id = ?", [*params, job_id])
            changed = self._fetch(conn, job_id)
            assert changed is not None
            if changed.state.is_finished:  # a waiting job cancelled: no attempt ended
                conn.executemany(TOTALS, [(changed.task, name, value) for name, value
                                          in stats.finished_series(changed.state.value)])
                if follow_up is not None:
                    _record_follow_ups(conn, follow_up(changed))
            return changed

        return self._transact(work, durable=True)

    def reassign(self, job: Job, spool_file: str | None, now: float, *, requeue: bool) -> bool:
        """Point a waiting (or, with ``requeue``, dead-runner) job at a new spool file.

        Conditional on the row being exactly as ``job`` saw it, so a claim,
        a cancel or another housekeeper that got there first wins.
        """
        sets = "spool_file = ?, updated_at = ?"
        params: list[Any] = [spool_file, now]
        if requeue:
            sets += ", state = ?, runner = NULL, runner_pid = NULL"
            params.append(JobState.QUEUED.value)
        if spool_file is None:
            sets += ", node = NULL, node_epoch = NULL"  # parked: any node may claim it
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE spoolkit_jobs SET {sets} WHERE id = ? AND state = ? "
                "AND spool_file IS ? AND runner_pid IS ?",
                [*params, job.id, job.state.value, job.spool_file, job.runner_pid],
            )
        return cursor.rowcount == 1

    def purge(
        self,
        finished_before: float,
        limit: int = 1000,
        states: Collection[JobState] = FINISHED,
    ) -> int:
        """Delete up to ``limit`` jobs in ``states`` (finished ones) older than
        ``finished_before``."""
        if not set(states) <= FINISHED:
            raise ValueError("only finished jobs can be purged")
        marks, finished = state_marks(states)
        with self._write() as conn:
            doomed = [
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM spoolkit_jobs WHERE state IN ({marks}) AND finished_at < ? "
                    "LIMIT ?",
                    [*finished, finished_before, limit],
                )
            ]
            places = ",".join("?" * len(doomed))
            conn.execute(f"DELETE FROM spoolkit_attempts WHERE job_id IN ({places})", doomed)
            cursor = conn.execute(f"DELETE FROM spoolkit_jobs WHERE id IN ({places})", doomed)
        return cursor.rowcount

    # -- periodic schedules ------------------------------------------------------------

    def advance_slot(self, schedule: str, slot: float, now: float, job: NewJob | None) -> bool:
        """Move ``schedule`` on to ``slot`` and record ``job`` (if any), in one durable
        transaction, only if the schedule's last decided slot is earlier.

        The conditional upsert is the once-per-slot rule: SQLite runs one write
        transaction at a time, so of two housekeepers deciding one slot exactly one
        moves the record on and inserts the job; a crash before the commit leaves
        neither, after it both. Slots only move forward, so none fires twice.
        """

        def work(conn: sqlite3.Connection) -> bool:
            moved = conn.execute(
                "INSERT INTO spoolkit_periodic (name, last_slot, fired_slot, fired_job, "
                "updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "last_slot = excluded.last_slot, updated_at = excluded.updated_at, "
                "fired_slot = COALESCE(excluded.fired_slot, fired_slot), "
                "fired_job = COALESCE(excluded.fired_job, fired_job) "
                "WHERE last_slot < excluded.last_slot",
                (schedule, slot, None if job is None else slot,
                 None if job is None else job.id, now),
            ).rowcount  # fmt: skip
            if moved != 1:
                return False
            if job is not None:
                conn.execute(INSERT, new_row(job)[0])
                conn.execute(
                    "UPDATE spoolkit_jobs SET periodic_slot = ? WHERE id = ?", (slot, job.id)
                )
            return True

        return self._transact(work, durable=True)
