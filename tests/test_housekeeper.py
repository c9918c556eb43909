"""The housekeeper over a real store and spool directory, with the uWSGI spooler runner
under a stand-in ``uwsgi`` module (as in the mule, where it runs).

Rows are made ``STALE`` seconds before the ``now`` each pass is given, so
the grace period (``GRACE_SECONDS``) never hides them unless a test says so.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from spoolkit import spool
from spoolkit.config import load_config
from spoolkit.dispatcher import SPOOL_OK
from spoolkit.housekeeping import GRACE_SECONDS, Housekeeper
from spoolkit.job import Job, JobError
from spoolkit.registry import TaskRegistry
from spoolkit.runtime import SPOOLERS_FILE, process_start
from spoolkit.spooler import SpoolerRunner
from spoolkit.spoolfile import QUARANTINE_DIR, decode_file
from spoolkit.sqlite import SQLiteStore
from spoolkit.states import JobState
from spoolkit.store import HOUSEKEEPER_BEAT

from .standin import (
    Calls,
    StandinUwsgi,
    Wakeups,
    catch_wakeups,
    dead_pid,
    insert_job,
    install,
    make_app,
    make_runner,
    make_store,
    spool_dict,
    submit_job,
)
from .support import make_app as support_app

REG = TaskRegistry()
CALLS = Calls()
STALE = 60.0
RESULT_TTL = 3600.0


@spool(name="h.record", registry=REG)
def record(value: int) -> int:
    CALLS.add(value=value)
    return value


@dataclass
class Kit:
    standin: StandinUwsgi
    store: SQLiteStore
    runner: SpoolerRunner
    housekeeper: Housekeeper
    spool_dir: Path
    wakeups: Wakeups

    def row(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        assert job is not None
        return job

    def has_file(self, job: Job) -> bool:
        return job.spool_file is not None and (self.spool_dir / job.spool_file).is_file()

    def lost(self, value: int, now: float, run_at: float | None = None) -> Job:
        """A queued (or scheduled) job whose spool file never got written, or vanished."""
        job_id = f"lost{value:028d}"
        return insert_job(
            self.store, "h.record", [value], job_id=job_id, created_at=now - STALE,
            run_at=run_at, spool_file=self.runner.delivery_for(job_id, None, now - STALE),
        )  # fmt: skip

    def running(self, value: int, now: float, runner: str, pid: int) -> Job:
        """A job claimed by ``runner``/``pid`` ``STALE`` seconds ago, its file gone."""
        job = self.lost(value, now)
        assert job.spool_file is not None
        action, claimed = self.store.claim(
            job.id, job.spool_file, runner, pid, now - STALE, lambda pid: False
        )
        assert action.value == "run" and claimed is not None
        return claimed

    def finished(self, value: int, at: float, state: JobState) -> str:
        job = self.lost(value, at)
        if state is JobState.CANCELLED:
            self.store.cancel(job.id, at)
            return job.id
        assert job.spool_file is not None
        self.store.claim(job.id, job.spool_file, "x:1:1:0", 99, at, lambda pid: False)
        error = JobError("E", "e") if state is JobState.FAILED else None
        assert self.store.finish(job.id, 99, at, result="1", error=error)
        return job.id


@pytest.fixture(autouse=True)
def _forget_calls() -> None:
    CALLS.clear()


@pytest.fixture
def kit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Kit]:
    spool_dir = tmp_path.resolve() / "spool"
    standin = install(monkeypatch, StandinUwsgi(spool_dir, mule=1))
    app = make_app(tmp_path, SPOOLKIT_RESULT_TTL=RESULT_TTL, SPOOLKIT_SPOOL_AHEAD=10.0)
    config = load_config(app)
    store = make_store(tmp_path)
    runner = make_runner(app, store, REG)
    with catch_wakeups() as wakeups:  # in case a test lists this process as a spooler
        yield Kit(standin, store, runner, Housekeeper(store, runner, config), spool_dir, wakeups)


def _run_file(monkeypatch: pytest.MonkeyPatch, kit: Kit, job: Job) -> int:
    assert job.spool_file is not None
    path = kit.spool_dir / job.spool_file
    monkeypatch.chdir(path.parent)
    code: int = kit.standin.spooler(spool_dict(path))
    return code


def test_a_waiting_job_whose_file_is_gone_is_spooled_again(
    monkeypatch: pytest.MonkeyPatch, kit: Kit
) -> None:
    now = time.time()
    lost = kit.lost(1, now)
    present = submit_job(kit.runner, kit.store, "h.record", [2], now=now - STALE)
    report = kit.housekeeper.run_once(now)
    assert (report.respooled, report.requeued) == (1, 0)
    again = kit.row(lost.id)
    assert again.state is JobState.QUEUED
    assert again.spool_file is not None and again.spool_file != lost.spool_file
    assert kit.has_file(again)
    entries, _ = decode_file((kit.spool_dir / again.spool_file).read_bytes())
    assert entries[b"job"] == lost.id.encode()
    assert kit.row(present.id).spool_file == present.spool_file  # its file is there
    assert _run_file(monkeypatch, kit, again) == SPOOL_OK
    assert kit.row(lost.id).state is JobState.SUCCEEDED
    assert CALLS.seen == [{"value": 1}]


def test_a_lost_priority_job_is_spooled_into_its_priority_directory(kit: Kit) -> None:
    now = time.time()
    job = insert_job(kit.store, "h.record", [1], priority=5, created_at=now - STALE,
                     spool_file=kit.runner.delivery_for("p" * 32, 5, now - STALE),
                     job_id="p" * 32)  # fmt: skip
    assert kit.housekeeper.run_once(now).respooled == 1
    again = kit.row(job.id)
    assert again.spool_file is not None and again.spool_file.startswith("05/")
    assert again.spool_file != job.spool_file and kit.has_file(again)


def test_a_job_touched_within_the_grace_period_is_left_alone(kit: Kit) -> None:
    now = time.time()
    fresh = kit.lost(1, now + STALE - GRACE_SECONDS / 2)  # an enqueue between row and file
    report = kit.housekeeper.run_once(now)
    assert report.respooled == 0
    assert kit.row(fresh.id).spool_file == fresh.spool_file


def test_a_far_scheduled_job_whose_file_is_gone_is_parked(kit: Kit) -> None:
    now = time.time()
    lost = kit.lost(1, now, run_at=now + 500)
    report = kit.housekeeper.run_once(now)
    assert report.respooled == 1
    job = kit.row(lost.id)
    assert (job.state, job.spool_file) == (JobState.SCHEDULED, None)
    assert kit.runner.directory.names() == set()


def test_a_torn_file_is_set_aside_and_its_job_spooled_again(kit: Kit) -> None:
    now = time.time()
    job = submit_job(kit.runner, kit.store, "h.record", [1], now=now - STALE)
    assert job.spool_file is not None
    torn = kit.spool_dir / job.spool_file
    torn.write_bytes(b"\x11\x00")  # what a crash of the machine leaves
    os.utime(torn, (now - STALE, now - STALE))
    report = kit.housekeeper.run_once(now)
    assert report.respooled == 1
    assert (kit.spool_dir / QUARANTINE_DIR / job.spool_file).read_bytes() == b"\x11\x00"
    again = kit.row(job.id)
    assert again.spool_file != job.spool_file and kit.has_file(again)


def test_a_local_delivery_of_a_dead_process_is_spooled(kit: Kit) -> None:
    now = time.time()
    gone = f"local:{socket.gethostname()}:local:{dead_pid()}"
    job = insert_job(kit.store, "h.record", [1], spool_file=gone, created_at=now - STALE)
    report = kit.housekeeper.run_once(now)
    assert report.respooled == 1
    again = kit.row(job.id)
    assert again.spool_file is not None and kit.has_file(again)


def test_a_running_job_whose_spooler_died_is_queued_again(
    monkeypatch: pytest.MonkeyPatch, kit: Kit
) -> None:
    now = time.time()
    kit.standin.pids = [dead_pid()]  # respawned since: the old pid is not a spooler
    job = kit.running(1, now, kit.standin.instance(), dead_pid())
    report = kit.housekeeper.run_once(now)
    assert (report.requeued, report.respooled) == (1, 0)
    again = kit.row(job.id)
    assert (again.state, again.runner, again.runner_pid) == (JobState.QUEUED, None, None)
    assert again.attempts == 1
    assert again.spool_file != job.spool_file and kit.has_file(again)
    assert _run_file(monkeypatch, kit, again) == SPOOL_OK
    assert kit.row(job.id).state is JobState.SUCCEEDED


def test_a_running_job_whose_file_is_still_there_is_left_to_its_spooler(kit: Kit) -> None:
    now = time.time()
    job = submit_job(kit.runner, kit.store, "h.record", [1], now=now - STALE)
    assert job.spool_file is not None
    kit.store.claim(job.id, job.spool_file, kit.standin.instance(), dead_pid(), now - STALE,
                    lambda pid: False)  # fmt: skip
    report = kit.housekeeper.run_once(now)
    assert report.requeued == 0
    assert kit.row(job.id).state is JobState.RUNNING


def test_a_running_job_of_a_live_spooler_is_left_alone(kit: Kit) -> None:
    now = time.time()
    kit.standin.pids = [os.getpid()]
    job = kit.running(1, now, kit.standin.instance(), os.getpid())
    report = kit.housekeeper.run_once(now)
    assert (report.requeued, report.respooled) == (0, 0)
    after = kit.row(job.id)
    assert (after.state, after.runner_pid, after.spool_file) == (
        JobState.RUNNING, os.getpid(), job.spool_file,
    )  # fmt: skip
    assert kit.wakeups.count == 0  # nothing was spooled


@pytest.mark.parametrize(
    ("kind", "requeued"),
    [("before-reload", True), ("other-host", False), ("dead-local", True), ("live-local", False)],
)
def test_runners_of_other_instances(
    monkeypatch: pytest.MonkeyPatch, kit: Kit, kind: str, requeued: bool
) -> None:
    host = socket.gethostname()
    runner = {
        "before-reload": kit.standin.instance(reloads=0),  # this master, before a reload
        "other-host": f"{host}-elsewhere:1:1:0",  # judged by that host's housekeeper
        "dead-local": f"{host}:local:{dead_pid()}",
        "live-local": f"{host}:local:{os.getpid()}",  # `flask run` on the same store
    }[kind]
    monkeypatch.setenv("UWSGI_RELOADS", "1")
    now = time.time()
    job = kit.running(1, now, runner, 4242)
    report = kit.housekeeper.run_once(now)
    assert report.requeued == int(requeued)
    assert kit.row(job.id).state is (JobState.QUEUED if requeued else JobState.RUNNING)


def test_spool_due_spools_parked_jobs_due_within_spool_ahead(kit: Kit) -> None:
    now = time.time()
    near = insert_job(kit.store, "h.record", [1], spool_file=None, created_at=now - STALE,
                      run_at=now + 5)  # fmt: skip
    far = insert_job(kit.store, "h.record", [2], spool_file=None, created_at=now - STALE,
                     run_at=now + 500)  # fmt: skip
    assert kit.housekeeper.run_once(now).respooled == 0  # a pass leaves parked jobs parked
    assert kit.housekeeper.spool_due(now) == 1
    spooled = kit.row(near.id)
    assert spooled.state is JobState.SCHEDULED and kit.has_file(spooled)
    assert spooled.spool_file is not None
    assert (kit.spool_dir / spooled.spool_file).stat().st_mtime == math.ceil(now + 5)
    assert kit.row(far.id).spool_file is None
    assert kit.housekeeper.spool_due(now) == 0
    assert kit.housekeeper.spool_due(now + 495) == 1


def test_finished_jobs_older_than_the_result_ttl_are_purged(kit: Kit) -> None:
    now = time.time()
    old = now - RESULT_TTL - 10
    purged = [kit.finished(value, old, state) for value, state in
              enumerate((JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED))]  # fmt: skip
    kept = kit.finished(9, now - 10, JobState.SUCCEEDED)
    waiting = submit_job(kit.runner, kit.store, "h.record", [3], now=old)
    report = kit.housekeeper.run_once(now)
    assert report.purged == 3
    assert all(kit.store.get(job_id) is None for job_id in purged)
    assert kit.store.get(kept) is not None
    assert kit.store.get(waiting.id) is not None


def test_a_pass_records_its_beat(kit: Kit) -> None:
    now = time.time()
    assert kit.store.get_meta(HOUSEKEEPER_BEAT) is None
    kit.housekeeper.run_once(now)
    assert kit.store.get_meta(HOUSEKEEPER_BEAT) == repr(now)


def test_maintain_publishes_the_spoolers_of_this_instance(kit: Kit) -> None:
    gone = dead_pid()
    kit.standin.pids = [os.getpid(), gone, 0]  # 0: a slot without a process
    kit.runner.maintain(time.time())
    published = json.loads((kit.spool_dir / SPOOLERS_FILE).read_text())
    assert sorted(map(tuple, published["spoolers"])) == sorted(
        [(os.getpid(), process_start(os.getpid())), (gone, None)]
    )
    assert kit.runner.waker.published() == [os.getpid()]  # only live, same binary


def test_a_producer_publishes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kit: Kit
) -> None:
    producer = StandinUwsgi(mule=1, spooler_pids=[os.getpid()])
    producer.opt["spooler-external"] = str(kit.spool_dir)
    install(monkeypatch, producer)
    runner = make_runner(make_app(tmp_path), kit.store, REG)
    runner.maintain(time.time())
    assert not (kit.spool_dir / SPOOLERS_FILE).exists()


def test_maintain_recreates_a_removed_spool_directory_and_the_pass_refills_it(
    monkeypatch: pytest.MonkeyPatch, kit: Kit
) -> None:
    now = time.time()
    job = submit_job(kit.runner, kit.store, "h.record", [1], now=now - STALE)
    shutil.rmtree(kit.spool_dir)  # an operator's cleanup
    kit.runner.maintain(now)
    assert (kit.spool_dir / QUARANTINE_DIR).is_dir()
    assert kit.housekeeper.run_once(now).respooled == 1
    again = kit.row(job.id)
    assert kit.has_file(again)
    assert _run_file(monkeypatch, kit, again) == SPOOL_OK
    assert CALLS.seen == [{"value": 1}]


def test_maintain_purges_quarantined_files_past_the_result_ttl(kit: Kit) -> None:
    now = time.time()
    quarantine = kit.spool_dir / QUARANTINE_DIR
    old, recent = quarantine / "uwsgi_spoolfile_on_old", quarantine / "uwsgi_spoolfile_on_new"
    for path, age in ((old, RESULT_TTL + 10), (recent, 10.0)):
        path.write_bytes(b"kept for a person")
        os.utime(path, (now - age, now - age))
    kit.runner.maintain(now)
    assert not old.exists() and recent.exists()


# -- one host per store ---------------------------------------------------------------------


def test_each_pass_records_this_node_with_its_spoolers(kit: Kit) -> None:
    now = time.time()
    kit.housekeeper.run_once(now)
    nodes = kit.store.nodes(now + 1, 30)
    assert [(node.id, node.host) for node in nodes] == [(socket.gethostname(),) * 2]
    assert nodes[0].age == pytest.approx(1.0)
    assert set(json.loads(nodes[0].figures)) == {"spoolers", "queues", "instance"}
    assert kit.store.nodes(now + 31, 30) == []  # not seen for 30 s: no longer live


def test_healthz_says_when_another_host_uses_the_store(tmp_path: Path) -> None:
    client = support_app(tmp_path).test_client()
    assert client.get("/healthz").status_code == 200
    service = client.application.extensions["spoolkit"]
    figures = json.dumps({"spoolers": {"alive": 2, "configured": 2}, "queues": {"default": 2}})
    service.store.beat("web-2", "web-2", figures, time.time() - 1)
    answer = client.get("/healthz")
    assert answer.status_code == 503
    assert answer.get_json()["store"].startswith("shared with web-2: one host per store")
    assert answer.get_json()["nodes"][0]["id"] == "web-2"
    assert answer.get_json()["nodes"][0]["spoolers"] == {"alive": 2, "configured": 2}
    service.store.beat("web-2", "web-2", figures, time.time() - 600)
    healthy = client.get("/healthz")
    assert healthy.status_code == 200 and healthy.get_json()["nodes"] == []
