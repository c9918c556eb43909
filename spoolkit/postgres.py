"""Jobs in PostgreSQL: the store for more than one machine (``SPOOLKIT_DATABASE=postgresql://``).

The same contract as :class:`~spoolkit.sqlite.SQLiteStore` (``store.Store``,
checked by ``tests/test_store_contract.py`` against both), on an engine built
for many writers on many hosts. What differs, and why:

- **Concurrency.** SQLite runs one write transaction at a time (``BEGIN
  IMMEDIATE``); PostgreSQL runs them side by side, so every read-then-write
  takes the row lock first (``SELECT ... FOR UPDATE``) and every state change
  stays a conditional ``UPDATE``: two processes racing on one job still cannot
  both win. Idempotency keys and periodic slots rest on unique indexes and
  ``INSERT ... ON CONFLICT``, which wait for a competing transaction to end.
- **Durability.** Every commit is as durable as the server's
  ``synchronous_commit`` makes it (on by default: the WAL is flushed before
  ``COMMIT`` returns), the promise behind a ``202``. Writes that need not be
  (a claim, progress, an outcome: a lost one makes the job run again, which
  at-least-once allows) set ``synchronous_commit = off`` for their own
  transaction, as the SQLite store uses ``synchronous=NORMAL`` for them.
- **Errors.** A lost connection, a server that is down or restarting, a lock
  wait past the timeout, a serialization failure or deadlock are retried for
  up to ``timeout`` seconds, then raise ``StoreUnavailable`` (``503``);
  ``patient`` writes (outcomes) keep trying until they land.
- **Text.** PostgreSQL's ``text`` cannot hold NUL characters: error messages
  and tracebacks have them escaped (``\\x00``); arguments and results are JSON,
  which escapes them already.

Connections are per process and thread, opened lazily, so a store built
before uWSGI forks is safe to use in every worker and spooler.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pgerrors

from . import stats
from .errors import IdempotencyConflict, NodeFenced, StoreUnavailable
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
from .states import FINISHED, WAITING, JobState
from .store import FollowUp, NewJob

log = logging.getLogger("spoolkit.store")

T = TypeVar("T")

SCHEMA_VERSION = 5
_SCHEMA = """
CREATE TABLE IF NOT EXISTS spoolkit_jobs (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    backoff DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    scheduled_for DOUBLE PRECISION,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL,
    progress TEXT,
    result TEXT,
    error_type TEXT,
    error_message TEXT,
    error_traceback TEXT,
    spool_file TEXT,
    runner TEXT,
    runner_pid INTEGER,
    origin TEXT NOT NULL DEFAULT 'spoolkit',
    parent_id TEXT,
    on_success TEXT,
    on_failure TEXT,
    callback_url TEXT,
    timeout DOUBLE PRECISION,
    abort_requested DOUBLE PRECISION,
    idempotency_key TEXT,
    idempotency_hash TEXT,
    periodic_slot DOUBLE PRECISION,
    queue TEXT NOT NULL DEFAULT 'default',
    node TEXT,
    node_epoch INTEGER
);
CREATE TABLE IF NOT EXISTS spoolkit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spoolkit_attempts (
    seq BIGSERIAL PRIMARY KEY,
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    outcome TEXT NOT NULL,
    error_type TEXT,
    error_message TEXT,
    runner_pid INTEGER
);
CREATE TABLE IF NOT EXISTS spoolkit_periodic (
    name TEXT PRIMARY KEY,
    last_slot DOUBLE PRECISION NOT NULL,
    fired_slot DOUBLE PRECISION,
    fired_job TEXT,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS spoolkit_nodes (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    beat DOUBLE PRECISION NOT NULL,
    figures TEXT NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS spoolkit_stats (
    task TEXT NOT NULL,
    series TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (task, series)
);
CREATE INDEX IF NOT EXISTS spoolkit_jobs_created ON spoolkit_jobs (created_at);
CREATE INDEX IF NOT EXISTS spoolkit_jobs_state ON spoolkit_jobs (state, updated_at);
CREATE INDEX IF NOT EXISTS spoolkit_jobs_parked ON spoolkit_jobs (scheduled_for)
    WHERE state = 'scheduled' AND spool_file IS NULL;
CREATE INDEX IF NOT EXISTS spoolkit_jobs_parent ON spoolkit_jobs (parent_id)
    WHERE parent_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS spoolkit_jobs_key ON spoolkit_jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS spoolkit_jobs_aborting ON spoolkit_jobs (abort_requested)
    WHERE abort_requested IS NOT NULL AND state = 'running';
CREATE INDEX IF NOT EXISTS spoolkit_attempts_job ON spoolkit_attempts (job_id, seq);
-- Stores created before several hosts could share them.
ALTER TABLE spoolkit_jobs ADD COLUMN IF NOT EXISTS node TEXT;
ALTER TABLE spoolkit_jobs ADD COLUMN IF NOT EXISTS node_epoch INTEGER;
ALTER TABLE spoolkit_nodes ADD COLUMN IF NOT EXISTS epoch INTEGER NOT NULL DEFAULT 0;
-- What a node claims: unclaimed (no spool file) waiting jobs, per queue, by priority
-- (lower first, none last), then by when they became due.
CREATE INDEX IF NOT EXISTS spoolkit_jobs_unclaimed ON spoolkit_jobs
    (queue, (priority IS NULL), priority, (COALESCE(scheduled_for, created_at)))
    WHERE spool_file IS NULL AND state IN ('queued', 'scheduled');
-- Parked jobs as one host's housekeeper spools them (due_parked).
CREATE INDEX IF NOT EXISTS spoolkit_jobs_waiting_parked ON spoolkit_jobs
    ((COALESCE(scheduled_for, created_at))) WHERE spool_file IS NULL
    AND state IN ('queued', 'scheduled');
-- What a node holds (claimed or running), for its count of idle spoolers and takeover.
CREATE INDEX IF NOT EXISTS spoolkit_jobs_node ON spoolkit_jobs (node, queue)
    WHERE node IS NOT NULL AND state IN ('queued', 'scheduled', 'running');
"""
#: Serialises schema set-up between processes and hosts starting at once.
_SETUP_LOCK = zlib.crc32(b"spoolkit schema")
#: Errors worth another try: the server is away, restarting, or the transaction lost a race.
_TRANSIENT: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    pgerrors.SerializationFailure,
    pgerrors.DeadlockDetected,
    pgerrors.LockNotAvailable,
)
#: Another transaction was in the way (a lock wait past the timeout, a deadlock).
_CONFLICTS = (pgerrors.SerializationFailure, pgerrors.DeadlockDetected, pgerrors.LockNotAvailable)
# Connections inherited through fork() are never closed in the child (closing
# would end the parent's session); they are parked here instead.
_INHERITED: list[psycopg.Connection[Any]] = []


def pg(sql: str) -> str:
    """A statement written with ``?`` placeholders in psycopg's ``%s`` style."""
    return sql.replace("%", "%%").replace("?", "%s")


_INSERT = pg(INSERT)
_CLAIM = pg(CLAIM)
_CLAIM_DECIDED = pg(CLAIM_DECIDED)
_FINISH = pg(FINISH)
_TOTALS = pg(TOTALS)
_ATTEMPT = pg(ATTEMPT)
_ROW = f"SELECT {COLUMNS} FROM spoolkit_jobs WHERE id = %s"
#: The channel on which a job that became claimable is announced (see ``wait``).
CHANNEL = "spoolkit"
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"
_HELD = "state IN ('queued', 'scheduled', 'running')"
#: The jobs some nodes claimed and no spooler started, back to the pool (no attempt).
_UNCLAIM = (
    "UPDATE spoolkit_jobs SET spool_file = NULL, node = NULL, node_epoch = NULL, "
    "updated_at = %s WHERE node = ANY(%s) AND state IN ('queued', 'scheduled')"
)


#: libpq parameters that hold a secret, masked in the address's query string too.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def redact(dsn: str) -> str:
    """The address without its password (in ``user:password@`` or a ``password=``
    parameter), for logs and errors."""
    base, mark, query = dsn.partition("?")
    parts = urlsplit(base)
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[-1]
        base = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    pairs = [pair.partition("=") for pair in query.split("&")] if query else []
    query = "&".join(
        f"{key}{sep}{'***' if unquote(key).lower() in _SECRET_PARAMETERS else value}"
        for key, sep, value in pairs
    )
    return f"{base}{mark}{query}"


def _clean(text: str | None) -> str | None:
    """Text PostgreSQL can store: NUL escaped, lone surrogates escaped."""
    if text is None:
        return None
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class PostgresStore(SQLStore):  # implements store.Store
    """Jobs in one PostgreSQL database, shared by every process on every host."""

    def __init__(self, dsn: str, timeout: float = 10.0) -> None:
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"not a PostgreSQL address: {redact(dsn)!r}")
        self.dsn = dsn
        self.path = redact(dsn)
        self.timeout = timeout
        self._local = threading.local()
        self._opened: list[tuple[int, psycopg.Connection[Any]]] = []
        self._guard = threading.Lock()

    # -- connections -----------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            self.dsn, autocommit=True, connect_timeout=max(1, int(self.timeout)),
            application_name=f"spoolkit[{os.getpid()}]",
        )  # fmt: skip
        # A lock wait longer than the store timeout is an error (retried, then 503),
        # never a request hanging on another transaction.
        conn.execute(f"SET lock_timeout = {int(self.timeout * 1000)}")
        with self._guard:
            self._opened = [(pid, c) for pid, c in self._opened if not c.closed]
            self._opened.append((os.getpid(), conn))
        return conn

    def close(self) -> None:
        """Close every connection this process opened (any thread's)."""
        with self._guard:
            mine = [c for pid, c in self._opened if pid == os.getpid()]
            self._opened = [(pid, c) for pid, c in self._opened if pid != os.getpid()]
        for conn in mine:
            conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        """This thread's connection, opened again after a fork or once it broke."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            inherited = getattr(local, "conn", None)
            if inherited is not None:
                _INHERITED.append(inherited)
            local.conn, local.pid = None, os.getpid()
        conn: psycopg.Connection[Any] | None = local.conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = local.conn = self._connect()
        return conn

    def _forget(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
            self._local.conn = None

    def _locked(self, attempt: Callable[[], T], *, patient: bool = False) -> T:
        """``attempt()`` until it gets through: transient errors are tried again for
        ``timeout`` seconds (``patient``: until it is done, backing off to 5 s)."""
        deadline = time.monotonic() + self.timeout
        pause, failures = 0.01, 0
        while True:
            try:
                return attempt()
            except _TRANSIENT as exc:
                if isinstance(exc, psycopg.OperationalError) and not isinstance(
                    exc, pgerrors.SerializationFailure | pgerrors.DeadlockDetected
                    | pgerrors.LockNotAvailable
                ):
                    self._forget()  # the connection may be gone: a new one next time
                if not patient and time.monotonic() >= deadline:
                    raise StoreUnavailable(f"job store {self.path}: {_first_line(exc)}") from exc
                failures += 1
                if patient and failures % 10 == 1:
                    log.warning("job store unavailable, will keep trying: %s", _first_line(exc))
                time.sleep(pause)
                pause = min(pause * 2, 5.0 if patient else 0.5)
            except psycopg.Error as exc:
                raise StoreUnavailable(f"job store {self.path}: {_first_line(exc)}") from exc

    def _transact(
        self,
        work: Callable[[psycopg.Connection[Any]], T],
        *,
        durable: bool = True,
        patient: bool = False,
    ) -> T:
        """``work(conn)`` in one transaction, tried again whole after a transient error."""

        def attempt() -> T:
            conn = self._connection()
            with conn.transaction():
                if not durable:
                    conn.execute("SET LOCAL synchronous_commit = off")
                return work(conn)

        return self._locked(attempt, patient=patient)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read written with ``?`` placeholders, as ``SQLStore``'s are."""
        return self._locked(lambda: self._connection().execute(pg(sql), params).fetchall())

    @staticmethod
    def _fetch(conn: psycopg.Connection[Any], job_id: str, lock: bool = False) -> Job | None:
        row = conn.execute(_ROW + (" FOR UPDATE" if lock else ""), (job_id,)).fetchone()
        return row_to_job(row) if row else None

    def setup(self) -> None:
        """Create what is missing (under an advisory lock: several nodes may start at
        once), then close: safe to call before forking.

        A schema already at this version is left alone: its ``ALTER TABLE`` would take
        the table's exclusive lock at every start, and deadlock with the claims of
        running nodes (seen once in 70 starts of three nodes). A lock conflict or
        deadlock while setting up is tried again for ``timeout`` seconds; a server that
        cannot be reached fails the start at once (systemd starts it again)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self._setup()
            except _CONFLICTS as exc:
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"cannot set up the job store {self.path}: {_first_line(exc)}"
                    ) from exc
                time.sleep(0.2)

    def _setup(self) -> None:
        try:
            with self._connect() as conn:
                if self._schema_version(conn) == str(SCHEMA_VERSION):
                    return
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
                    conn.execute(_SCHEMA)
                    conn.execute(
                        "INSERT INTO spoolkit_meta (key, value) VALUES ('schema', %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (str(SCHEMA_VERSION),),
                    )
        except _CONFLICTS:
            raise  # setup() tries again
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot set up the job store {self.path}: {_first_line(exc)}"
            ) from exc

    @staticmethod
    def _schema_version(conn: psycopg.Connection[Any]) -> str | None:
        """The version the schema was last brought to, or ``None`` (no tables yet)."""
        if conn.execute("SELECT to_regclass('spoolkit_meta')").fetchone() == (None,):
            return None
        row = conn.execute("SELECT value FROM spoolkit_meta WHERE key = 'schema'").fetchone()
        return None if row is None else str(row[0])

    def check(self) -> None:
        """A write commits now (the server is up, the database writable)."""
        self.set_meta("checked", repr(time.time()))

    def checkpoint(self) -> None:
        """Nothing to do: PostgreSQL checkpoints and vacuums by itself."""

    # -- reading ---------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        def read(conn: psycopg.Connection[Any]) -> Job | None:
            job = self._fetch(conn, job_id)
            if job is None:
                return None
            children = conn.execute(
                "SELECT id FROM spoolkit_jobs WHERE parent_id = %s ORDER BY created_at, id",
                (job_id,),
            ).fetchall()
            attempts = conn.execute(
                "SELECT attempt, started_at, finished_at, outcome, error_type, error_message, "
                "runner_pid FROM spoolkit_attempts WHERE job_id = %s ORDER BY seq",
                (job_id,),
            ).fetchall()
            history = tuple(
                Attempt(number, started, finished, outcome,
                        JobError(etype, emessage or "") if etype else None, pid)
                for number, started, finished, outcome, etype, emessage, pid in attempts
            )  # fmt: skip
            return replace(job, callbacks=tuple(row[0] for row in children), history=history)

        return self._transact(read)

    #: The database server's clock, which every host shares: node ages never depend
    #: on how far apart the hosts' own clocks are.
    CLOCK = "EXTRACT(EPOCH FROM clock_timestamp())"

    def _clock(self, now: float) -> list[float]:
        return []

    def beat(self, node: str, host: str, figures: str, now: float) -> None:
        self._transact(lambda conn: conn.execute(
            pg(BEAT.format(clock=self.CLOCK)), (node, host, figures)), durable=False)  # fmt: skip

    def wait(self, timeout: float) -> None:
        """Wait for a notification on ``CHANNEL`` (a job parked, a spooler freed) for
        up to ``timeout`` seconds, on a connection of its own that listens. A notice
        sent while it was not connected is lost, which is why the housekeeper also
        claims on every tick."""
        deadline = time.monotonic() + timeout
        try:
            listener = self._listener()
            for _ in listener.notifies(timeout=timeout, stop_after=1):
                break
            for _ in listener.notifies(timeout=0.001):  # what else came meanwhile
                pass
        except psycopg.Error as exc:
            log.warning("job store: not listening for notifications: %s", _first_line(exc))
            broken: psycopg.Connection[Any] | None = getattr(self._local, "listener", None)
            if broken is not None:
                broken.close()
                self._local.listener = None
            time.sleep(max(0.0, deadline - time.monotonic()))

    def _listener(self) -> psycopg.Connection[Any]:
        listener: psycopg.Connection[Any] | None = getattr(self._local, "listener", None)
        if getattr(self._local, "listener_pid", None) != os.getpid() or listener is None \
                or listener.closed or listener.broken:
            listener = self._local.listener = self._connect()
            self._local.listener_pid = os.getpid()
            listener.execute(f"LISTEN {CHANNEL}")
        return listener

    # -- nodes -----------------------------------------------------------------------

    def register(self, node: str, host: str, instance: str, now: float) -> int:
        def work(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute(
                "INSERT INTO spoolkit_nodes (id, host, beat, figures, epoch) "
                f"VALUES (%s, %s, {self.CLOCK}, '{{}}', 1) ON CONFLICT (id) DO UPDATE SET "
                "host = excluded.host, beat = excluded.beat, epoch = spoolkit_nodes.epoch + 1 "
                "RETURNING epoch",
                (node, host),
            ).fetchone()
            assert row is not None
            back = conn.execute(_UNCLAIM, (now, [node])).rowcount
            cut = [row_to_job(found) for found in conn.execute(
                f"SELECT {COLUMNS} FROM spoolkit_jobs WHERE node = %s AND state = 'running' "
                "AND runner IS DISTINCT FROM %s FOR UPDATE", (node, instance),
            ).fetchall()]  # fmt: skip
            for job in cut:
                self._remember(conn, job, now, "interrupted", None)
                conn.execute(
                    "UPDATE spoolkit_jobs SET state = 'queued', attempts = attempts - 1, "
                    "runner = NULL, runner_pid = NULL, spool_file = NULL, node = NULL, "
                    "node_epoch = NULL, updated_at = %s WHERE id = %s", (now, job.id),
                )  # fmt: skip
            if back or cut:
                log.warning("node %s registered (epoch %d): took back %d claimed and %d "
                            "interrupted jobs of its previous run", node, row[0], back,
                            len(cut))  # fmt: skip
                conn.execute(_NOTIFY)
            return int(row[0])

        return self._transact(work)

    def claim_parked(
        self,
        node: str,
        epoch: int | None,
        capacity: Mapping[str, int],
        until: float,
        now: float,
        deliver: Callable[[Job], str],
        tasks: Collection[str],
    ) -> list[tuple[Job, str]]:
        known = list(tasks)

        def work(conn: psycopg.Connection[Any]) -> list[tuple[Job, str]]:
            # FOR SHARE: a takeover bumping this node's epoch waits for the claim, or
            # the claim sees the new epoch.
            current = conn.execute(
                "SELECT epoch FROM spoolkit_nodes WHERE id = %s FOR SHARE", (node,)
            ).fetchone()
            if epoch is None:  # a spooler: under its node's epoch, as it is now
                if current is None:
                    return []  # its node has not registered yet: the mule claims then
                claiming = int(current[0])
            elif current is None or current[0] != epoch:
                raise NodeFenced(f"node {node} epoch {epoch} is no longer current "
                                 f"({current[0] if current else 'unregistered'})")  # fmt: skip
            else:
                claiming = int(current[0])
            held = dict(conn.execute(
                f"SELECT queue, COUNT(*) FROM spoolkit_jobs WHERE node = %s AND {_HELD} "
                "GROUP BY queue", (node,)).fetchall())  # fmt: skip
            claimed: list[tuple[Job, str]] = []
            for queue, slots in capacity.items():
                room = slots - held.get(queue, 0)
                if room <= 0:
                    continue
                rows = conn.execute(
                    f"SELECT {COLUMNS}, payload FROM spoolkit_jobs WHERE spool_file IS NULL "
                    "AND state IN ('queued', 'scheduled') AND queue = %s "
                    "AND COALESCE(scheduled_for, created_at) <= %s "
                    "AND (origin <> 'spoolkit' OR task = ANY(%s)) "
                    "ORDER BY (priority IS NULL), priority, COALESCE(scheduled_for, created_at) "
                    "LIMIT %s FOR UPDATE SKIP LOCKED",
                    (queue, until, known, room),
                ).fetchall()
                for row in rows:
                    job = row_to_job(row[:-1])
                    delivery = deliver(job)
                    conn.execute(
                        "UPDATE spoolkit_jobs SET spool_file = %s, node = %s, node_epoch = %s, "
                        "updated_at = %s WHERE id = %s", (delivery, node, claiming, now, job.id),
                    )  # fmt: skip
                    mine = replace(job, spool_file=delivery, node=node, node_epoch=claiming,
                                   updated_at=now)  # fmt: skip
                    claimed.append((mine, row[-1]))
            return claimed

        return self._transact(work, durable=False)

    def take_back(self, stale_after: float, now: float, exclude: str) -> list[Job]:
        def work(conn: psycopg.Connection[Any]) -> list[Job]:
            stale = [row[0] for row in conn.execute(
                f"SELECT id FROM spoolkit_nodes WHERE {self.CLOCK} - beat > %s AND id <> %s "
                f"AND EXISTS (SELECT 1 FROM spoolkit_jobs WHERE node = spoolkit_nodes.id "
                f"AND {_HELD}) FOR UPDATE SKIP LOCKED", (stale_after, exclude),
            ).fetchall()]  # fmt: skip
            if not stale:
                return []
            conn.execute("UPDATE spoolkit_nodes SET epoch = epoch + 1 WHERE id = ANY(%s)",
                         (stale,))  # fmt: skip
            back = conn.execute(_UNCLAIM, (now, stale)).rowcount
            running = [row_to_job(row) for row in conn.execute(
                f"SELECT {COLUMNS} FROM spoolkit_jobs WHERE node = ANY(%s) AND state = 'running'",
                (stale,)).fetchall()]  # fmt: skip
            log.warning("node(s) %s silent for over %.0fs: took back %d claimed jobs; %d "
                        "running ones lost their attempt", ", ".join(stale), stale_after, back,
                        len(running))  # fmt: skip
            conn.execute(_NOTIFY)
            return running

        return self._transact(work)

    def set_meta(self, key: str, value: str) -> None:
        self._transact(lambda conn: conn.execute(
            "INSERT INTO spoolkit_meta (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value),
        ), durable=False)  # fmt: skip

    # -- writing ---------------------------------------------------------------------

    def insert(self, new: NewJob) -> Job:
        """Record an accepted job, durably; an idempotency key seen before returns its
        first job (``replayed``) or ``IdempotencyConflict`` (see SQLiteStore.insert)."""
        values, recorded = new_row(new)
        key = new.idempotency_key
        if key is None:

            def record(conn: psycopg.Connection[Any]) -> None:
                conn.execute(_INSERT, values)
                if new.spool_file is None:  # parked: tell the nodes' housekeepers
                    conn.execute(_NOTIFY)

            self._transact(record)
            return recorded

        def work(conn: psycopg.Connection[Any]) -> Job:
            conn.execute(
                "UPDATE spoolkit_jobs SET idempotency_key = NULL WHERE idempotency_key = %s "
                "AND created_at < %s",
                (key, new.created_at - new.idempotency_ttl),
            )
            # Waits for a concurrent insert of the same key to commit or roll back.
            inserted = conn.execute(
                _INSERT + " ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL "
                "DO NOTHING RETURNING id",
                values,
            ).fetchone()
            if inserted is not None:
                if new.spool_file is None:
                    conn.execute(_NOTIFY)
                return recorded
            first = conn.execute(
                "SELECT id, idempotency_hash FROM spoolkit_jobs WHERE idempotency_key = %s",
                (key,),
            ).fetchone()
            if first is None:  # the holder of the key just let it go: try again whole
                raise pgerrors.SerializationFailure("idempotency key released meanwhile")
            if first[1] != new.idempotency_hash:
                raise IdempotencyConflict(
                    f"Idempotency-Key {key!r} names job {first[0]}, of another task or with "
                    "other arguments"
                )
            earlier = self._fetch(conn, first[0])
            assert earlier is not None
            return replace(earlier, replayed=True)

        return self._transact(work)

    def insert_many(self, jobs: Sequence[NewJob]) -> list[Job]:
        """One transaction (one WAL flush at commit) for the whole batch."""
        values, recorded = batch_rows(jobs)

        def record(conn: psycopg.Connection[Any]) -> None:
            with conn.cursor() as cursor:
                cursor.executemany(_INSERT, values)
            if any(new.spool_file is None for new in jobs):
                conn.execute(_NOTIFY)

        if values:
            self._transact(record)
        return recorded

    def delete(self, job_id: str) -> None:
        self._transact(lambda conn: conn.execute(
            "DELETE FROM spoolkit_jobs WHERE id = %s", (job_id,)))  # fmt: skip

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
        """As SQLiteStore.claim: one conditional ``UPDATE ... RETURNING`` in the common
        case, else the full decision on the locked row."""

        def work(conn: psycopg.Connection[Any]) -> tuple[ClaimAction, Job | None]:
            claimed = conn.execute(
                _CLAIM, claim_params(job_id, delivery, instance, pid, now, node)
            ).fetchone()
            if claimed is not None:
                return ClaimAction.RUN, row_to_job(claimed)
            job = self._fetch(conn, job_id, lock=True)
            action = decide_claim(job, delivery, instance, now, is_alive, node)
            if action is ClaimAction.RERUN and job is not None:
                self._remember(conn, job, now, "interrupted", None)
            if action in (ClaimAction.RUN, ClaimAction.RERUN):
                counted = 1 if action is ClaimAction.RUN else 0
                conn.execute(_CLAIM_DECIDED, (JobState.RUNNING.value, counted, now, instance,
                                              pid, now, node, job_id))  # fmt: skip
                job = self._fetch(conn, job_id)
            return action, job

        return self._transact(work, durable=False)

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
        """As SQLiteStore.finish, on the locked row."""
        error = None if error is None else JobError(
            _clean(error.type) or "", _clean(error.message) or "", _clean(error.traceback))

        def work(conn: psycopg.Connection[Any]) -> bool:
            current = conn.execute(
                _ROW + f" AND state = %s AND runner_pid = %s AND {pg(FENCE)} FOR UPDATE",
                (job_id, JobState.RUNNING.value, runner_pid, node, epoch),
            ).fetchone()
            if current is None:
                return False
            job = row_to_job(current)
            state, finished, label, retry = settle(job, error, retry_at, outcome, now)
            conn.execute(
                _FINISH,
                finish_params(job_id, state, finished, now, result, retry, error, park),
            )
            self._remember(conn, job, now, label, error, state if state.is_finished else None)
            if follow_up is not None and state.is_finished:
                done = self._fetch(conn, job_id)
                assert done is not None
                self._record(conn, follow_up(done))
            return True

        return self._transact(work, durable=False, patient=True)

    @staticmethod
    def _record(conn: psycopg.Connection[Any], jobs: Sequence[NewJob]) -> None:
        for new in jobs:
            conn.execute(_INSERT, new_row(new)[0])

    @staticmethod
    def _add_totals(conn: psycopg.Connection[Any], totals: list[tuple[str, str, float]]) -> None:
        with conn.cursor() as cursor:
            cursor.executemany(_TOTALS, totals)

    def _remember(
        self,
        conn: psycopg.Connection[Any],
        job: Job,
        now: float,
        outcome: str,
        error: JobError | None,
        final: JobState | None = None,
    ) -> None:
        """The ended attempt into the history (the last HISTORY_LIMIT kept) and the totals."""
        self._add_totals(conn, ended_totals(job, outcome, now, final))
        conn.execute(_ATTEMPT, attempt_params(job, now, outcome, error))
        if job.attempts > HISTORY_LIMIT:
            conn.execute(
                "DELETE FROM spoolkit_attempts WHERE job_id = %s AND seq NOT IN (SELECT seq "
                "FROM spoolkit_attempts WHERE job_id = %s ORDER BY seq DESC LIMIT %s)",
                (job.id, job.id, HISTORY_LIMIT),
            )

    def set_progress(
        self,
        job_id: str,
        progress: Progress,
        now: float,
        node: str | None = None,
        epoch: int | None = None,
    ) -> None:
        self._transact(lambda conn: conn.execute(
            "UPDATE spoolkit_jobs SET progress = %s, updated_at = %s WHERE id = %s AND state = %s "
            f"AND {pg(FENCE)}",
            (_clean(json.dumps(progress.__dict__)), now, job_id, JobState.RUNNING.value, node,
             epoch),
        ), durable=False)  # fmt: skip

    def _change(
        self,
        job_id: str,
        allowed: frozenset[JobState],
        action: str,
        sets: str,
        params: list[Any],
        follow_up: FollowUp | None = None,
    ) -> Job:
        """Update one job, locked, if its state is in ``allowed``; else a named error."""

        def work(conn: psycopg.Connection[Any]) -> Job:
            check_change(self._fetch(conn, job_id, lock=True), job_id, allowed, action)
            conn.execute(f"UPDATE spoolkit_jobs SET {pg(sets)} WHERE id = %s", [*params, job_id])
            changed = self._fetch(conn, job_id)
            assert changed is not None
            if changed.state in WAITING and changed.spool_file is None:
                conn.execute(_NOTIFY)  # queued again, parked: nodes may claim it
            if changed.state.is_finished:
                self._add_totals(conn, [(changed.task, name, value) for name, value
                                        in stats.finished_series(changed.state.value)])
                if follow_up is not None:
                    self._record(conn, follow_up(changed))
            return changed

        return self._transact(work)

    def reassign(self, job: Job, spool_file: str | None, now: float, *, requeue: bool) -> bool:
        sets = "spool_file = %s, updated_at = %s"
        params: list[Any] = [spool_file, now]
        if requeue:
            sets += ", state = %s, runner = NULL, runner_pid = NULL"
            params.append(JobState.QUEUED.value)
        if spool_file is None:
            sets += ", node = NULL, node_epoch = NULL"  # parked: any node may claim it
        return self._transact(lambda conn: conn.execute(
            f"UPDATE spoolkit_jobs SET {sets} WHERE id = %s AND state = %s "
            "AND spool_file IS NOT DISTINCT FROM %s AND runner_pid IS NOT DISTINCT FROM %s",
            [*params, job.id, job.state.value, job.spool_file, job.runner_pid],
        ).rowcount == 1, durable=False)  # fmt: skip

    def purge(
        self,
        finished_before: float,
        limit: int = 1000,
        states: Collection[JobState] = FINISHED,
    ) -> int:
        if not set(states) <= FINISHED:
            raise ValueError("only finished jobs can be purged")
        marks, finished = state_marks(states)

        def work(conn: psycopg.Connection[Any]) -> int:
            doomed = [row[0] for row in conn.execute(
                pg(f"SELECT id FROM spoolkit_jobs WHERE state IN ({marks}) AND finished_at < ? "
                   "LIMIT ? FOR UPDATE SKIP LOCKED"),
                [*finished, finished_before, limit],
            )]  # fmt: skip
            if not doomed:
                return 0
            conn.execute("DELETE FROM spoolkit_attempts WHERE job_id = ANY(%s)", (doomed,))
            return conn.execute("DELETE FROM spoolkit_jobs WHERE id = ANY(%s)", (doomed,)).rowcount

        return self._transact(work, durable=False)

    # -- periodic schedules ----------------------------------------------------------

    def advance_slot(self, schedule: str, slot: float, now: float, job: NewJob | None) -> bool:
        """As SQLiteStore.advance_slot: the conditional upsert waits for a competing
        housekeeper's transaction, then sees its slot, so exactly one fires it."""

        def work(conn: psycopg.Connection[Any]) -> bool:
            moved = conn.execute(
                "INSERT INTO spoolkit_periodic AS p (name, last_slot, fired_slot, fired_job, "
                "updated_at) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
                "last_slot = excluded.last_slot, updated_at = excluded.updated_at, "
                "fired_slot = COALESCE(excluded.fired_slot, p.fired_slot), "
                "fired_job = COALESCE(excluded.fired_job, p.fired_job) "
                "WHERE p.last_slot < excluded.last_slot",
                (schedule, slot, None if job is None else slot,
                 None if job is None else job.id, now),
            ).rowcount  # fmt: skip
            if moved != 1:
                return False
            if job is not None:
                conn.execute(_INSERT, new_row(job)[0])
                if job.spool_file is None:
                    conn.execute(_NOTIFY)
                conn.execute(
                    "UPDATE spoolkit_jobs SET periodic_slot = %s WHERE id = %s", (slot, job.id)
                )
            return True

        return self._transact(work)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
