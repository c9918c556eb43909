"""Spoolers dying under jobs, and whole-server stops: every accepted job still ends visibly.

A crash of the job's own spooler (kill -9, OOM, harakiri) uses up an attempt;
a stop, reload or kill of the whole server does not.
"""

from __future__ import annotations

import collections
import os
import signal
from pathlib import Path

import pytest

from .support import UwsgiServer, running_server, wait_for

pytestmark = pytest.mark.e2e


def test_spooler_killed_mid_job_runs_it_again_as_a_new_attempt(server: UwsgiServer) -> None:
    job_id = server.enqueue("blocks_first", "killed", 60)
    first = wait_for(lambda: server.records_of("killed"), 10, "the job to start")[0]
    assert first["pid"] in server.spooler_pids()
    os.kill(first["pid"], signal.SIGKILL)
    job = server.wait_job(job_id, timeout=30)
    assert job["state"] == "succeeded"
    assert job["attempts"] == 2
    assert job["result"] == 2
    runs = server.records_of("killed")
    assert len(runs) == 2
    assert runs[1]["pid"] != first["pid"]
    assert f"job {job_id} will retry" in server.log_text()
    assert "WorkerLost" in server.log_text()


def test_job_that_kills_its_spooler_every_time_ends_failed(server: UwsgiServer) -> None:
    poison = server.enqueue("kills_itself", "suicide")
    healthy = [server.enqueue("add", i, 2) for i in range(20)]
    job = server.wait_job(poison, timeout=60)
    assert job["state"] == "failed"
    assert job["attempts"] == 3
    assert job["error"]["type"] == "WorkerLost"
    assert "died" in job["error"]["message"]
    assert len(server.records_of("suicide")) == 3
    assert server.spool_file_of(poison) is None
    for i, job_id in enumerate(healthy):
        assert server.wait_job(job_id)["result"] == i + 2
    wait_for(lambda: server.get("/healthz").status == 200, 10, "all spoolers back")


def test_hung_job_is_killed_by_spooler_harakiri(tmp_path: Path) -> None:
    with running_server(tmp_path, SPOOLKIT_SPOOLER_HARAKIRI="2") as server:
        job_id = server.enqueue("sleeper", "hung", 60, max_attempts=2)
        job = server.wait_job(job_id, timeout=60)
        assert job["state"] == "failed"
        assert job["attempts"] == 2
        assert job["error"]["type"] == "Timeout"
        assert "timed out after 2 s" in job["error"]["message"]
        assert len(server.records_of("hung")) == 2


def _drain_across(server: UwsgiServer, interrupt: str, count: int = 300) -> None:
    """Queue ``count`` jobs, interrupt the server mid-drain, start it, check every job."""
    ids = [server.enqueue("sleeper", f"drain-{i}", 0.02) for i in range(count)]
    # Interrupt while jobs are running and most are still queued.
    wait_for(
        lambda: len(list(server.records.glob("drain-*.jsonl"))) >= 10, 20, "the drain to start"
    )
    if interrupt == "reload":
        server.reload()
    else:
        if interrupt == "sigterm":
            server.stop(signal.SIGTERM)
        else:
            server.kill_tree()
        server.start()

    def all_finished() -> bool:
        jobs = server.get(f"/jobs?limit={count + 10}").json()["jobs"]
        states = collections.Counter(job["state"] for job in jobs if job["id"] in set(ids))
        return states.get("succeeded", 0) == count

    wait_for(all_finished, 120, f"all {count} jobs to succeed after {interrupt}", interval=0.5)
    jobs = [server.job(job_id) for job_id in ids]
    assert {job["state"] for job in jobs} == {"succeeded"}
    # An interruption by a stop or reload never uses up an attempt.
    assert {job["attempts"] for job in jobs} == {1}
    runs = collections.Counter(
        run["job"] for i in range(count) for run in server.records_of(f"drain-{i}")
        if run["event"] == "start"
    )  # fmt: skip
    assert set(runs) == set(ids)
    duplicates = sum(n - 1 for n in runs.values())
    print(f"{interrupt}: {count} jobs, {duplicates} ran twice (at-least-once)")
    assert duplicates <= 2 * 2  # at most the jobs running on the 2 spoolers, per interruption
    assert server.get("/jobs?state=running").json()["jobs"] == []
    assert server.spool_files() == []


@pytest.mark.parametrize("interrupt", ["sigterm", "reload", "kill-tree"])
def test_full_restart_with_hundreds_of_queued_jobs(tmp_path: Path, interrupt: str) -> None:
    server = UwsgiServer(tmp_path)
    server.start()
    try:
        _drain_across(server, interrupt)
    finally:
        server.stop()
