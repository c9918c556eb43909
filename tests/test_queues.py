"""Named queues: a spooler directory with its own spoolers per queue.

The unit tests run the kit under a stand-in ``uwsgi`` module that declares two
queues the way uwsgi.ini does (``spoolkit-queue-<name>`` placeholders); the
end-to-end ones (marked ``e2e``) run the real ``uwsgi --ini uwsgi.ini``, which
ships ``default`` and ``slow``, with one spooler per queue so that a busy queue
would hold up the other if they shared their spoolers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from spoolkit import SpoolKit
from spoolkit.config import load_config
from spoolkit.dispatcher import SPOOL_OK, SPOOL_RETRY
from spoolkit.errors import ConfigurationError
from spoolkit.housekeeping import Housekeeper
from spoolkit.job import Job
from spoolkit.runtime import spooler_queues
from spoolkit.service import JobService
from spoolkit.spooler import SpoolerRunner
from spoolkit.spoolfile import QUARANTINE_DIR, encode_file
from spoolkit.sqlite import _TABLES, SQLiteStore
from spoolkit.states import JobState
from spoolkit.store import NewJob
from spoolkit.task import Task

from . import jobs
from .standin import StandinUwsgi, catch_wakeups, install, spool_dict
from .support import UwsgiServer, make_app, wait_for

E2E = pytest.mark.e2e


# -- values and modes without directories -------------------------------------------------


@pytest.mark.parametrize("name", ["Slow", "", "a b", "../x", "x" * 41, 3, b"slow"])
def test_a_queue_name_is_checked_when_the_task_is_declared(name: object) -> None:
    with pytest.raises(ConfigurationError, match="queue must be a name"):
        Task(lambda: None, name="t.q", policy=jobs.where.policy, queue=name)  # type: ignore[arg-type]


def test_outside_uwsgi_a_job_records_its_queue_and_any_name_goes(eager_app: Flask) -> None:
    with eager_app.app_context():
        job = jobs.slow_sleeper.delay("eager-slow", 0)
        assert (job.queue, job.state, job.to_dict()["queue"]) == (
            "slow",
            JobState.SUCCEEDED,
            "slow",
        )
        assert jobs.where.delay("eager-default").queue == "default"
        assert jobs.where.apply_async(("eager-other",), queue="reports").queue == "reports"
        with pytest.raises(ConfigurationError, match="queue must be a name"):
            jobs.where.apply_async(("eager-bad",), queue="No Such")
    client = eager_app.test_client()
    answer = client.post("/jobs", json={"task": "tests.jobs.where", "args": ["x"], "queue": 5})
    assert answer.status_code == 422 and "queue must be a name" in answer.json["error"]  # type: ignore[index]
    answer = client.post("/jobs", json={"task": "tests.jobs.where", "args": ["y"], "queue": "q1"})
    assert answer.status_code == 202 and answer.json["queue"] == "q1"  # type: ignore[index]


def test_a_store_made_before_queues_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the first release's tables, one job in them
        conn.executescript(_TABLES)
        conn.execute(
            "INSERT INTO spoolkit_jobs (id, task, payload, state, max_attempts, backoff, "
            "created_at, updated_at) VALUES ('old', 't', '{}', 'queued', 3, 1.0, 1.0, 1.0)"
        )
    conn.close()
    store = SQLiteStore(str(path))
    store.setup()
    old = store.get("old")
    assert old is not None and old.queue == "default"
    assert store.queue_counts(2.0)["default"].ready == 1


def test_queue_counts_split_ready_scheduled_and_running(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "jobs.db"))
    store.setup()
    now = 1_700_000_000.0

    def add(job_id: str, queue: str, created: float, run_at: float | None = None) -> None:
        store.insert(NewJob(id=job_id, task="t", payload="{}", max_attempts=3, backoff=1.0,
                            priority=None, created_at=created, run_at=run_at,
                            spool_file=f"f-{job_id}", queue=queue))  # fmt: skip

    add("d1", "default", now - 30)
    add("d2", "default", now - 5)
    add("s1", "slow", now - 100, run_at=now - 40)  # scheduled, now due: ready since its time
    add("s2", "slow", now - 100, run_at=now + 60)  # scheduled for later
    add("s3", "slow", now - 10)
    store.claim("s3", "f-s3", "h:1:1:0", 7, now - 9, lambda pid: True)  # running
    add("s4", "slow", now - 50)
    store.cancel("s4", now)  # finished jobs count nowhere
    counts = store.queue_counts(now)
    assert set(counts) == {"default", "slow"}
    assert (counts["default"].ready, counts["default"].scheduled) == (2, 0)
    assert counts["default"].oldest_ready == now - 30
    slow = counts["slow"]
    assert (slow.ready, slow.scheduled, slow.running, slow.oldest_ready) == (1, 1, 1, now - 40)


# -- under a stand-in uWSGI with two queues ------------------------------------------------


class Queues:
    def __init__(self, app: Flask, standin: StandinUwsgi, default: Path, slow: Path) -> None:
        self.app = app
        self.standin = standin
        self.default = default
        self.slow = slow
        service = app.extensions["spoolkit"]
        assert isinstance(service, JobService) and isinstance(service.runner, SpoolerRunner)
        self.service = service
        self.runner = service.runner
        self.store = service.store

    def row(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        assert job is not None
        return job

    def run(self, monkeypatch: pytest.MonkeyPatch, directory: Path, relative: str) -> int:
        """Hand the file to the kit's dispatcher as a spooler of ``directory`` would."""
        path = directory / relative
        monkeypatch.chdir(path.parent)
        code: int = self.standin.spooler(spool_dict(path))
        return code


@pytest.fixture
def queues(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Queues]:
    default, slow = tmp_path.resolve() / "spool" / "jobs", tmp_path.resolve() / "spool" / "slow"
    standin = StandinUwsgi(slow, ordered=True)  # uwsgi.opt keeps the last "spooler" line
    standin.opt["spoolkit-queue-default"] = os.fsencode(default)
    standin.opt["spoolkit-queue-slow"] = os.fsencode(f"{default}/../slow")  # as uwsgi.ini
    install(monkeypatch, standin)
    app = make_app(tmp_path / "app", SPOOLKIT_SPOOL_AHEAD=10.0)
    with catch_wakeups():
        yield Queues(app, standin, default, slow)


def test_each_declared_queue_gets_its_directory_and_the_dispatcher_serves_both(
    queues: Queues,
) -> None:
    assert spooler_queues() == {"default": str(queues.default), "slow": str(queues.slow)}
    assert queues.runner.queues == ("default", "slow")
    for directory in (queues.default, queues.slow):
        assert (directory / QUARANTINE_DIR).is_dir()
    assert set(queues.standin.spooler.handlers) == {str(queues.default), str(queues.slow)}


def test_without_a_default_queue_the_start_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    standin = StandinUwsgi(tmp_path / "slow")
    standin.opt["spoolkit-queue-slow"] = os.fsencode(tmp_path / "slow")
    install(monkeypatch, standin)
    with pytest.raises(ConfigurationError, match="none named 'default'"):
        spooler_queues()


def test_an_unknown_queue_is_refused_naming_the_configured_ones(queues: Queues) -> None:
    with queues.app.app_context(), pytest.raises(ConfigurationError) as refused:
        jobs.where.apply_async(("nowhere",), queue="reports")
    assert "queue 'reports' is not configured; configured queues: default, slow" in str(
        refused.value
    )
    answer = queues.app.test_client().post(
        "/jobs", json={"task": "tests.jobs.where", "args": ["x"], "queue": "reports"}
    )
    assert answer.status_code == 422
    assert "configured queues: default, slow" in answer.json["error"]  # type: ignore[index]
    assert queues.store.counts()["queued"] == 0


def test_a_job_is_spooled_into_its_queue_and_run_by_its_spoolers(
    monkeypatch: pytest.MonkeyPatch, queues: Queues
) -> None:
    with queues.app.app_context():
        slow = jobs.slow_sleeper.delay("unit-slow", 0)
        default = jobs.where.delay("unit-default")
        chosen = jobs.where.apply_async(("unit-chosen",), queue="slow")
    assert (slow.queue, default.queue, chosen.queue) == ("slow", "default", "slow")
    for job, directory in ((slow, queues.slow), (default, queues.default), (chosen, queues.slow)):
        assert job.spool_file is not None and (directory / job.spool_file).is_file()
        assert queues.run(monkeypatch, directory, job.spool_file) == SPOOL_OK
        assert queues.row(job.id).state is JobState.SUCCEEDED
    assert queues.row(chosen.id).result == str(queues.slow)


def test_priorities_work_inside_a_queue(monkeypatch: pytest.MonkeyPatch, queues: Queues) -> None:
    with queues.app.app_context():
        job = jobs.where.apply_async(("unit-prio",), queue="slow", priority=7)
    assert job.spool_file is not None and job.spool_file.startswith("07/")
    assert (queues.slow / job.spool_file).is_file()
    assert queues.run(monkeypatch, queues.slow, job.spool_file) == SPOOL_OK
    assert queues.row(job.id).result == str(queues.slow / "07")


def test_a_job_keeps_its_queue_through_retries_restarts_and_respooling(
    monkeypatch: pytest.MonkeyPatch, queues: Queues
) -> None:
    with queues.app.app_context():
        job = jobs.flaky_on_slow.delay("unit-flaky", 2)  # 2 attempts: fails for good
    assert job.spool_file is not None
    assert queues.run(monkeypatch, queues.slow, job.spool_file) == SPOOL_RETRY  # retry: same file
    assert (queues.slow / job.spool_file).is_file()
    assert queues.run(monkeypatch, queues.slow, job.spool_file) == SPOOL_OK
    assert queues.row(job.id).state is JobState.FAILED
    with queues.app.app_context():
        again = queues.service.retry(job.id)  # a restart by request
    assert again.queue == "slow" and again.spool_file is not None
    assert (queues.slow / again.spool_file).is_file()
    (queues.slow / again.spool_file).unlink()  # the file is lost: the store re-spools it
    keeper = Housekeeper(queues.store, queues.runner, load_config(queues.app))
    assert keeper.run_once(time.time() + 60).respooled == 1
    moved = queues.row(job.id)
    assert moved.queue == "slow" and moved.spool_file not in (None, again.spool_file)
    assert moved.spool_file is not None and (queues.slow / moved.spool_file).is_file()
    assert not list(queues.default.glob("uwsgi_spoolfile_on_*"))
    queues.run(monkeypatch, queues.slow, moved.spool_file)
    assert queues.row(job.id).state is JobState.SUCCEEDED  # run 3 > 2 failures
    cwds = {run["cwd"] for run in _records("unit-flaky")}
    assert cwds == {str(queues.slow)}


def test_a_rejected_file_goes_to_its_queues_quarantine(
    monkeypatch: pytest.MonkeyPatch, queues: Queues
) -> None:
    name = "uwsgi_spoolfile_on_foreign"
    (queues.slow / name).write_bytes(encode_file({b"foo": b"bar"}))
    assert queues.run(monkeypatch, queues.slow, name) == SPOOL_OK
    assert (queues.slow / QUARANTINE_DIR / name).is_file()
    assert not (queues.default / QUARANTINE_DIR / name).exists()
    _, report = queues.runner.health()
    assert report["queues"]["slow"]["quarantined"] == 1
    assert report["queues"]["default"]["quarantined"] == 0


def test_health_counts_spoolers_per_queue_by_their_working_directory(
    monkeypatch: pytest.MonkeyPatch, queues: Queues
) -> None:
    queues.standin.pids = [os.getpid()]  # this process plays the one spooler
    monkeypatch.chdir(queues.slow)  # ... of the slow queue: default has none
    healthy, report = queues.service.health()
    assert not healthy
    assert report["queues"]["slow"]["spoolers_alive"] == 1
    assert report["queues"]["default"]["spoolers_alive"] == 0
    monkeypatch.chdir(queues.slow.parent)  # serving no queue right now: benefit of the doubt
    healthy, report = queues.service.health()
    assert healthy, report
    assert report["queues"]["default"] == {
        "ready": 0, "scheduled": 0, "running": 0, "oldest_ready_age": None,
        "spoolers_alive": 0, "spool": "ok", "quarantined": 0,
    }  # fmt: skip


def test_the_cli_reports_per_queue(queues: Queues) -> None:
    with queues.app.app_context():
        jobs.slow_sleeper.delay("unit-cli", 0)
    Housekeeper(queues.store, queues.runner, load_config(queues.app)).record_spoolers(time.time())
    result = queues.app.test_cli_runner().invoke(args=["spoolkit", "queues", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["slow"]["ready"] == 1 and shown["default"]["ready"] == 0
    assert shown["slow"]["spoolers_alive"] == 0  # the stand-in has no spoolers
    table = queues.app.test_cli_runner().invoke(args=["spoolkit", "queues"]).output
    assert table.splitlines()[0].split() == [
        "queue", "ready", "scheduled", "running", "oldest", "ready", "spoolers",
    ]  # fmt: skip
    assert table.splitlines()[2].split()[:2] == ["slow", "1"]


def _records(tag: str) -> list[dict[str, Any]]:
    path = Path(os.environ["SPOOLKIT_TEST_DIR"]) / f"{tag}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# -- on real uWSGI: uwsgi.ini's default and slow queues, one spooler each ------------------


@pytest.fixture(scope="module")
def one_each(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UwsgiServer]:
    """uwsgi.ini as shipped, with SPOOLKIT_SPOOLERS=1: one spooler per queue."""
    server = UwsgiServer(tmp_path_factory.mktemp("queues"), SPOOLKIT_SPOOLERS="1")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _slow_dir(server: UwsgiServer) -> Path:
    return Path(os.path.realpath(server.spool_dir.parent / "slow"))  # next to the default's


def _default_dir(server: UwsgiServer) -> Path:
    return Path(os.path.realpath(server.spool_dir))


def _started(server: UwsgiServer, tag: str) -> dict[str, Any]:
    return dict(wait_for(lambda: server.records_of(tag), 15, f"{tag} to start")[0])


@E2E
def test_a_long_job_in_slow_does_not_delay_a_job_on_default(one_each: UwsgiServer) -> None:
    """8 s stands for the issue's 30 s: with one spooler per queue the slow spooler is busy
    all along, and a default job still starts within a second. The same 8 s job on the
    default queue does hold the next default job up (the contrast proves the test bites)."""
    server = one_each
    long_job = server.enqueue("slow_sleeper", "long", 8)
    assert _started(server, "long")["cwd"] == str(_slow_dir(server))
    queued = time.time()
    quick = server.enqueue("where", "quick")
    assert server.wait_job(quick, timeout=5)["result"] == str(_default_dir(server))
    assert _started(server, "quick")["time"] - queued < 1.0
    assert server.job(long_job)["state"] == "running"  # still busy all along
    assert server.wait_job(long_job, timeout=20)["queue"] == "slow"

    blocking = server.enqueue("slow_sleeper", "blocking", 3, queue="default")
    assert _started(server, "blocking")["cwd"] == str(_default_dir(server))
    queued = time.time()
    server.enqueue("where", "behind")
    assert _started(server, "behind")["time"] - queued > 1.5  # waited for the spooler
    server.wait_job(blocking)


@E2E
def test_an_unknown_queue_is_refused_with_422(one_each: UwsgiServer) -> None:
    answer = one_each.post("/jobs", {"task": "tests.jobs.where", "args": ["x"], "queue": "nope"})
    assert answer.status == 422
    assert "configured queues: default, slow" in answer.json()["error"]


@E2E
def test_a_slow_job_keeps_its_queue_through_a_retry_and_respooling(one_each: UwsgiServer) -> None:
    server = one_each
    flaky = server.enqueue("flaky_on_slow", "e2e-flaky", 1)  # fails once, then succeeds
    done = server.wait_job(flaky)
    assert (done["state"], done["attempts"], done["queue"]) == ("succeeded", 2, "slow")
    assert {run["cwd"] for run in server.records_of("e2e-flaky")} == {str(_slow_dir(server))}

    later = server.enqueue("slow_sleeper", "e2e-respooled", 0, countdown=4)
    files = wait_for(lambda: list(_slow_dir(server).glob(f"uwsgi_spoolfile_on_*{later}")), 5,
                     "the scheduled job's file in the slow directory")  # fmt: skip
    files[0].unlink()
    again = wait_for(
        lambda: [p for p in _slow_dir(server).glob(f"uwsgi_spoolfile_on_*{later}") if p != files[0]],
        10, "the housekeeper to spool it again into the slow directory",
    )  # fmt: skip
    assert again and server.spool_file_of(later) is None  # not in the default directory
    assert server.wait_job(later, timeout=15)["queue"] == "slow"
    assert _started(server, "e2e-respooled")["cwd"] == str(_slow_dir(server))
    assert f"job {later}: scheduled delivery" in server.log_text()


@E2E
def test_priorities_order_the_jobs_of_a_queue(one_each: UwsgiServer) -> None:
    server = one_each
    busy = server.enqueue("slow_sleeper", "prio-busy", 2)
    _started(server, "prio-busy")
    ids = {p: server.enqueue("where", f"prio-{p}", queue="slow", priority=p) for p in (9, 5, 1)}
    for priority, job_id in ids.items():
        assert server.job(job_id)["queue"] == "slow"
        assert list((_slow_dir(server) / f"{priority:02d}").glob(f"*{job_id}"))
    server.wait_job(busy)
    starts = {p: _started(server, f"prio-{p}")["time"] for p in ids}
    assert starts[1] < starts[5] < starts[9]
    for priority, job_id in ids.items():
        assert server.wait_job(job_id)["result"] == str(_slow_dir(server) / f"{priority:02d}")


@E2E
def test_healthz_and_the_cli_report_each_queue(one_each: UwsgiServer, tmp_path: Path) -> None:
    server = one_each
    running = server.enqueue("slow_sleeper", "health-running", 4)
    _started(server, "health-running")
    waiting = server.enqueue("slow_sleeper", "health-waiting", 0)
    server.enqueue("where", "health-later", queue="slow", countdown=60)

    def report() -> dict[str, Any] | None:
        health = server.get("/healthz").json()
        slow = health["queues"]["slow"]
        return health if (slow["ready"], slow["running"]) == (1, 1) else None

    health = wait_for(report, 5, "/healthz to show the slow queue busy")
    slow, default = health["queues"]["slow"], health["queues"]["default"]
    assert slow["scheduled"] == 1 and slow["spoolers_alive"] == 1 and slow["spool"] == "ok"
    assert slow["oldest_ready_age"] is not None and 0 <= slow["oldest_ready_age"] < 5
    assert (default["ready"], default["running"], default["spoolers_alive"]) == (0, 0, 1)
    assert default["oldest_ready_age"] is None
    assert health["status"] == "ok"

    cli = _cli_app(tmp_path, server)
    shown = json.loads(cli.test_cli_runner().invoke(args=["spoolkit", "queues", "--json"]).output)
    assert shown["slow"]["running"] == 1 and shown["slow"]["scheduled"] == 1
    assert shown["slow"]["spoolers_alive"] == 1 and shown["default"]["spoolers_alive"] == 1
    server.wait_job(running)
    server.wait_job(waiting)


def _cli_app(tmp_path: Path, server: UwsgiServer) -> Flask:
    """What ``flask --app app spoolkit queues`` runs: the app outside uWSGI, on the store."""
    app = Flask("cli", root_path=str(tmp_path))
    app.config.update(SPOOLKIT_DATABASE=str(server.database), SPOOLKIT_IMPORTS="tests.jobs")
    SpoolKit(app)
    return app
