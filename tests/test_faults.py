"""Trying to break "a job answered 202 runs, or ends visibly failed" with real faults.

Short versions run in `make test`; `make soak` (SPOOLKIT_SOAK=1) runs the
long ones and appends a summary line per test to $SPOOLKIT_REPORT (reporting.py).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import pickle
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolkit.spoolfile import decode_file, encode_file
from spoolkit.states import FINISHED

from .reporting import SOAK, report
from .support import UwsgiServer, descendants, fill, wait_for

pytestmark = pytest.mark.e2e

FINAL = {state.value for state in FINISHED}


def _jobs_once_succeeded(
    server: UwsgiServer, ids: list[str], timeout: float
) -> dict[str, dict[str, Any]]:
    """Wait up to ``timeout`` s for every job in ``ids`` to succeed, then return each job
    as the API shows it (whether it succeeded or not: the caller counts)."""
    wanted = set(ids)

    def done() -> bool:
        if len(wanted) <= 1000:
            jobs = server.get("/jobs?limit=1000&state=succeeded").json()["jobs"]
            return wanted <= {job["id"] for job in jobs}
        return server.get("/healthz").json()["jobs"]["succeeded"] >= len(wanted)

    with contextlib.suppress(TimeoutError):
        wait_for(done, timeout, f"{len(ids)} jobs to succeed", interval=0.5)
    return {job_id: server.job(job_id) for job_id in ids}


def _lost(jobs: dict[str, dict[str, Any]]) -> set[str]:
    """Accepted jobs that never reached a final state."""
    return {job_id for job_id, job in jobs.items() if job["state"] not in FINAL}


def _not_succeeded(jobs: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {job_id: job["state"] for job_id, job in jobs.items() if job["state"] != "succeeded"}


# -- torn spool files ------------------------------------------------------------------------


def _offsets(length: int, packet_end: int) -> list[int]:
    """Every offset in header and packet; in a body its edges and a sample of the
    middle (every 8th byte in a soak run, 24 otherwise)."""
    if length <= packet_end + 64:
        return list(range(length))
    body = range(packet_end + 32, length - 32)
    middle = body[::8] if SOAK else random.Random(7).sample(body, 24)
    return sorted({*range(packet_end + 32), *middle, *range(length - 32, length)})


@pytest.mark.parametrize("payload", ["small", "body"])
def test_spool_file_torn_at_every_offset_is_recovered(tmp_path: Path, payload: str) -> None:
    """A power cut can leave any prefix of a spool file (no fsync, ext4 without journal)."""
    arg = "x" * (40_000 if payload == "body" else 10)
    server = UwsgiServer(tmp_path, SPOOLKIT_SPOOL_AHEAD="3600")  # every job gets its file at once
    with server:
        probe = server.enqueue("echo", arg, countdown=600)
        probe_file = server.spool_file_of(probe)
        assert probe_file is not None
        data = probe_file.read_bytes()
        packet_end = 4 + int.from_bytes(data[1:3], "little")
        offsets = _offsets(len(data), packet_end)
        # Due once the last is queued (about 5 ms each), not before the "power cut".
        countdown = 2 + 0.01 * len(offsets)
        ids = [server.enqueue("echo", arg, countdown=countdown) for _ in offsets]
        server.kill_tree()  # the power cut
    files = server.spool_files_by_job()
    for job_id, offset in zip(ids, offsets, strict=True):
        path = files[job_id]
        mtime = path.stat().st_mtime
        assert path.stat().st_size == len(data)
        path.write_bytes(path.read_bytes()[:offset])
        os.utime(path, (mtime, mtime))
    with server:
        pids = set(server.spooler_pids())
        jobs = _jobs_once_succeeded(server, ids, timeout=120 + countdown)
        lost, spooler_deaths = _lost(jobs), server.spooler_deaths()
        quarantined = len(list((server.spool_dir / "quarantine").iterdir()))
        report(f"torn-{payload}", files=len(ids), length=len(data), quarantined=quarantined,
               lost=len(lost), spooler_deaths=spooler_deaths)  # fmt: skip
        assert not lost, f"{len(lost)} jobs never finished: {sorted(lost)[:10]}"
        assert not _not_succeeded(jobs)
        assert spooler_deaths == 0
        assert set(server.spooler_pids()) == pids, "a spooler died"
        assert "something horrible happened to the spooler" not in server.log_text()
        assert server.spool_files() == [server.spool_file_of(probe)]
        assert {job["attempts"] for job in jobs.values()} == {1}


# -- kill storm ------------------------------------------------------------------------------


@contextlib.contextmanager
def killing_spoolers(server: UwsgiServer, every: float) -> Iterator[list[int]]:
    """SIGKILL a random spooler every ``every`` seconds until the block ends."""
    killed: list[int] = []
    stop = threading.Event()
    rng = random.Random(1)

    def storm() -> None:
        while not stop.wait(every):
            pids = server.spooler_pids() if server.process else []
            if pids:
                victim = rng.choice(pids)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)

    thread = threading.Thread(target=storm, daemon=True)
    thread.start()
    try:
        yield killed
    finally:
        stop.set()
        thread.join()


def test_kill_storm_loses_nothing(tmp_path: Path) -> None:
    count = 2000 if SOAK else 400
    with UwsgiServer(tmp_path) as server:
        ids = [server.enqueue("storm", "storm", 0.01) for _ in range(count)]
        with killing_spoolers(server, every=0.15) as killed:
            # Halfway, the master dies too (kill -9); like systemd's cgroup
            # kill, whatever it leaves behind goes, then it starts again.
            wait_for(lambda: server.get("/healthz").json()["jobs"]["succeeded"] >= count // 2,
                     120, "half the jobs")  # fmt: skip
            family = descendants(server.pid)
            os.kill(server.pid, signal.SIGKILL)
            assert server.process is not None
            server.process.wait(10)
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            server.process = None
            server.start()
            jobs = _jobs_once_succeeded(server, ids, timeout=300)
        lost = _lost(jobs)
        runs = collections.Counter(json.loads(line)["job"] for line in
                                   (server.records / "storm.jsonl").read_text().splitlines())  # fmt: skip
        duplicates = sum(n - 1 for n in runs.values())
        attempts = collections.Counter(job["attempts"] for job in jobs.values())
        report("kill-storm", jobs=count, spooler_kills=len(killed), master_kills=1,
               lost=len(lost), never_ran=len(set(ids) - set(runs)), duplicate_runs=duplicates,
               attempts=dict(sorted(attempts.items())))  # fmt: skip
        assert not lost, f"{len(lost)} jobs never finished: {sorted(lost)[:10]}"
        assert not _not_succeeded(jobs)
        assert server.get("/jobs?state=running").json()["jobs"] == []
        assert server.get("/jobs?state=failed").json()["jobs"] == []
        assert set(runs) == set(ids)
        assert duplicates <= len(killed) + 2 * 2  # one per kill, plus the master's spoolers


# -- disk full -------------------------------------------------------------------------------


def test_disk_full_answers_507_leaves_nothing_half_done_and_recovers(
    tmp_path: Path, small_disk: Path
) -> None:
    with UwsgiServer(tmp_path / "srv", SPOOLKIT_SPOOL_DIR=str(small_disk / "jobs")) as server:
        waiting = server.enqueue("mark", "before-full", countdown=2)
        filler = fill(small_disk)
        before = server.get("/jobs?limit=1000").json()["jobs"]
        refused = [
            server.post("/jobs", {"task": "tests.jobs.echo", "args": ["x" * 20_000]})
            for _ in range(5)
        ]
        assert {answer.status for answer in refused} == {507}
        assert all("No space left" in answer.json()["error"] for answer in refused)
        assert refused[0].headers["Retry-After"] == "30"
        assert server.get("/jobs?limit=1000").json()["jobs"] == before  # no orphan row
        # No half-written file: only the job accepted before the disk filled (if not run yet).
        files = set(server.spool_files_by_job())
        assert files <= {waiting}
        # What was accepted before the disk filled still runs (running needs no space).
        assert server.wait_job(waiting, timeout=20)["state"] == "succeeded"
        filler.unlink()
        assert server.wait_job(server.enqueue("echo", "x" * 20_000))["state"] == "succeeded"


# -- store trouble ---------------------------------------------------------------------------


def test_store_locked_while_jobs_run(tmp_path: Path) -> None:
    with UwsgiServer(tmp_path, SPOOLKIT_STORE_TIMEOUT="0.5") as server:
        pids = set(server.spooler_pids())
        running = [server.enqueue("sleeper", f"locked-{i}", 1.0) for i in range(2)]
        for job_id in running:
            server.wait_job(job_id, states={"running"})
        waiting = server.enqueue("mark", "locked-waiting", countdown=1.5)
        lock = sqlite3.connect(server.database, timeout=5, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            refused = server.post("/jobs", {"task": "tests.jobs.add", "args": [1, 1]})
            assert refused.status == 503
            assert "job store unavailable" in refused.json()["error"]
            assert refused.headers["Retry-After"] == "5"
            # The running jobs end while the store is locked, and keep trying to record it.
            wait_for(lambda: len(server.records_of("locked-0")) == 2, 10, "job 0 to end")
            time.sleep(
                max(0.0, 4 - (time.monotonic() - started))
            )  # hold the lock 4 s: the fault itself
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        for job_id in [*running, waiting]:
            job = server.wait_job(job_id, timeout=30)
            assert job["state"] == "succeeded", job
            assert job["attempts"] == 1
        assert len(server.records_of("locked-waiting")) == 1
        assert set(server.spooler_pids()) == pids, "a spooler died"
        assert "job store unavailable, will keep trying" in server.log_text()
        assert server.get("/healthz").status == 200


# -- hostile spool files ---------------------------------------------------------------------


def _mutations(seed: bytes, rng: random.Random, count: int, framed: bool) -> Iterator[bytes]:
    """Random edits of a real spool file. ``framed`` keeps the header and every
    length field valid (only bytes inside values change): what reaches Python."""
    packet, body = decode_file(seed)
    for _ in range(count):
        if framed:
            entries = {}
            for key, value in packet.items():
                mutable = bytearray(value)
                for _ in range(rng.randint(0, 3)):
                    if mutable:
                        mutable[rng.randrange(len(mutable))] = rng.randrange(256)
                entries[key] = bytes(mutable)
            yield encode_file(entries, body)
            continue
        data = bytearray(seed)
        for _ in range(rng.randint(1, 8)):
            choice = rng.random()
            position = rng.randrange(len(data)) if data else 0
            if choice < 0.4 and data:
                data[position] = rng.randrange(256)
            elif choice < 0.6:
                data.insert(position, rng.randrange(256))
            elif choice < 0.8 and data:
                del data[position]
            else:
                data = data[: rng.randrange(len(data) + 1)]
        yield bytes(data)


def _attacks(seed: bytes, canary: Path) -> list[bytes]:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {canary}",))

    evil = pickle.dumps(Evil())
    packet, body = decode_file(seed)
    return [
        encode_file({**packet, b"payload": evil}, body),  # a pickle where JSON belongs
        encode_file({**packet, b"task": b"os.system"}, body),  # a task name that is not registered
        encode_file({**packet, b"job": b"../../../../etc/passwd"}, body),
        evil,  # not even a spool file
    ]


def _drop(server: UwsgiServer, files: list[bytes]) -> None:
    for i, data in enumerate(files):
        server.drop_spool_file(f"uwsgi_spoolfile_on_fuzz_{i:05d}", data)


def _fuzz_files_left(server: UwsgiServer) -> list[Path]:
    return [path for path in server.spool_files() if "fuzz" in path.name]


def test_hostile_spool_files_never_run_or_crash_a_spooler(tmp_path: Path) -> None:
    count = 2000 if SOAK else 200
    canary = tmp_path / "pwned"
    rng = random.Random(3)
    server = UwsgiServer(tmp_path / "srv", SPOOLKIT_SPOOL_AHEAD="3600")
    with server:
        # A task that records every run: a hostile file that ran would leave a line.
        seed_id = server.enqueue("mark", "hostile-seed", countdown=600)
        seed_file = server.spool_file_of(seed_id)
        assert seed_file is not None
        seed = seed_file.read_bytes()
        # 1. Well-framed files (what reaches the kit's decoder) into a live spool.
        framed = [*_attacks(seed, canary)[:3], *_mutations(seed, rng, count, framed=True)]
        pids = set(server.spooler_pids())
        _drop(server, framed)
        wait_for(lambda: not _fuzz_files_left(server), 120, "every framed hostile file")
        spooler_deaths = server.spooler_deaths()
        assert set(server.spooler_pids()) == pids, "a spooler died"
    # 2. Any bytes at all, present when the server starts (as after a crash).
    anything = [_attacks(seed, canary)[3], *_mutations(seed, rng, count, framed=False)]
    _drop(server, anything)
    with server:
        pids = set(server.spooler_pids())
        wait_for(lambda: not _fuzz_files_left(server), 120, "every hostile file")
        spooler_deaths += server.spooler_deaths()
        assert set(server.spooler_pids()) == pids, "a spooler died"
        assert "something horrible happened to the spooler" not in server.log_text()
        assert server.get("/healthz").status == 200
        seed_job = server.job(seed_id)
        assert server.wait_job(server.enqueue("add", 2, 2))["result"] == 4
        quarantined = len(list((server.spool_dir / "quarantine").iterdir()))
    # Runs of the seed's task under any tag a mutation gave it, the seed's own
    # attempts, and the pickle's canary file: every trace a hostile file that ran leaves.
    runs = [
        line for path in server.records.rglob("*.jsonl") for line in path.read_text().splitlines()
    ]
    executed = len(runs) + seed_job["attempts"] + canary.exists()
    report("hostile-spool-files", files=len(framed) + len(anything), quarantined=quarantined,
           dropped=len(framed) + len(anything) - quarantined, executed=executed,
           spooler_deaths=spooler_deaths)  # fmt: skip
    assert executed == 0, f"{runs[:5]}, seed {seed_job}, canary {canary.exists()}"
    assert not canary.exists()
    assert seed_job["state"] == "scheduled"  # untouched by look-alike files
    assert spooler_deaths == 0


def test_torn_foreign_file_in_a_live_spool_costs_at_most_a_respawn(tmp_path: Path) -> None:
    """uWSGI's own race (core/spooler.c): a spooler that reads a torn file another
    writer dropped may ``exit(1)`` on it. Each torn file costs at most that one
    respawn, the master always respawns, and the jobs queued alongside all run."""
    rng = random.Random(5)
    with UwsgiServer(tmp_path, SPOOLKIT_SPOOL_AHEAD="3600") as server:
        seed_id = server.enqueue("echo", "seed", countdown=600)
        seed_file = server.spool_file_of(seed_id)
        assert seed_file is not None
        seed = seed_file.read_bytes()
        torn = [seed[: rng.randrange(4, len(seed))] for _ in range(100)]
        first = server.spooler_spawns()
        healthy = [server.enqueue("add", i, i) for i in range(20)]
        _drop(server, torn)
        wait_for(lambda: not _fuzz_files_left(server), 60, "every torn file")
        jobs = _jobs_once_succeeded(server, healthy, timeout=30)
        wait_for(lambda: server.get("/healthz").status == 200, 30, "spoolers back")
        # The race's own exit line, written by each spooler it kills.
        races = server.log_since_start().count("something horrible happened to the spooler")
        wait_for(lambda: server.spooler_deaths() >= races, 30, "the master to respawn them")
        respawns = server.spooler_deaths()
        spawned = server.spooler_spawns()
        lost = _lost(jobs)
        report("torn-foreign-live", files=len(torn), spooler_respawns=respawns,
               lost=len(lost))  # fmt: skip
        assert not lost, f"{len(lost)} jobs never finished: {sorted(lost)[:10]}"
        assert not _not_succeeded(jobs)
        assert [job["result"] for job in jobs.values()] == [2 * i for i in range(len(healthy))]
        assert respawns <= len(torn)  # at most one per torn file
        assert respawns == races, "a spooler died of something other than uWSGI's race"
        assert len(spawned) == len(first) + respawns, f"not every dead spooler came back: {spawned}"
        assert server.job(seed_id)["state"] == "scheduled"  # the file torn copies were made of
        assert server.spool_file_of(seed_id) == seed_file
