"""Retries with backoff through the spool file's ``at``, instead of uWSGI's endless SPOOL_RETRY."""

from __future__ import annotations

import pytest

from .support import UwsgiServer, wait_for

pytestmark = pytest.mark.e2e


def test_failing_job_is_retried_until_it_succeeds(server: UwsgiServer) -> None:
    job = server.wait_job(server.enqueue("flaky", "flaky-ok", 2))
    assert job["state"] == "succeeded"
    assert job["attempts"] == 3
    assert job["result"] == 3
    assert job["error"] is None
    assert [run["attempt"] for run in server.records_of("flaky-ok")] == [1, 2, 3]


def test_backoff_delays_each_retry(server: UwsgiServer) -> None:
    # backoff=2.0: the first retry waits 2s +/- 20%, at least 1.6s. Raw uWSGI
    # would run the file again at its next scan, within a second.
    job = server.wait_job(server.enqueue("slow_flaky", "backoff", 2), timeout=30)
    assert job["state"] == "succeeded"
    assert job["attempts"] == 3
    runs = [run["time"] for run in server.records_of("backoff")]
    assert runs[1] - runs[0] >= 1.6
    assert runs[2] - runs[1] >= 3.2  # the second retry waits twice as long


def test_job_that_always_fails_ends_failed_after_max_attempts(server: UwsgiServer) -> None:
    job = server.wait_job(server.enqueue("always_fails", "always"))
    assert job["state"] == "failed"
    assert job["attempts"] == 3
    assert job["max_attempts"] == 3
    assert job["error"]["type"] == "ValueError"
    assert job["error"]["message"] == "boom"
    assert "raise ValueError" in job["error"]["traceback"]
    assert job["finished_at"] is not None
    # Its file is gone: nothing can run it a fourth time.
    assert server.spool_file_of(job["id"]) is None
    assert len(server.records_of("always")) == 3


def test_max_attempts_from_the_request_overrides_the_task(server: UwsgiServer) -> None:
    job = server.wait_job(server.enqueue("always_fails", "always-once", max_attempts=1))
    assert job["state"] == "failed"
    assert job["attempts"] == 1
    assert len(server.records_of("always-once")) == 1


def test_retry_exception_uses_its_countdown(server: UwsgiServer) -> None:
    job = server.wait_job(server.enqueue("asks_retry", "asks", 2))
    assert job["state"] == "succeeded"
    assert job["attempts"] == 2
    first, second = server.records_of("asks")
    assert second["time"] - first["time"] >= 2.0
    assert "will retry in" in server.log_text()


def test_poison_job_beside_healthy_ones(server: UwsgiServer) -> None:
    poison = server.enqueue("always_fails", "poison")
    healthy = [server.enqueue("add", i, 1) for i in range(20)]
    for i, job_id in enumerate(healthy):
        job = server.wait_job(job_id)
        assert (job["state"], job["result"]) == ("succeeded", i + 1)
    assert server.wait_job(poison)["state"] == "failed"


def test_scheduled_retry_shows_scheduled_state(server: UwsgiServer) -> None:
    job_id = server.enqueue("asks_retry", "asks-state", 3)
    waiting = wait_for(
        lambda: (job := server.job(job_id))["state"] == "scheduled" and job,
        10,
        "the job to wait for its retry",
    )
    assert waiting["attempts"] == 1
    assert waiting["error"]["type"] == "Retry"
    assert waiting["scheduled_for"] > waiting["started_at"]
    assert server.wait_job(job_id)["state"] == "succeeded"
