"""The uWSGI spooler runner under a stand-in ``uwsgi`` module: its spool directory,
the files it writes, what it does with each verdict, and its health report."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest

from spoolkit import Retry, spool
from spoolkit.dispatcher import SPOOL_OK, SPOOL_RETRY
from spoolkit.encoding import ENVELOPE_VERSION, encode_arguments
from spoolkit.registry import TaskRegistry
from spoolkit.runtime import SPOOLERS_FILE, process_start
from spoolkit.spooler import SpoolerRunner
from spoolkit.spoolfile import OWN_PREFIX, QUARANTINE_DIR, decode_file, encode_file
from spoolkit.sqlite import SQLiteStore
from spoolkit.states import JobState

from .standin import (
    Calls,
    StandinUwsgi,
    catch_wakeups,
    dead_pid,
    insert_job,
    install,
    make_app,
    make_runner,
    make_store,
    new_job_id,
    spool_dict,
    submit_job,
)

REG = TaskRegistry()
CALLS = Calls()


@spool(name="s.record", registry=REG)
def record(value: int) -> int:
    CALLS.add(value=value)
    return value


@spool(name="s.fail", registry=REG)
def fail() -> None:
    CALLS.add(value="fail")
    raise RuntimeError("down")


@spool(name="s.later", registry=REG)
def later(countdown: float) -> None:
    CALLS.add(value=countdown)
    raise Retry(countdown=countdown)


@pytest.fixture(autouse=True)
def _forget_calls() -> None:
    CALLS.clear()


@pytest.fixture
def runner(tmp_path: Path, standin: StandinUwsgi, store: SQLiteStore) -> SpoolerRunner:
    return make_runner(make_app(tmp_path), store, REG)


def _dispatch(
    monkeypatch: pytest.MonkeyPatch, standin: StandinUwsgi, spool_dir: Path, relative: str
) -> int:
    path = spool_dir / relative
    monkeypatch.chdir(path.parent)
    code: int = standin.spooler(spool_dict(path))
    return code


# -- the spool directory -------------------------------------------------------------


def test_setup_prepares_a_private_spool_directory(runner: SpoolerRunner, spool_dir: Path) -> None:
    assert runner.spool_path == str(spool_dir)
    assert spool_dir.stat().st_mode & 0o777 == 0o700
    assert (spool_dir / QUARANTINE_DIR).is_dir()


@pytest.mark.parametrize(
    ("value", "ordered"),
    [(b"true", True), ("1", True), ([b"0", b"on"], True), (b"false", False), (None, False)],
)
def test_priority_needs_spooler_ordered(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    standin: StandinUwsgi,
    store: SQLiteStore,
    value: bytes | str | list[bytes] | None,
    ordered: bool,
) -> None:
    if value is not None:
        standin.opt["spooler-ordered"] = value
    runner = make_runner(make_app(tmp_path), store, REG)
    if ordered:
        assert runner.priority_unsupported is None
    else:
        assert runner.priority_unsupported is not None
        assert "spooler-ordered" in runner.priority_unsupported


def test_delivery_names_carry_the_job_and_the_priority(runner: SpoolerRunner) -> None:
    plain = runner.delivery_for("j" * 32, None, 1_700_000_000.5)
    assert plain.startswith(OWN_PREFIX) and plain.endswith("j" * 32)
    assert runner.delivery_for("j" * 32, 7, 1_700_000_000.5) == f"07/{plain}"


def test_a_torn_file_is_set_aside_when_the_master_loads_the_app(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spool_dir: Path, store: SQLiteStore
) -> None:
    (spool_dir / "03").mkdir(parents=True)
    (spool_dir / "uwsgi_spoolfile_on_torn").write_bytes(b"\x11\x00")
    (spool_dir / "03" / "uwsgi_spoolfile_on_torn3").write_bytes(encode_file({b"k": b"v"})[:-1])
    whole = spool_dir / "uwsgi_spoolfile_on_whole"
    whole.write_bytes(encode_file({b"k": b"v"}))
    install(monkeypatch, StandinUwsgi(spool_dir))  # the master, before the fork
    make_runner(make_app(tmp_path), store, REG)
    assert not (spool_dir / "uwsgi_spoolfile_on_torn").exists()
    assert (spool_dir / QUARANTINE_DIR / "uwsgi_spoolfile_on_torn").read_bytes() == b"\x11\x00"
    assert not (spool_dir / "03" / "uwsgi_spoolfile_on_torn3").exists()
    assert (spool_dir / QUARANTINE_DIR / "uwsgi_spoolfile_on_torn3").exists()
    assert whole.exists()


@pytest.mark.parametrize("where", ["spooler", "producer"])
def test_torn_files_are_left_alone_outside_the_spooling_master(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spool_dir: Path, store: SQLiteStore, where: str
) -> None:
    """A spooler may be reading it; a producer-only instance is not the spool's owner."""
    spool_dir.mkdir()
    torn = spool_dir / "uwsgi_spoolfile_on_torn"
    torn.write_bytes(b"\x11\x00")
    if where == "spooler":
        standin = StandinUwsgi(spool_dir, spooler_process=True)
    else:
        standin = StandinUwsgi()
        standin.opt["spooler-external"] = str(spool_dir)
    install(monkeypatch, standin)
    make_runner(make_app(tmp_path), store, REG)
    assert torn.exists()


# -- submit and release --------------------------------------------------------------


def test_submit_writes_the_envelope_due_now(
    runner: SpoolerRunner, store: SQLiteStore, spool_dir: Path
) -> None:
    now = time.time()
    job = submit_job(runner, store, "s.record", [7], now=now)
    assert job.spool_file is not None
    path = spool_dir / job.spool_file
    entries, body = decode_file(path.read_bytes())
    assert entries == {
        b"spoolkit": ENVELOPE_VERSION,
        b"job": job.id.encode(),
        b"task": b"s.record",
        b"payload": b'{"args":[7],"kwargs":{}}',
    }
    assert body == b""
    assert path.stat().st_mtime < now  # uWSGI runs it at its next scan
    assert path.stat().st_mode & 0o777 == 0o600


def test_submit_stamps_the_file_with_the_scheduled_second(
    runner: SpoolerRunner, store: SQLiteStore, spool_dir: Path
) -> None:
    now = time.time()
    job = submit_job(runner, store, "s.record", [1], now=now, run_at=now + 5.3)
    assert job.state is JobState.SCHEDULED and job.spool_file is not None
    assert (spool_dir / job.spool_file).stat().st_mtime == math.ceil(now + 5.3)


def test_a_parked_job_gets_no_file(
    runner: SpoolerRunner, store: SQLiteStore, spool_dir: Path
) -> None:
    now = time.time()
    job = submit_job(runner, store, "s.record", [1], now=now, run_at=now + 500)
    assert job.spool_file is None
    assert runner.directory.names() == set()


def test_a_staged_file_waits_for_commit(
    monkeypatch: pytest.MonkeyPatch,
    standin: StandinUwsgi,
    runner: SpoolerRunner,
    store: SQLiteStore,
    spool_dir: Path,
) -> None:
    """The service's path: file first (held back), then the row, then commit makes it due."""
    now = time.time()
    job_id = new_job_id()
    delivery = runner.delivery_for(job_id, None, now)
    payload = encode_arguments("s.record", [4], {})
    handoff = runner.stage(job_id, "s.record", delivery, payload, None, None)
    path = spool_dir / delivery
    assert path.stat().st_mtime >= now + runner.hold  # no spooler takes it yet
    insert_job(store, "s.record", [4], job_id=job_id, spool_file=delivery, created_at=now)
    handoff.commit()
    assert path.stat().st_mtime <= time.time()
    assert _dispatch(monkeypatch, standin, spool_dir, delivery) == SPOOL_OK
    assert CALLS.seen == [{"value": 4}]


def test_an_aborted_stage_leaves_no_file(runner: SpoolerRunner, spool_dir: Path) -> None:
    now = time.time()
    job_id = new_job_id()
    delivery = runner.delivery_for(job_id, None, now)
    payload = encode_arguments("s.record", [4], {})
    runner.stage(job_id, "s.record", delivery, payload, None, None).abort()
    assert not (spool_dir / delivery).exists()
    runner.stage(job_id, "s.record", None, payload, now + 500, None).commit()  # parked
    assert runner.directory.names() == set()


def test_submit_wakes_every_spooler(
    standin: StandinUwsgi, runner: SpoolerRunner, store: SQLiteStore
) -> None:
    standin.pids = [os.getpid(), dead_pid()]  # a dead one is being respawned: skipped
    with catch_wakeups() as wakeups:
        submit_job(runner, store, "s.record", [1], now=time.time())
    assert wakeups.count == 1


def test_release_makes_a_cancelled_file_due_now_and_it_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
    standin: StandinUwsgi,
    runner: SpoolerRunner,
    store: SQLiteStore,
    spool_dir: Path,
) -> None:
    now = time.time()
    job = submit_job(runner, store, "s.record", [1], now=now, run_at=now + 8)
    assert job.spool_file is not None
    path = spool_dir / job.spool_file
    assert path.stat().st_mtime > time.time()
    cancelled = store.cancel(job.id, time.time())
    runner.release(cancelled)
    assert path.stat().st_mtime <= time.time()
    assert _dispatch(monkeypatch, standin, spool_dir, job.spool_file) == SPOOL_OK
    after = store.get(job.id)
    assert after is not None and after.state is JobState.CANCELLED
    assert len(CALLS) == 0


# -- handle: what each verdict does to the file ------------------------------------------


def test_a_failed_attempt_keeps_the_file_until_its_retry_time(
    monkeypatch: pytest.MonkeyPatch,
    standin: StandinUwsgi,
    runner: SpoolerRunner,
    store: SQLiteStore,
    spool_dir: Path,
) -> None:
    job = submit_job(runner, store, "s.fail", now=time.time(), max_attempts=2, backoff=3.0)
    assert job.spool_file is not None
    assert _dispatch(monkeypatch, standin, spool_dir, job.spool_file) == SPOOL_RETRY
    after = store.get(job.id)
    assert after is not None and after.scheduled_for is not None
    assert after.state is JobState.SCHEDULED
    assert (spool_dir / job.spool_file).stat().st_mtime == math.ceil(after.scheduled_for)
    # Handed over before its time (someone touched the file): put back, not run.
    os.utime(spool_dir / job.spool_file, (1000, 1000))
    assert _dispatch(monkeypatch, standin, spool_dir, job.spool_file) == SPOOL_RETRY
    assert (spool_dir / job.spool_file).stat().st_mtime == math.ceil(after.scheduled_for)
    assert len(CALLS) == 1


def test_a_retry_parked_in_the_store_ends_the_file(
    monkeypatch: pytest.MonkeyPatch,
    standin: StandinUwsgi,
    runner: SpoolerRunner,
    store: SQLiteStore,
    spool_dir: Path,
) -> None:
    job = submit_job(runner, store, "s.later", [600], now=time.time())
    assert job.spool_file is not None
    assert _dispatch(monkeypatch, standin, spool_dir, job.spool_file) == SPOOL_OK
    after = store.get(job.id)
    assert after is not None
    assert (after.state, after.spool_file) == (JobState.SCHEDULED, None)


def test_a_job_of_an_unknown_task_is_quarantined(
    monkeypatch: pytest.MonkeyPatch,
    standin: StandinUwsgi,
    runner: SpoolerRunner,
    store: SQLiteStore,
    spool_dir: Path,
) -> None:
    job = submit_job(runner, store, "s.gone", now=time.time())
    assert job.spool_file is not None
    assert _dispatch(monkeypatch, standin, spool_dir, job.spool_file) == SPOOL_OK
    assert (spool_dir / QUARANTINE_DIR / job.spool_file).exists()
    after = store.get(job.id)
    assert after is not None and after.state is JobState.FAILED


def test_a_file_whose_job_is_not_in_the_store_is_quarantined(
    monkeypatch: pytest.MonkeyPatch,
    standin: StandinUwsgi,
    runner: SpoolerRunner,
    store: SQLiteStore,
    tmp_path: Path,
    spool_dir: Path,
) -> None:
    other = make_store(tmp_path, "other.db")
    job = submit_job(runner, other, "s.record", [1], now=time.time())  # row elsewhere
    assert job.spool_file is not None
    assert _dispatch(monkeypatch, standin, spool_dir, job.spool_file) == SPOOL_OK
    assert (spool_dir / QUARANTINE_DIR / job.spool_file).exists()
    assert len(CALLS) == 0


def test_a_stale_file_is_dropped_unrun(
    monkeypatch: pytest.MonkeyPatch,
    standin: StandinUwsgi,
    runner: SpoolerRunner,
    store: SQLiteStore,
    spool_dir: Path,
) -> None:
    """A row that names another file (the housekeeper re-spooled it) drops this one."""
    job = submit_job(runner, store, "s.record", [1], now=time.time())
    assert job.spool_file is not None
    stale = job.spool_file
    newer = runner.delivery_for(job.id, None, time.time() + 1)
    assert store.reassign(job, newer, time.time(), requeue=False)
    assert _dispatch(monkeypatch, standin, spool_dir, stale) == SPOOL_OK
    assert not (spool_dir / QUARANTINE_DIR / stale).exists()
    assert len(CALLS) == 0


# -- health ---------------------------------------------------------------------------


def test_health_counts_configured_and_live_spoolers(
    standin: StandinUwsgi, runner: SpoolerRunner
) -> None:
    standin.pids = [os.getpid(), dead_pid()]
    ok, report = runner.health()
    assert not ok
    assert report["spoolers"] == {"configured": 2, "alive": 1}
    assert report["spool_dir"] == runner.spool_path
    assert (report["spool"], report["quarantined"]) == ("ok", 0)

    standin.pids = [os.getpid()]
    ok, report = runner.health()
    assert ok
    assert report["spoolers"] == {"configured": 1, "alive": 1}


def test_health_reports_a_missing_spool_directory_and_the_quarantine(
    monkeypatch: pytest.MonkeyPatch, standin: StandinUwsgi, runner: SpoolerRunner, spool_dir: Path
) -> None:
    standin.pids = [os.getpid()]
    garbage = spool_dir / "uwsgi_spoolfile_on_foreign"
    garbage.write_bytes(encode_file({b"ud": b"x"}))
    monkeypatch.chdir(spool_dir)
    assert standin.spooler(spool_dict(garbage)) == SPOOL_OK
    ok, report = runner.health()
    assert ok and report["quarantined"] == 1
    monkeypatch.chdir("/")
    shutil.rmtree(spool_dir)
    ok, report = runner.health()
    assert not ok
    assert report["spool"] == "spool directory missing"


def test_health_without_spoolers_is_bad(standin: StandinUwsgi, runner: SpoolerRunner) -> None:
    standin.pids = []
    ok, report = runner.health()
    assert not ok
    assert report["spoolers"] == {"configured": 0, "alive": 0}


def test_a_producer_counts_the_spoolers_the_serving_instance_published(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spool_dir: Path, store: SQLiteStore
) -> None:
    standin = StandinUwsgi()
    standin.opt["spooler-external"] = os.fsencode(spool_dir)
    install(monkeypatch, standin)
    runner = make_runner(make_app(tmp_path), store, REG)
    ok, report = runner.health()
    assert not ok
    assert report["spoolers"]["external"] == 0
    me = os.getpid()
    listed = [[me, process_start(me)], [dead_pid(), 1], [os.getppid(), 1]]  # last: wrong start
    (spool_dir / SPOOLERS_FILE).write_text(json.dumps({"spoolers": listed}))
    ok, report = runner.health()
    assert ok
    assert report["spoolers"]["external"] == 1
