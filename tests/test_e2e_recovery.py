"""Spool files that are foreign, tampered with, or gone: quarantined or re-spooled, never lost."""

from __future__ import annotations

import json
import os
import sqlite3
import time

import pytest

from spoolkit.encoding import to_spool_entries
from spoolkit.spoolfile import encode_file
from spoolkit.sqlite import SQLiteStore
from spoolkit.store import NewJob

from .support import UwsgiServer, wait_for

pytestmark = pytest.mark.e2e


def _quarantined(server: UwsgiServer, name: str) -> bool:
    return (server.spool_dir / "quarantine" / name).exists() and not (
        server.spool_dir / name
    ).exists()


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("uwsgi_spoolfile_on_foreign", encode_file({b"foo": b"bar"}), "not a spoolkit spool file"),
        (
            "uwsgi_spoolfile_on_badversion",
            encode_file({b"spoolkit": b"9", b"job": b"x" * 22}),
            "unsupported envelope version",
        ),
        (
            "uwsgi_spoolfile_on_badjson",
            encode_file({b"spoolkit": b"1", b"job": b"a" * 22, b"task": b"t", b"payload": b"{"}),
            "not valid JSON",
        ),
        (
            "uwsgi_spoolfile_on_orphan",
            encode_file(
                to_spool_entries("b" * 22, "tests.jobs.add", '{"args":[1,2],"kwargs":{}}')[0]
            ),
            "no job",
        ),
    ],
)
def test_undecodable_or_orphan_file_is_quarantined(
    server: UwsgiServer, name: str, data: bytes, reason: str
) -> None:
    server.drop_spool_file(name, data)
    wait_for(lambda: _quarantined(server, name), 10, f"{name} to be quarantined")
    assert (server.spool_dir / "quarantine" / name).read_bytes() == data
    log = server.log_text()
    assert f"spool file {name} rejected" in log
    assert reason in log
    assert server.get("/healthz").status == 200
    assert server.wait_job(server.enqueue("add", 1, 1))["result"] == 2


def test_file_naming_an_unregistered_task_fails_its_job_visibly(server: UwsgiServer) -> None:
    job_id = server.enqueue("mark", "tampered", countdown=3)
    path = server.spool_file_of(job_id)
    assert path is not None
    entries, body = to_spool_entries(job_id, "evil.module.run", '{"args":[],"kwargs":{}}')
    mtime = path.stat().st_mtime
    path.write_bytes(encode_file(entries, body))
    os.utime(path, (mtime, mtime))
    job = server.wait_job(job_id, timeout=15)
    assert job["state"] == "failed"
    assert job["error"]["type"] == "SpoolFileRejected"
    assert "evil.module.run" in job["error"]["message"]
    assert (server.spool_dir / "quarantine" / path.name).exists()
    assert server.records_of("tampered") == []


def test_job_whose_spool_file_vanished_is_spooled_again(server: UwsgiServer) -> None:
    job_id = server.enqueue("mark", "vanished", countdown=4)
    path = server.spool_file_of(job_id)
    assert path is not None
    path.unlink()  # as uWSGI does with a torn file, or a careless operator
    job = server.wait_job(job_id, timeout=20)
    assert job["state"] == "succeeded"
    assert len(server.records_of("vanished")) == 1
    assert "delivery" in server.log_text() and "spooled again" in server.log_text()


def test_job_committed_without_a_spool_file_is_spooled(server: UwsgiServer) -> None:
    # A web worker killed between committing the row and writing the file.
    store = SQLiteStore(str(server.database))
    now = time.time()
    job_id = "lostbeforespooling0001"
    store.insert(
        NewJob(id=job_id, task="tests.jobs.mark", payload=json.dumps({"args": ["lost"], "kwargs": {}}),
               max_attempts=3, backoff=0, priority=None, created_at=now, run_at=None, spool_file=None)
    )  # fmt: skip
    job = server.wait_job(job_id, timeout=20)
    assert job["state"] == "succeeded"
    assert len(server.records_of("lost")) == 1


def test_running_job_with_dead_runner_and_no_file_is_requeued(server: UwsgiServer) -> None:
    job_id = server.enqueue("mark", "orphan-running", countdown=8)
    path = server.spool_file_of(job_id)
    assert path is not None
    # Pretend a spooler of an earlier server run died with the job and the file is gone.
    with sqlite3.connect(server.database) as db:
        db.execute(
            "UPDATE spoolkit_jobs SET state='running', attempts=1, runner=?, runner_pid=?, "
            "scheduled_for=NULL, updated_at=0 WHERE id=?",
            (f"{os.uname().nodename}:999999:1:0", 999999, job_id),
        )
    path.unlink()
    job = server.wait_job(job_id, timeout=20)
    assert job["state"] == "succeeded"
    assert len(server.records_of("orphan-running")) == 1
