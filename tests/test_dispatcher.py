"""The dispatcher (``uwsgi.spooler``) routing real spool files to spooler runners.

Each test sets up :class:`~spoolkit.spooler.SpoolerRunner` under a stand-in
``uwsgi`` module, writes files with the runner as the service would, then
does what a uWSGI spooler does: ``chdir()`` into the directory the file is
in and hand the callable the file's dict.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from flask import current_app

from spoolkit import dispatcher, runtime, spool
from spoolkit.dispatcher import ERROR_PAUSE, SPOOL_OK, SPOOL_RETRY, Dispatcher
from spoolkit.encoding import to_spool_entries
from spoolkit.errors import StoreUnavailable
from spoolkit.registry import TaskRegistry
from spoolkit.spooler import SpoolerRunner
from spoolkit.spoolfile import QUARANTINE_DIR, encode_file, spool_file_name
from spoolkit.sqlite import SQLiteStore
from spoolkit.states import JobState

from .standin import (
    Calls,
    StandinUwsgi,
    install,
    make_app,
    make_runner,
    make_store,
    spool_dict,
    submit_job,
)

REG = TaskRegistry()
CALLS = Calls()


@spool(name="d.record", registry=REG)
def record(value: Any) -> str:
    CALLS.add(value=value, app=current_app.name)
    return str(current_app.name)


@pytest.fixture(autouse=True)
def _forget_calls() -> None:
    CALLS.clear()


@pytest.fixture
def runner(tmp_path: Path, standin: StandinUwsgi, store: SQLiteStore) -> SpoolerRunner:
    return make_runner(make_app(tmp_path), store, REG)


def _mtime(path: Path) -> float:
    return os.stat(path).st_mtime


def test_a_submitted_file_runs_its_job(
    monkeypatch: pytest.MonkeyPatch,
    standin: StandinUwsgi,
    runner: SpoolerRunner,
    store: SQLiteStore,
    spool_dir: Path,
) -> None:
    assert isinstance(standin.spooler, Dispatcher)
    job = submit_job(runner, store, "d.record", ["hello"], now=time.time())
    assert job.spool_file is not None
    path = spool_dir / job.spool_file
    assert path.exists()
    monkeypatch.chdir(spool_dir)
    assert standin.spooler(spool_dict(path)) == SPOOL_OK
    done = store.get(job.id)
    assert done is not None
    assert (done.state, done.result, done.attempts) == (JobState.SUCCEEDED, "standin", 1)
    assert CALLS.seen == [{"value": "hello", "app": "standin"}]


def test_large_arguments_travel_in_the_body(
    monkeypatch: pytest.MonkeyPatch,
    standin: StandinUwsgi,
    runner: SpoolerRunner,
    store: SQLiteStore,
    spool_dir: Path,
) -> None:
    big = "x" * 40_000
    job = submit_job(runner, store, "d.record", [big], now=time.time())
    assert job.spool_file is not None
    spool = spool_dict(spool_dir / job.spool_file)
    assert b"payload" not in spool and "body" in spool
    monkeypatch.chdir(spool_dir)
    assert standin.spooler(spool) == SPOOL_OK
    assert CALLS.seen == [{"value": big, "app": "standin"}]


def test_a_priority_file_routes_from_its_subdirectory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spool_dir: Path, store: SQLiteStore
) -> None:
    standin = install(monkeypatch, StandinUwsgi(spool_dir, ordered=True, spooler_process=True))
    runner = make_runner(make_app(tmp_path), store, REG)
    job = submit_job(runner, store, "d.record", [5], now=time.time(), priority=5)
    assert job.spool_file is not None and job.spool_file.startswith("05/")
    path = spool_dir / job.spool_file
    assert path.exists()
    monkeypatch.chdir(spool_dir / "05")
    assert standin.spooler(spool_dict(path)) == SPOOL_OK
    done = store.get(job.id)
    assert done is not None and done.state is JobState.SUCCEEDED


def test_a_file_in_a_directory_no_runner_serves_is_put_off(
    monkeypatch: pytest.MonkeyPatch, standin: StandinUwsgi, runner: SpoolerRunner, tmp_path: Path
) -> None:
    elsewhere = tmp_path.resolve() / "elsewhere"
    elsewhere.mkdir()
    entries, body = to_spool_entries("j" * 32, "d.record", '{"args":[1],"kwargs":{}}')
    path = elsewhere / spool_file_name("j" * 32)
    path.write_bytes(encode_file(entries, body))
    os.utime(path, (1000, 1000))
    monkeypatch.chdir(elsewhere)
    before = time.time()
    assert standin.spooler(spool_dict(path)) == SPOOL_RETRY
    assert before + ERROR_PAUSE <= _mtime(path) <= time.time() + ERROR_PAUSE + 1
    assert len(CALLS) == 0


def test_a_digit_directory_outside_any_spool_is_not_routed(
    monkeypatch: pytest.MonkeyPatch, standin: StandinUwsgi, runner: SpoolerRunner, tmp_path: Path
) -> None:
    """Only the spool directory's own priority subdirectories reach its runner."""
    stray = tmp_path.resolve() / "other" / "05"
    stray.mkdir(parents=True)
    path = stray / "uwsgi_spoolfile_on_stray"
    path.write_bytes(encode_file({b"x": b"y"}))
    monkeypatch.chdir(stray)
    assert standin.spooler(spool_dict(path)) == SPOOL_RETRY
    assert not (stray / QUARANTINE_DIR).exists()


@pytest.mark.parametrize(
    "entries",
    [
        {b"ud": b"a foreign uwsgi.spool() call"},
        {b"spoolkit": b"99", b"job": b"j" * 32, b"task": b"d.record", b"payload": b"{}"},
        {b"spoolkit": b"1", b"job": b"../../etc", b"task": b"d.record", b"payload": b"{}"},
        {b"spoolkit": b"1", b"job": b"j" * 32, b"task": b"d.record", b"payload": b"not json"},
    ],
    ids=["foreign", "version", "job-id", "payload"],
)
def test_a_file_that_is_not_a_spoolkit_job_is_quarantined(
    monkeypatch: pytest.MonkeyPatch,
    standin: StandinUwsgi,
    runner: SpoolerRunner,
    spool_dir: Path,
    entries: Mapping[bytes, bytes],
) -> None:
    path = spool_dir / "uwsgi_spoolfile_on_foreign_1"
    path.write_bytes(encode_file(entries))
    monkeypatch.chdir(spool_dir)
    assert standin.spooler(spool_dict(path)) == SPOOL_OK  # uWSGI unlinks the original
    kept = spool_dir / QUARANTINE_DIR / path.name
    assert kept.exists() and os.path.samefile(kept, path)  # a hard link: nothing copied
    assert len(CALLS) == 0


def _non_utf8_file(directory: Path) -> bytes:
    """A foreign spool file whose name is not UTF-8; its path as uWSGI gives it."""
    name = os.fsencode(directory) + b"/uwsgi_spoolfile_on_\xff\xfe"
    with open(name, "wb") as out:
        out.write(encode_file({b"ud": b"foreign"}))
    os.utime(name, (1000, 1000))
    return name


@pytest.mark.parametrize("served", [True, False], ids=["spool-dir", "unserved-dir"])
def test_a_name_that_is_not_utf8_does_not_raise(
    monkeypatch: pytest.MonkeyPatch,
    standin: StandinUwsgi,
    runner: SpoolerRunner,
    spool_dir: Path,
    tmp_path: Path,
    served: bool,
) -> None:
    directory = spool_dir if served else tmp_path.resolve()
    name = _non_utf8_file(directory)
    monkeypatch.chdir(directory)
    spool = {b"ud": b"foreign", "spooler_task_name": name}
    assert standin.spooler(spool) in (SPOOL_OK, SPOOL_RETRY)


def test_a_foreign_file_with_a_name_that_is_not_utf8_is_quarantined(
    monkeypatch: pytest.MonkeyPatch, standin: StandinUwsgi, runner: SpoolerRunner, spool_dir: Path
) -> None:
    name = _non_utf8_file(spool_dir)
    monkeypatch.chdir(spool_dir)
    before = time.time()
    code = standin.spooler({b"ud": b"foreign", "spooler_task_name": name})
    kept = os.fsencode(spool_dir / QUARANTINE_DIR) + b"/uwsgi_spoolfile_on_\xff\xfe"
    # Like any foreign file: kept aside and dropped, or at least put off (not rescanned).
    assert (code == SPOOL_OK and os.path.exists(kept)) or (
        code == SPOOL_RETRY and os.stat(name).st_mtime >= before
    )


def test_two_apps_in_one_process_each_get_their_own_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path.resolve()
    standin = install(monkeypatch, StandinUwsgi(root / "a" / "spool", spooler_process=True))
    store_a = make_store(root / "a")
    runner_a = make_runner(make_app(root / "a", name="app-a"), store_a, REG)
    standin.opt["spooler"] = os.fsencode(root / "b" / "spool")
    store_b = make_store(root / "b")
    runner_b = make_runner(make_app(root / "b", name="app-b"), store_b, REG)
    dispatcher = standin.spooler
    assert isinstance(dispatcher, Dispatcher)
    assert set(dispatcher.handlers) == {runner_a.spool_path, runner_b.spool_path}

    job_a = submit_job(runner_a, store_a, "d.record", ["a"], now=time.time())
    job_b = submit_job(runner_b, store_b, "d.record", ["b"], now=time.time())
    assert job_a.spool_file is not None and job_b.spool_file is not None
    monkeypatch.chdir(runner_b.spool_path)
    assert dispatcher(spool_dict(Path(runner_b.spool_path) / job_b.spool_file)) == SPOOL_OK
    monkeypatch.chdir(runner_a.spool_path)
    assert dispatcher(spool_dict(Path(runner_a.spool_path) / job_a.spool_file)) == SPOOL_OK

    assert CALLS.seen == [{"value": "b", "app": "app-b"}, {"value": "a", "app": "app-a"}]
    done_a, done_b = store_a.get(job_a.id), store_b.get(job_b.id)
    assert done_a is not None and done_a.result == "app-a"
    assert done_b is not None and done_b.result == "app-b"
    assert store_a.get(job_b.id) is None and store_b.get(job_a.id) is None


def test_an_unavailable_store_puts_the_file_off(
    monkeypatch: pytest.MonkeyPatch, standin: StandinUwsgi, tmp_path: Path, spool_dir: Path
) -> None:
    unreachable = SQLiteStore(str(tmp_path / "missing" / "deeper" / "jobs.db"))
    runner = make_runner(make_app(tmp_path), unreachable, REG)
    entries, body = to_spool_entries("j" * 32, "d.record", '{"args":[1],"kwargs":{}}')
    name = spool_file_name("j" * 32)
    runner.directory.write(name, entries, body, 1000)
    with pytest.raises(StoreUnavailable):
        unreachable.get("j" * 32)
    monkeypatch.chdir(spool_dir)
    before = time.time()
    assert standin.spooler(spool_dict(spool_dir / name)) == SPOOL_RETRY
    assert _mtime(spool_dir / name) >= before + ERROR_PAUSE
    assert len(CALLS) == 0


class Exploding:
    def __init__(self, path: str) -> None:
        self.spool_path = path

    def handle(self, spool: Mapping[Any, Any], name: str, directory: str) -> int:
        raise RuntimeError("handler bug")


def test_an_exception_in_the_handler_never_escapes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = tmp_path.resolve()
    path = directory / "uwsgi_spoolfile_on_x"
    path.write_bytes(encode_file({b"x": b"y"}))
    os.utime(path, (1000, 1000))
    dispatcher = Dispatcher()
    dispatcher.handlers[str(directory)] = Exploding(str(directory))
    monkeypatch.chdir(directory)
    before = time.time()
    assert dispatcher(spool_dict(path)) == SPOOL_RETRY
    assert _mtime(path) >= before + ERROR_PAUSE


def test_install_outside_uwsgi_does_nothing() -> None:
    """Without a ``uwsgi`` module there is no callable to set."""
    assert runtime.uwsgi_module() is None
    dispatcher.install(Exploding("/nowhere"))  # no error, nothing to install into


def test_install_keeps_one_dispatcher(standin: StandinUwsgi, runner: SpoolerRunner) -> None:
    first = standin.spooler
    dispatcher.install(Exploding("/elsewhere"))
    assert standin.spooler is first
    assert set(first.handlers) == {runner.spool_path, "/elsewhere"}


def test_a_spool_directory_behind_a_symlink_is_served(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path.resolve()
    (root / "release-1").mkdir()
    (root / "current").symlink_to(root / "release-1")
    linked = root / "current" / "spool"  # as uwsgi.ini names it
    standin = install(monkeypatch, StandinUwsgi(linked, spooler_process=True))
    store = make_store(root)
    runner = make_runner(make_app(root), store, REG)
    job = submit_job(runner, store, "d.record", ["linked"], now=time.time())
    assert job.spool_file is not None
    # uWSGI realpath()s the spooler directory (core/spooler.c uwsgi_new_spooler), chdir()s
    # into it and names the file by that path.
    real = root / "release-1" / "spool"
    monkeypatch.chdir(real)
    assert standin.spooler(spool_dict(real / job.spool_file)) == SPOOL_OK
    done = store.get(job.id)
    assert done is not None and done.state is JobState.SUCCEEDED
