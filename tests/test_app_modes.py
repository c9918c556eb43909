"""Outside uWSGI: eager mode (inline) and local mode (a bounded thread pool), same API and states."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from spoolkit import JobState, SpoolKit, current_job
from spoolkit.context import JobContext

from .support import make_app, wait_for

jobs = importlib.import_module("tests.jobs")


def test_eager_runs_inside_delay_with_retries(eager_app: Flask, tmp_path: Path) -> None:
    with eager_app.app_context():
        done = jobs.add.delay(2, 3)
        assert (done.state, done.result, done.attempts) == (JobState.SUCCEEDED, 5, 1)
        flaky = jobs.flaky.delay("eager-flaky", 2)
        assert (flaky.state, flaky.attempts, flaky.result) == (JobState.SUCCEEDED, 3, 3)
        failed = jobs.always_fails.delay("eager-fail")
        assert (failed.state, failed.attempts) == (JobState.FAILED, 3)
        assert failed.error is not None and failed.error.type == "ValueError"
        later = jobs.mark.apply_async(("eager-later",), countdown=3600)
        assert later.state is JobState.SUCCEEDED  # eager ignores countdown, documented


def test_eager_api_round_trip(eager_client: FlaskClient) -> None:
    response = eager_client.post("/jobs", json={"task": "tests.jobs.add", "args": [1, 2]})
    assert response.status_code == 202
    location = response.headers["Location"]
    got = eager_client.get(location)
    assert got.status_code == 200
    assert got.json is not None and got.json["result"] == 3
    assert eager_client.get("/healthz").json["mode"] == "eager"  # type: ignore[index]


def test_current_job_outside_a_job_is_an_error() -> None:
    assert not current_job
    with pytest.raises(RuntimeError, match="only available while a job runs"):
        _ = current_job.id


def test_progress_is_validated(eager_app: Flask) -> None:
    context = JobContext("j", "t", 1, 3, lambda progress: None)
    with pytest.raises(TypeError):
        context.progress("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        context.progress(-1)
    with pytest.raises(TypeError):
        context.progress(1, 2, message=3)  # type: ignore[arg-type]


def test_progress_writes_are_coalesced_but_the_last_is_kept() -> None:
    written: list[float] = []
    context = JobContext("j", "t", 1, 3, lambda progress: written.append(progress.done))
    for done in range(1, 1001):
        context.progress(done, 2000)
    context.flush()
    assert written[0] == 1 and written[-1] == 1000
    assert len(written) < 10


@pytest.fixture
def local_app(tmp_path: Path) -> Flask:
    return make_app(tmp_path, SPOOLKIT_LOCAL_WORKERS=2)


def test_local_mode_runs_jobs_in_threads(
    local_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    client = local_app.test_client()
    health = client.get("/healthz").json
    assert health is not None
    assert (health["mode"], health["local_workers"], health["status"]) == ("local", 2, "ok")
    with local_app.app_context():
        queued = jobs.sleeper.delay("local-sleep", 0.3)
        assert queued.state is JobState.QUEUED
        kit = SpoolKit()  # methods act on current_app
        done = wait_for(
            lambda: (job := kit.get_job(queued.id)).is_finished and job, 10, "the local job"
        )
        assert done.state is JobState.SUCCEEDED and done.result == "local-sleep"
        flaky = jobs.flaky.delay("local-flaky", 1)
        assert (
            wait_for(
                lambda: (job := kit.get_job(flaky.id)).is_finished and job, 10, "retry"
            ).attempts
            == 2
        )


def test_local_mode_honours_countdown_and_cancel(local_app: Flask) -> None:
    with local_app.app_context():
        kit = SpoolKit()  # methods act on current_app
        start = time.time()
        later = jobs.mark.apply_async(("local-later",), countdown=1.0)
        cancelled = jobs.mark.apply_async(("local-cancelled",), countdown=1.0)
        assert kit.cancel(cancelled.id).state is JobState.CANCELLED
        done = wait_for(lambda: (job := kit.get_job(later.id)).is_finished and job, 10, "later")
        assert done.started_at is not None and done.started_at >= start + 1.0
        records = Path(local_app.config["SPOOLKIT_DATABASE"]).parent
        assert not (records / "local-cancelled.jsonl").exists()


def test_local_mode_bounds_concurrency(tmp_path: Path) -> None:
    app = make_app(tmp_path, SPOOLKIT_LOCAL_WORKERS=2)
    with app.app_context():
        kit = SpoolKit()  # methods act on current_app
        ids = [jobs.sleeper.delay(f"bounded-{i}", 0.2).id for i in range(6)]
        for job_id in ids:
            wait_for(lambda j=job_id: kit.get_job(j).is_finished, 10, "bounded jobs")
        spans = sorted(
            (kit.get_job(job_id).started_at, kit.get_job(job_id).finished_at) for job_id in ids
        )
    most = max(sum(1 for s, f in spans if s <= start < f) for start, _ in spans)  # type: ignore[operator]
    assert most <= 2
