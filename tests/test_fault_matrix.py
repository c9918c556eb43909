"""The fault matrix: each fault against each phase of a job's life, each cell checked
against the promise.

The promise: a job answered ``202`` runs (ends ``succeeded``) or ends in a visible
``failed`` state; a job answered anything else never runs and leaves no row; no task
runs more often than at-least-once allows (at most its attempts count, never again
once succeeded); the server comes back by itself once the fault is removed; and
``/healthz`` says ``503`` while the kit refuses jobs, ``200`` after.

Phases (what is in flight when the fault hits): ``enqueue`` (POSTs during the fault),
``claim`` (jobs queued with a countdown become due during it), ``outcome`` (jobs
running when it hits record their outcome during it), ``retry`` (``POST
/jobs/<id>/retry`` of a failed job during it) and ``cancel`` (``DELETE`` of a scheduled
job during it: ``200`` means it never runs, an error means it still runs).

A read-only store is made with the immutable flag (``chattr +i``) on the store's
directory, database and WAL, not with a read-only mount: Linux refuses to remount
read-only (bind or tmpfs: ``EBUSY``) a mount on which a process holds files open for
writing, as the server's SQLite connections do; a read-only bind mounted over the
directory once they are open leaves their files writable, and cannot be unmounted
while connections opened through it live. The flag does to SQLite what a filesystem
turned read-only does: writes through open files fail (``EPERM``, SQLite's "disk I/O
error") and a file opened anew opens read-only. SQLite's shared-memory index
(``-shm``) stays writable: it is mapped into memory, and writing an immutable
mapping kills the process with ``SIGBUS``, which is another fault.

Every cell starts its own server (0.3 s, and 1 s to stop): a cell that breaks one
cannot fail the next, and each fault meets a server in the same state, up for one
housekeeping pass. ``make soak`` (SPOOLKIT_SOAK=1) runs more jobs per cell.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from spoolkit.states import FINISHED

from .reporting import SOAK, report
from .support import UwsgiServer, alive, fill, wait_for

pytestmark = pytest.mark.e2e

FINAL = {state.value for state in FINISHED}
PHASES = ("enqueue", "claim", "outcome", "retry", "cancel")
JOBS = 20 if SOAK else 3  # jobs in flight per cell (claim, retry, cancel)
BURST = 40 if SOAK else 6  # POSTs during the fault (enqueue)
SPOOLERS = 4 if SOAK else 2  # jobs running when the fault hits (outcome)
PADDING = "x" * 8000  # enqueued arguments: two pages of WAL, two blocks of spool
STORE_TIMEOUT = 0.5  # SPOOLKIT_STORE_TIMEOUT for the locked store
RUN_SECONDS = 1.0  # how long a job of the outcome phase runs
CLAIM_COUNTDOWN = 2.0
WAIT = 20.0  # seconds for the server to come back, and for each job to finish, after the fault


# -- faults ----------------------------------------------------------------------------------


class Fault:
    """A fault a cell applies, then removes. ``settings`` place the server's files."""

    name: ClassVar[str]
    uses_disk: ClassVar[bool] = False
    #: Gone as soon as applied (the kit heals it): nothing to hold.
    instant: ClassVar[bool] = False
    #: Log lines showing that the fault bit.
    signature: ClassVar[str]
    #: How long a request may take while the fault holds.
    request_seconds: ClassVar[float] = 0.1

    def __init__(self, server: UwsgiServer, disk: Path | None) -> None:
        self.server = server
        self.disk = disk
        self.killed: list[int] = []  # spoolers this fault SIGKILLed

    @staticmethod
    def settings(base: Path, disk: Path | None) -> dict[str, str]:
        return {}

    def apply(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        """Undo the fault; a second call does nothing."""

    def hits(self) -> int:
        return len(re.findall(self.signature, self.server.log_since_start()))


class DiskFull(Fault):
    uses_disk = True
    signature = r"No space left on device|database or disk is full"
    filler: Path | None = None

    def apply(self) -> None:
        assert self.disk is not None
        self.filler = fill(self.disk)

    def remove(self) -> None:
        if self.filler is not None:
            self.filler.unlink(missing_ok=True)
            self.filler = None


class SpoolFull(DiskFull):
    name = "spool_full"

    @staticmethod
    def settings(base: Path, disk: Path | None) -> dict[str, str]:
        assert disk is not None
        return {"SPOOLKIT_SPOOL_DIR": str(disk / "jobs")}


class StoreFull(DiskFull):
    name = "store_full"

    @staticmethod
    def settings(base: Path, disk: Path | None) -> dict[str, str]:
        assert disk is not None
        return {"SPOOLKIT_DATABASE": str(disk / "spoolkit.db")}


class SharedFull(DiskFull):
    name = "shared_full"

    @staticmethod
    def settings(base: Path, disk: Path | None) -> dict[str, str]:
        assert disk is not None
        return {
            "SPOOLKIT_SPOOL_DIR": str(disk / "jobs"),
            "SPOOLKIT_DATABASE": str(disk / "spoolkit.db"),
        }


def chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True)


class StoreReadOnly(Fault):
    """The store's directory, database and WAL immutable (see the module's docstring)."""

    name = "store_readonly"
    signature = r"readonly database|disk I/O error"

    def __init__(self, server: UwsgiServer, disk: Path | None) -> None:
        super().__init__(server, disk)
        self.frozen: list[Path] = []

    @staticmethod
    def settings(base: Path, disk: Path | None) -> dict[str, str]:
        return {"SPOOLKIT_DATABASE": str(base / "store" / "spoolkit.db")}

    def apply(self) -> None:
        probe = self.server.base / "immutable-probe"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            chattr("+i", probe)
            try:
                os.write(fd, b"x")
            except PermissionError:
                pass
            else:
                pytest.fail(f"{probe.parent}'s filesystem writes open immutable files "
                            "(tmpfs does): run the tests with /tmp on ext4 or xfs")  # fmt: skip
            finally:
                chattr("-i", probe)
        finally:
            os.close(fd)
            probe.unlink()
        database = Path(self.server.env()["SPOOLKIT_DATABASE"])
        candidates = (database.parent, database, Path(f"{database}-wal"))
        self.frozen = [path for path in candidates if path.exists()]
        chattr("+i", *self.frozen)

    def remove(self) -> None:
        if self.frozen:
            chattr("-i", *self.frozen)
            self.frozen = []


class StoreLocked(Fault):
    """SQLite's write lock held from outside the server, longer than its store timeout."""

    name = "store_locked"
    signature = r"database is locked|job store unavailable"
    request_seconds = STORE_TIMEOUT + 0.1
    lock: sqlite3.Connection | None = None

    @staticmethod
    def settings(base: Path, disk: Path | None) -> dict[str, str]:
        return {"SPOOLKIT_STORE_TIMEOUT": str(STORE_TIMEOUT)}

    def apply(self) -> None:
        self.lock = sqlite3.connect(self.server.database, timeout=5, isolation_level=None)
        self.lock.execute("BEGIN IMMEDIATE")

    def remove(self) -> None:
        if self.lock is not None:
            self.lock.execute("ROLLBACK")
            self.lock.close()
            self.lock = None


class SpoolRemoved(Fault):
    """``rm -r`` of the spool directory; the housekeeper makes it again within a second."""

    name = "spool_removed"
    instant = True
    signature = r"spool directory .* is gone"

    def apply(self) -> None:
        for _ in range(5):  # a file being written as it goes makes rmtree fail: again
            try:
                shutil.rmtree(self.server.spool_dir)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)
        raise AssertionError(f"could not remove {self.server.spool_dir}")

    def remove(self) -> None:
        wait_for(self.server.spool_dir.is_dir, 10, "the kit to make the spool directory again")


class SpoolerKilled(Fault):
    """SIGKILL every spooler, again every 0.4 s until removed (the master respawns them)."""

    name = "spooler_killed"
    instant = True
    signature = r"OOOPS the spooler is no more"
    EVERY = 0.4

    def __init__(self, server: UwsgiServer, disk: Path | None) -> None:
        super().__init__(server, disk)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _kill_all(self) -> None:
        # The stats list a killed spooler until the master reaps it: only live ones count.
        for pid in filter(alive, self.server.spooler_pids()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)

    def apply(self) -> None:
        self._kill_all()
        self.thread = threading.Thread(target=self._storm, daemon=True)
        self.thread.start()

    def _storm(self) -> None:
        while not self.stop.wait(self.EVERY):
            self._kill_all()

    def remove(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None


FAULTS: dict[str, type[Fault]] = {
    fault.name: fault
    for fault in (
        SpoolFull,
        StoreFull,
        SharedFull,
        StoreReadOnly,
        SpoolRemoved,
        StoreLocked,
        SpoolerKilled,
    )
}
NOT_APPLICABLE = {
    ("spooler_killed", "enqueue"): "queueing writes a row and a file in the web worker; "
    "no spooler takes part (a dead one is woken by its respawn): plain enqueue",
    ("spooler_killed", "retry"): "a manual retry is a web worker's row and file, like "
    "enqueue: no spooler takes part",
    ("spooler_killed", "cancel"): "a cancel is a web worker's row change; no spooler takes part",
}
CELLS = [(f, p) for f in FAULTS for p in PHASES if (f, p) not in NOT_APPLICABLE]


# -- what a cell did -------------------------------------------------------------------------


@dataclass
class Cell:
    """The requests a cell made, by answer, and what it saw of /healthz meanwhile."""

    server: UwsgiServer
    fault: Fault
    accepted: dict[str, float] = field(default_factory=dict)  # job id -> its (last) 202's request
    tags: dict[str, str] = field(default_factory=dict)  # job id -> tag its runs record under
    refused: list[str] = field(default_factory=list)  # tags of POSTs refused
    retry_refused: dict[str, float] = field(default_factory=dict)  # job id -> refused retry
    cancelled: list[str] = field(default_factory=list)  # answered 200 to DELETE
    cancel_refused: list[str] = field(default_factory=list)
    answers: collections.Counter[int] = field(default_factory=collections.Counter)
    health: list[int] = field(default_factory=list)
    not_before: float = 0.0  # judge no sooner: cancelled jobs' due time has passed
    probes: list[str] = field(default_factory=list)  # jobs accepted after the fault
    last_refusal: str = ""

    def create(
        self, tag: str, task: str, *args: Any, during: bool = True, **options: Any
    ) -> str | None:
        """POST a job whose runs record under ``tag``; its id if answered 202. Only
        answers ``during`` the fault count as the cell's answers."""
        asked = time.time()
        body = {"task": f"tests.jobs.{task}", "args": [tag, *args], **options}
        answer = self.server.post("/jobs", body)
        if during:
            self.answers[answer.status] += 1
        if answer.status != 202:
            self.refused.append(tag)
            self.last_refusal = f"{answer!r}"
            return None
        job_id = str(answer.json()["id"])
        self.accepted[job_id], self.tags[job_id] = asked, tag
        return job_id

    def setup(self, tag: str, task: str, *args: Any, **options: Any) -> str:
        """A job queued before the fault: it must be accepted."""
        job_id = self.create(tag, task, *args, during=False, **options)
        assert job_id is not None, f"{tag} refused before the fault: {self.last_refusal}"
        return job_id

    def retry(self, job_id: str) -> None:
        asked = time.time()
        answer = self.server.post(f"/jobs/{job_id}/retry")
        self.answers[answer.status] += 1
        if answer.status == 202:
            self.accepted[job_id] = asked  # runs count from the retry
        else:
            self.retry_refused[job_id] = asked

    def cancel(self, job_id: str) -> None:
        answer = self.server.request("DELETE", f"/jobs/{job_id}")
        self.answers[answer.status] += 1
        (self.cancelled if answer.status == 200 else self.cancel_refused).append(job_id)

    def sample_health(self) -> None:
        self.health.append(self.server.get("/healthz").status)


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def _hold(cell: Cell, since: float, seconds: float) -> None:
    """Keep a lasting fault on until ``seconds`` after ``since``, then remove it."""
    if not cell.fault.instant:
        _sleep_until(since + seconds)
    cell.fault.remove()


# -- phases ----------------------------------------------------------------------------------


def phase_enqueue(cell: Cell) -> None:
    cell.fault.apply()
    applied = time.time()
    cell.sample_health()
    for i in range(BURST):
        cell.create(f"enqueue-{i}", "mark_padded", PADDING)
    cell.sample_health()
    _hold(cell, applied, 1.0)


def phase_claim(cell: Cell) -> None:
    # One due moment for all, a whole second (uWSGI's "at" is whole seconds), however
    # long queueing them takes on a loaded machine.
    due = math.ceil(time.time() + CLAIM_COUNTDOWN)
    ids = [cell.setup(f"claim-{i}", "mark", at=due) for i in range(JOBS)]
    assert max(cell.accepted.values()) < due - 0.5, "queueing took too long to test the claim"
    _sleep_until(due - 0.5)
    assert all(cell.server.job(job_id)["state"] == "scheduled" for job_id in ids)
    cell.fault.apply()
    cell.sample_health()
    # Spoolers scan once a second: every due file is tried while the fault holds.
    _sleep_until(due + 2.5)
    cell.sample_health()
    cell.fault.remove()


def phase_outcome(cell: Cell) -> None:
    ids = [cell.setup(f"outcome-{i}", "sleeper", RUN_SECONDS) for i in range(SPOOLERS)]
    for job_id in ids:
        cell.server.wait_job(job_id, timeout=30, states={"running"})
    cell.fault.apply()
    cell.sample_health()
    if cell.fault.instant:
        time.sleep(0.5)  # long enough to kill every run, not their retries
    else:
        # Hold until every run has ended, and a second more: each outcome is written
        # (and fails, or waits) while the fault is on.
        def ended() -> bool:
            return all(any(r.get("event") == "end" for r in cell.server.records_of(cell.tags[job_id]))
                       for job_id in ids)  # fmt: skip

        with contextlib.suppress(TimeoutError):
            wait_for(ended, RUN_SECONDS + 5, "the running jobs to end")
        time.sleep(1.0)
    cell.sample_health()
    cell.fault.remove()


def phase_retry(cell: Cell) -> None:
    ids = [cell.setup(f"retry-{i}", "flaky", 1, max_attempts=1) for i in range(JOBS)]
    for job_id in ids:
        assert cell.server.wait_job(job_id, timeout=30)["state"] == "failed"
    cell.fault.apply()
    applied = time.time()
    cell.sample_health()
    for job_id in ids:
        cell.retry(job_id)
    cell.sample_health()
    _hold(cell, applied, 1.0)


def phase_cancel(cell: Cell) -> None:
    # Still scheduled after every DELETE (and two /healthz), however long each waits.
    countdown = 2.0 + (JOBS + 2) * cell.fault.request_seconds
    ids = [cell.setup(f"cancel-{i}", "mark", countdown=countdown) for i in range(JOBS)]
    cell.not_before = math.ceil(max(cell.accepted.values()) + countdown) + 1.5
    cell.fault.apply()
    applied = time.time()
    cell.sample_health()
    for job_id in ids:
        cell.cancel(job_id)
    cell.sample_health()
    _hold(cell, applied, 1.0)


PHASE_RUNS = {"enqueue": phase_enqueue, "claim": phase_claim, "outcome": phase_outcome,
              "retry": phase_retry, "cancel": phase_cancel}  # fmt: skip


# -- judging a cell --------------------------------------------------------------------------


def _moment(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else math.inf


def _recovered(cell: Cell) -> tuple[bool, str]:
    """Does the server come back by itself? A new job is accepted (asked again for up to
    ``WAIT`` s) and succeeds, and /healthz says 200 four times running (every web worker)."""
    server, tries, streak = cell.server, itertools.count(), [0]

    def steady() -> bool:
        streak[0] = streak[0] + 1 if server.get("/healthz").status == 200 else 0
        return streak[0] >= 4

    try:
        probe = wait_for(lambda: cell.create(f"probe-{next(tries)}", "mark", during=False),
                         WAIT, "a new job to be accepted", interval=0.25)  # fmt: skip
        cell.probes.append(probe)
        job = server.wait_job(probe, timeout=WAIT)
        wait_for(steady, WAIT, "/healthz to say 200 four times running", interval=0.1)
    except TimeoutError as exc:
        health = server.get("/healthz").json()
        return False, f"{exc}; last refusal {cell.last_refusal}; /healthz {health}"
    return job["state"] == "succeeded", f"probe {job['state']}"


def _housekeeper_age(server: UwsgiServer) -> float | None:
    """When the housekeeper last finished a pass (unix time), or ``None`` before its first."""
    age = server.get("/healthz").json().get("housekeeper", {}).get("last_run_age")
    return None if age is None else time.time() - age


def _housekeeper_pass(server: UwsgiServer) -> None:
    """Wait for a whole housekeeping pass from now (it would have spooled again anything
    recorded but missing its file)."""
    start = time.time()
    with contextlib.suppress(TimeoutError):  # a housekeeper that never passes: judged below
        wait_for(lambda: (_housekeeper_age(server) or 0) > start, 30, "a pass", interval=0.1)


def judge(cell: Cell) -> dict[str, Any]:
    """Figures of a cell, each counted from what the server shows and the runs recorded."""
    server, fault = cell.server, cell.fault
    recovered, recovery = _recovered(cell)

    def finished() -> bool:
        return all(server.job(job_id)["state"] in FINAL for job_id in cell.accepted)

    with contextlib.suppress(TimeoutError):
        wait_for(finished, WAIT, "every accepted job to finish", interval=0.2)
    _sleep_until(cell.not_before)
    time.sleep(1.0)  # a spooler scan: a file left behind would run now
    _housekeeper_pass(server)
    jobs = {job_id: server.job(job_id) for job_id in cell.accepted}
    rows = {job["id"] for job in server.get("/jobs?limit=1000").json()["jobs"]}

    def runs(job_id: str, since: float) -> list[dict[str, Any]]:
        return [r for r in server.records_of(cell.tags[job_id])
                if r.get("event") != "end" and r["time"] >= since]  # fmt: skip

    def killed_run(job_id: str, run: dict[str, Any]) -> bool:
        """A run the fault killed: its spooler was SIGKILLed and it never ended."""
        ended = {r["pid"] for r in server.records_of(cell.tags[job_id]) if r.get("event") == "end"}
        return run["pid"] in fault.killed and run["pid"] not in ended

    def repeated(job_id: str) -> bool:
        """Ran again after a run the fault did not kill: more than at-least-once allows."""
        earlier = runs(job_id, cell.accepted[job_id])[:-1]
        return any(not killed_run(job_id, run) for run in earlier)

    lost = [job_id for job_id, job in jobs.items() if job["state"] not in FINAL]
    ran_refused = [tag for tag in cell.refused if server.records_of(tag)] + [
        job_id for job_id, asked in cell.retry_refused.items()
        if runs(job_id, asked) or jobs[job_id]["state"] != "failed"
    ]  # fmt: skip
    succeeded = [job_id for job_id, job in jobs.items() if job["state"] == "succeeded"]
    duplicates = [job_id for job_id in succeeded if repeated(job_id)]
    over_attempts = [job_id for job_id, job in jobs.items()
                     if len(runs(job_id, cell.accepted[job_id])) > job["attempts"]]  # fmt: skip
    ran_after_success = [job_id for job_id in succeeded
                         if runs(job_id, _moment(jobs[job_id]["finished_at"]))]  # fmt: skip
    ran_cancelled = [job_id for job_id in cell.cancelled
                     if runs(job_id, 0) or jobs[job_id]["state"] != "cancelled"]  # fmt: skip
    cancel_refused_unrun = [job_id for job_id in cell.cancel_refused
                            if jobs[job_id]["state"] != "succeeded"]  # fmt: skip
    refusals = sum(n for status, n in cell.answers.items() if not 200 <= status < 300)
    return {
        "accepted": len(cell.accepted) - len(cell.probes),
        "refused": refusals,
        "answers": {str(status): n for status, n in sorted(cell.answers.items())},
        "ran": sum(len(runs(job_id, 0)) for job_id in cell.accepted),
        "succeeded": len(succeeded),
        "failed": sum(job["state"] == "failed" for job in jobs.values()),
        "cancelled": len(cell.cancelled),
        "lost": len(lost),
        "ran_refused": len(ran_refused),
        "orphan_rows": len(rows - set(cell.accepted)),
        "duplicates": len(duplicates),
        "over_attempts": len(over_attempts),
        "ran_after_success": len(ran_after_success),
        "ran_cancelled": len(ran_cancelled),
        "cancel_refused_unrun": len(cancel_refused_unrun),
        "recovered": recovered,
        "recovery": recovery,
        "health_during": cell.health,
        "fault_hits": fault.hits(),
        "spooler_kills": len(fault.killed),
        "spooler_deaths": server.spooler_deaths(),
        "details": {
            "lost": {job_id: jobs[job_id]["state"] for job_id in lost},
            "ran_refused": ran_refused,
            "duplicates": duplicates,
            "over_attempts": over_attempts,
            "ran_cancelled": ran_cancelled,
            "cancel_refused_unrun": cancel_refused_unrun,
        },
    }


# -- the matrix ------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault_name", "phase"), CELLS, ids=[f"{f}-{p}" for f, p in CELLS])
def test_fault_matrix(
    fault_name: str, phase: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    kind = FAULTS[fault_name]
    disk = request.getfixturevalue("small_disk") if kind.uses_disk else None
    base = tmp_path / "srv"
    server = UwsgiServer(base, SPOOLKIT_SPOOLERS=str(SPOOLERS), **kind.settings(base, disk))
    started = time.monotonic()
    with server:
        # Up means the housekeeper has had its first pass too: it has its store connection.
        wait_for(lambda: _housekeeper_age(server) is not None, 30, "the housekeeper's first pass")
        fault = kind(server, disk)
        cell = Cell(server, fault)
        try:
            PHASE_RUNS[phase](cell)
        finally:
            fault.remove()
        figures = judge(cell)
        server.kill_tree()  # judged: no need to wait a second for a graceful stop
    figures["seconds"] = round(time.monotonic() - started, 1)
    details = figures.pop("details")
    report("fault-matrix", fault=fault_name, phase=phase, **figures)
    odd = {status for status in cell.answers if status not in (200, 202, 503, 507)}
    assert not odd, f"answers other than 503/507 to a fault: {figures['answers']}"
    assert figures["lost"] == 0, details
    assert figures["ran_refused"] == 0, details
    assert figures["orphan_rows"] == 0, "a refused job left a row"
    assert figures["ran_cancelled"] == 0, details
    assert figures["cancel_refused_unrun"] == 0, details
    assert figures["duplicates"] == 0, details
    assert figures["over_attempts"] == 0, details
    assert figures["ran_after_success"] == 0
    assert figures["recovered"], figures["recovery"]
    if figures["refused"]:
        assert 503 in cell.health, f"/healthz said {cell.health} while jobs were refused"


def test_every_cell_is_run_or_explained() -> None:
    """The matrix is whole: each fault x phase cell runs above, or says why it cannot."""
    every = {(f, p) for f in FAULTS for p in PHASES}
    assert set(CELLS) | set(NOT_APPLICABLE) == every
    assert not set(CELLS) & set(NOT_APPLICABLE)
    for (fault, phase), reason in sorted(NOT_APPLICABLE.items()):
        report("fault-matrix", fault=fault, phase=phase, applicable=False, reason=reason)
