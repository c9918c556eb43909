"""Scheduling (at, countdown), cancellation, manual retry and priorities on real spoolers."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from .support import UwsgiServer, running_server, wait_for

pytestmark = pytest.mark.e2e

# A job may start up to ~2s after its time (whole-second spool resolution plus
# one spooler-frequency tick), never before.
LATE_MARGIN = 2.5


def _started(server: UwsgiServer, tag: str) -> float:
    runs = wait_for(lambda: server.records_of(tag), 15, f"{tag} to run")
    assert len(runs) == 1
    return float(runs[0]["time"])


def test_countdown_is_honoured_never_early(server: UwsgiServer) -> None:
    before = time.time()
    job_id = server.enqueue("mark", "countdown", countdown=2.3)
    job = server.job(job_id)
    assert job["state"] == "scheduled"
    started = _started(server, "countdown")
    assert started >= before + 2.3
    assert started <= before + 2.3 + LATE_MARGIN
    assert server.wait_job(job_id)["state"] == "succeeded"


def test_at_as_unix_seconds(server: UwsgiServer) -> None:
    at = time.time() + 2.5
    server.enqueue("mark", "at-unix", at=at)
    started = _started(server, "at-unix")
    assert at <= started <= at + LATE_MARGIN


def test_at_as_iso_without_zone_is_utc(server: UwsgiServer) -> None:
    at = time.time() + 2.0
    naive_utc = datetime.fromtimestamp(at, tz=UTC).replace(tzinfo=None).isoformat()
    job_id = server.enqueue("mark", "at-iso", at=naive_utc)
    assert server.job(job_id)["scheduled_for"] == naive_utc + "Z"
    started = _started(server, "at-iso")
    assert at <= started <= at + LATE_MARGIN


def test_far_future_jobs_and_long_retries_wait_in_the_store_and_run_on_time(
    server: UwsgiServer,
) -> None:
    """Beyond SPOOLKIT_SPOOL_AHEAD (10 s) a job has no spool file until it is nearly due."""
    before = time.time()
    far = server.enqueue("mark", "far", countdown=12.5)
    retried = server.enqueue("asks_retry", "retry-far", 12)  # Retry(countdown=12) on attempt 1
    assert server.spool_file_of(far) is None
    assert server.job(far)["state"] == "scheduled"
    waiting = wait_for(lambda: (job := server.job(retried))["state"] == "scheduled" and job, 10,
                       "the retry to wait")  # fmt: skip
    assert waiting["attempts"] == 1
    # Its file goes (uWSGI unlinks it once the attempt returns, just after the outcome
    # is recorded); the row remembers the job.
    wait_for(lambda: server.spool_file_of(retried) is None, 5, "the retried job's file to go")
    started = _started(server, "far")
    assert before + 12.5 <= started <= before + 12.5 + LATE_MARGIN
    job = server.wait_job(retried, timeout=30)
    assert job["state"] == "succeeded" and job["attempts"] == 2
    first, second = server.records_of("retry-far")
    assert 12 <= second["time"] - first["time"] <= 12 + LATE_MARGIN


def test_at_in_the_past_runs_now(server: UwsgiServer) -> None:
    job_id = server.enqueue("mark", "at-past", at=time.time() - 3600)
    assert server.wait_job(job_id)["state"] == "succeeded"


def test_cancel_a_parked_job_means_it_never_runs(server: UwsgiServer) -> None:
    job_id = server.enqueue("mark", "cancelled-parked", countdown=60)
    assert server.spool_file_of(job_id) is None  # far ahead: waits in the store
    assert server.request("DELETE", f"/jobs/{job_id}").json()["state"] == "cancelled"
    assert server.request("DELETE", f"/jobs/{job_id}").status == 409
    assert server.job(job_id)["state"] == "cancelled"
    assert server.records_of("cancelled-parked") == []


def test_cancel_a_scheduled_job_means_it_never_runs(server: UwsgiServer) -> None:
    job_id = server.enqueue("mark", "cancelled", countdown=8)
    assert server.spool_file_of(job_id) is not None
    response = server.request("DELETE", f"/jobs/{job_id}")
    assert response.status == 200
    assert response.json()["state"] == "cancelled"
    # The spooler drops the file at its next scan, not when it would have been due.
    wait_for(lambda: server.spool_file_of(job_id) is None, 10, "the cancelled file to go")
    got = server.get(f"/jobs/{job_id}")
    assert got.status == 200
    assert got.json()["state"] == "cancelled"
    assert server.records_of("cancelled") == []
    again = server.request("DELETE", f"/jobs/{job_id}")
    assert again.status == 409
    assert "cancelled" in again.json()["error"]


def test_cancel_running_or_finished_job_is_a_conflict(server: UwsgiServer) -> None:
    job_id = server.enqueue("sleeper", "busy", 1.5)
    server.wait_job(job_id, states={"running"})
    response = server.request("DELETE", f"/jobs/{job_id}")
    assert response.status == 409
    assert "running" in response.json()["error"]
    assert server.wait_job(job_id)["state"] == "succeeded"
    assert server.request("DELETE", f"/jobs/{job_id}").status == 409


def test_cancel_unknown_job_is_404(server: UwsgiServer) -> None:
    response = server.request("DELETE", "/jobs/no-such-job-0000000")
    assert response.status == 404
    assert "error" in response.json()


def test_retry_a_cancelled_or_failed_job(server: UwsgiServer) -> None:
    job_id = server.enqueue("mark", "retried", countdown=60)
    assert server.request("DELETE", f"/jobs/{job_id}").status == 200
    response = server.post(f"/jobs/{job_id}/retry")
    assert response.status == 202
    assert response.headers["Location"] == f"/jobs/{job_id}"
    job = server.wait_job(job_id)
    assert job["state"] == "succeeded"
    assert job["attempts"] == 1
    assert len(server.records_of("retried")) == 1

    failed = server.wait_job(server.enqueue("always_fails", "retry-failed", max_attempts=1))
    assert failed["state"] == "failed"
    assert server.post(f"/jobs/{failed['id']}/retry").status == 202
    again = server.wait_job(failed["id"])
    assert again["state"] == "failed"
    assert again["attempts"] == 1
    assert len(server.records_of("retry-failed")) == 2
    assert server.post(f"/jobs/{job_id}/retry").status == 409  # succeeded jobs stay succeeded


def test_priority_orders_waiting_jobs(tmp_path: Path) -> None:
    with running_server(tmp_path, SPOOLKIT_SPOOLERS="1") as server:
        blocker = server.enqueue("sleeper", "blocker", 1.5)
        server.wait_job(blocker, states={"running"})
        plain = server.enqueue("mark", "order-plain")
        low = server.enqueue("mark", "order-5", priority=5)
        high = server.enqueue("mark", "order-1", priority=1)
        assert server.spool_file_of(high).parent.name == "01"  # type: ignore[union-attr]
        jobs = {tag: server.wait_job(job_id) for tag, job_id in
                (("plain", plain), ("low", low), ("high", high))}  # fmt: skip
        assert all(job["state"] == "succeeded" for job in jobs.values())
        assert jobs["high"]["started_at"] < jobs["low"]["started_at"] < jobs["plain"]["started_at"]
