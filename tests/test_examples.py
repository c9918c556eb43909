"""The runnable examples in examples/ (one per seed approach) on real uWSGI.

Each example is served as its README says: the repository's uwsgi.ini, with
``--pythonpath <example dir> --module app:app`` (uWSGI puts a later
``--pythonpath`` first in ``sys.path``, so the example's ``app`` and ``tasks``
win over the repository's). The example tasks write a line per run under
``$EXAMPLE_RECORDS`` (the server's record directory); the seeds' 5 s
durations are 1 s here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support import REPO, Response, UwsgiServer, wait_for

pytestmark = pytest.mark.e2e

EXAMPLES = REPO / "examples"


def example_server(base: Path, name: str, **env: str) -> UwsgiServer:
    return UwsgiServer(
        base,
        extra_args=("--pythonpath", str(EXAMPLES / name), "--module", "app:app"),
        SPOOLKIT_IMPORTS="",  # the example alone, without the suite's tests.jobs
        EXAMPLE_RECORDS=str(base / "records"),
        **env,
    )


def serve(factory: pytest.TempPathFactory, name: str, **env: str) -> Iterator[UwsgiServer]:
    server = example_server(factory.mktemp(name), name, **env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def spool_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UwsgiServer]:
    yield from serve(tmp_path_factory, "uwsgidecorators_spool")


@pytest.fixture(scope="module")
def tasks_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UwsgiServer]:
    yield from serve(tmp_path_factory, "uwsgi_tasks")


@pytest.fixture(scope="module")
def thread_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UwsgiServer]:
    yield from serve(tmp_path_factory, "uwsgi_thread")


@pytest.fixture(scope="module")
def async_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UwsgiServer]:
    yield from serve(tmp_path_factory, "async_api", ASYNC_API_SECONDS="1")


def jobs_of(server: UwsgiServer, task: str) -> dict[str, dict[str, Any]]:
    jobs = server.get(f"/jobs?task={task}&limit=1000").json()["jobs"]
    return {job["id"]: job for job in jobs}


def started_job(server: UwsgiServer, path: str, task: str) -> dict[str, Any]:
    """GET a seed route (it answers only ``{"started": true}``) and return the one job
    it queued: the library call records the row before it returns."""
    before = set(jobs_of(server, task))
    answer = server.get(path)
    assert (answer.status, answer.json()) == (200, {"started": True}), answer
    new = [job for job_id, job in jobs_of(server, task).items() if job_id not in before]
    assert len(new) == 1, new
    return new[0]


# -- uwsgidecorators @spool: the blog's spool_task with prepare_spooler_args ------------------


def test_blog_spool_task_is_a_kit_job(spool_example: UwsgiServer) -> None:
    before = len(spool_example.records_of("spool_task"))
    job = started_job(spool_example, "/uwsgi_spool/1", "tasks.spool_task")
    assert job["origin"] == "uwsgidecorators"
    done = spool_example.wait_job(job["id"])
    assert (done["state"], done["attempts"]) == ("succeeded", 1)
    assert [r["duration"] for r in spool_example.records_of("spool_task")[before:]] == [1]


def test_blog_spool_task_at_variant_waits_3_seconds(spool_example: UwsgiServer) -> None:
    before = len(spool_example.records_of("spool_task"))
    asked = time.time()
    job = started_job(spool_example, "/uwsgi_spool_at/1", "tasks.spool_task")
    # The row exists and waits for its time; nothing ran yet.
    assert (job["state"], job["origin"]) == ("scheduled", "uwsgidecorators")
    assert len(spool_example.records_of("spool_task")) == before
    done = spool_example.wait_job(job["id"], timeout=20)
    assert (done["state"], done["attempts"]) == ("succeeded", 1)
    runs = spool_example.records_of("spool_task")[before:]
    assert len(runs) == 1
    # at = int(asked) + 3, then the 1 s loop: the run ended at least 3 s after the call.
    assert runs[0]["time"] >= int(asked) + 3


# -- uwsgi-tasks ------------------------------------------------------------------------------


def test_blog_uwsgi_tasks_task_is_a_kit_job(tasks_example: UwsgiServer) -> None:
    job = started_job(tasks_example, "/uwsgi_tasks/1", "tasks.uwsgi_tasks_task")
    assert job["origin"] == "uwsgi-tasks"
    done = tasks_example.wait_job(job["id"])
    assert (done["state"], done["attempts"]) == ("succeeded", 1)
    assert [r["duration"] for r in tasks_example.records_of("uwsgi_tasks_task")] == [1]


# -- uwsgidecorators @thread: no job, a thread in the web worker ------------------------------


def test_blog_uwsgi_thread_runs_in_a_web_worker_and_is_no_job(
    thread_example: UwsgiServer,
) -> None:
    answer = thread_example.get("/uwsgi_thread/1")
    assert (answer.status, answer.json()) == (200, {"started": True})
    runs = wait_for(
        lambda: thread_example.records_of("uwsgi_task"), 15, "the @thread task to finish"
    )
    assert [r["duration"] for r in runs] == [1]
    assert runs[0]["pid"] not in thread_example.spooler_pids()  # it ran in a web worker
    assert thread_example.get("/jobs").json()["jobs"] == []  # and the kit never saw it


# -- @async_api, rewritten on the kit ---------------------------------------------------------


@pytest.mark.parametrize("path", ["some/path", ""])
def test_async_api_answers_202_then_200_with_the_result(
    async_example: UwsgiServer, path: str
) -> None:
    answer = async_example.get(f"/{path}")
    assert answer.status == 202, answer
    job = answer.json()
    assert answer.headers["Location"] == f"/jobs/{job['id']}"
    assert (job["task"], job["origin"]) == ("tasks.catch_all", "spoolkit")
    # The task takes 1 s: the status URL answers 202 until it is done, then 200.
    assert async_example.get(answer.headers["Location"]).status == 202

    def finished() -> Response | None:
        polled = async_example.get(answer.headers["Location"])
        return polled if polled.status == 200 else None

    status = wait_for(finished, 20, "the status URL to answer 200")
    assert status.json()["state"] == "succeeded"
    assert status.json()["result"] == f"The answer is: {path}"
