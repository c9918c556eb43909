"""Code written for uwsgidecorators and uwsgi-tasks runs under the kit, unchanged,
with the kit's guarantees: a row from the moment it is spooled, bounded retries,
crashes counted, files left by the raw libraries adopted.

The server runs tests/legacy_app.py (the task module imported before or after
``SpoolKit(app)``) with tests/legacy_tasks.py, on the repository's uwsgi.ini
(its housekeeping mule included, which uwsgi-tasks would pick for AUTO tasks).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from uwsgi_tasks.tasks import SpoolerTask

from spoolkit.spoolfile import encode_file

from .support import UwsgiServer, wait_for

pytestmark = pytest.mark.e2e

LEGACY = "tests.legacy_tasks"


def legacy_server(base: Path, order: str, **env: str) -> UwsgiServer:
    return UwsgiServer(
        base,
        extra_args=("--module", "tests.legacy_app:app"),
        LEGACY_IMPORT_ORDER=order,
        SPOOLKIT_IMPORTS="tests.jobs",
        **env,
    )


@pytest.fixture(scope="module", params=["before", "after"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UwsgiServer]:
    instance = legacy_server(tmp_path_factory.mktemp(f"legacy-{request.param}"), request.param)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def spool(server: UwsgiServer, style: str, tag: str, **data: Any) -> dict[str, Any]:
    answer = server.post(f"/legacy/{style}", {"tag": tag, **data})
    assert answer.status == 200, answer
    return dict(answer.json())


def job_of(server: UwsgiServer, task: str, tag: str) -> dict[str, Any]:
    """The one job of ``task`` whose run recorded ``tag`` (or the newest, before it ran)."""
    jobs = server.get(f"/jobs?task={LEGACY}.{task}&limit=1000").json()["jobs"]
    ran = {record.get("job") for record in server.records_of(tag)}
    mine = [job for job in jobs if job["id"] in ran] or jobs[:1]
    assert mine, f"no job of {task}"
    return dict(mine[0])


def finished(server: UwsgiServer, task: str, tag: str, timeout: float = 30) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        if not server.records_of(tag):
            return None
        job = server.job(job_of(server, task, tag)["id"])
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout, f"the {task} job of {tag} to finish")


# -- uwsgidecorators ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "style", ["call", "spool-dict", "spool-kwargs", "function-spool", "prepare"]
)
def test_every_call_style_of_spool_runs_once_and_is_a_job(server: UwsgiServer, style: str) -> None:
    tag = f"ud-{style}-{server.generation}-{time.monotonic_ns()}"
    answer = spool(server, style, tag)
    assert answer["returned"].startswith("b'") and answer["job"], answer  # a spool file path
    job = server.wait_job(answer["job"])
    assert (job["state"], job["attempts"]) == ("succeeded", 1)
    assert (job["task"], job["origin"]) == (f"{LEGACY}.spool_task", "uwsgidecorators")
    records = server.records_of(tag)
    assert len(records) == 1
    assert "tag" in records[0]["keys"] and "ud_spool_func" in records[0]["keys"]


def test_a_spooled_job_is_listed_while_it_waits(server: UwsgiServer) -> None:
    """The seed's `at` variant: a row from the moment it is spooled, scheduled, then run."""
    tag = f"ud-at-{time.monotonic_ns()}"
    answer = spool(server, "prepare-at", tag)
    listed = {job["id"]: job for job in server.get("/jobs?state=scheduled").json()["jobs"]}
    assert listed[answer["job"]]["origin"] == "uwsgidecorators"
    assert server.records_of(tag) == []
    job = server.wait_job(answer["job"], timeout=30)
    assert job["state"] == "succeeded"
    assert server.records_of(tag)[0]["time"] >= time.time() - 30


def test_pass_arguments_and_the_body_path_carry_100_kb(server: UwsgiServer) -> None:
    tag = f"ud-pass-{time.monotonic_ns()}"
    job = server.wait_job(spool(server, "pass-arguments", tag, size=100_000)["job"])
    assert job["state"] == "succeeded"
    assert server.records_of(tag)[0]["big"] == 100_000
    assert server.records_of(tag)[0]["value"] == 7
    tag = f"ud-pass-spool-{time.monotonic_ns()}"
    assert server.wait_job(spool(server, "pass-arguments-spool", tag)["job"])["state"] == (
        "succeeded"
    )
    tag = f"ud-body-{time.monotonic_ns()}"
    assert server.wait_job(spool(server, "body", tag, size=100_000)["job"])["state"] == (
        "succeeded"
    )
    assert server.records_of(tag)[0]["body"] == 100_000


def test_priority_goes_to_its_directory(server: UwsgiServer) -> None:
    tag = f"ud-priority-{time.monotonic_ns()}"
    job = server.wait_job(spool(server, "priority", tag)["job"])
    assert (job["state"], job["priority"]) == ("succeeded", 5)


def test_spooler_key_naming_another_directory_is_refused(server: UwsgiServer) -> None:
    tag = f"ud-spooler-{time.monotonic_ns()}"
    answer = server.post("/legacy/spooler", {"tag": tag, "spooler": "/tmp/elsewhere"})
    assert answer.status == 500 and "ConfigurationError" in answer.json()["error"]
    answer = spool(server, "spooler", tag, spooler=str(server.spool_dir))
    assert server.wait_job(answer["job"])["state"] == "succeeded"


def test_spool_retry_is_bounded_with_backoff(server: UwsgiServer) -> None:
    tag = f"ud-retry-{time.monotonic_ns()}"
    job = server.wait_job(spool(server, "raw", tag, retries=100)["job"], timeout=60)
    assert (job["state"], job["attempts"]) == ("failed", 3)
    assert job["error"]["type"] == "Retry"
    runs = [record["time"] for record in server.records_of(tag)]
    assert len(runs) == 3
    assert runs[1] - runs[0] >= 0.7 and runs[2] - runs[1] >= 1.5  # backoff 1 s, 2 s (+-20 %)


def test_spool_retry_then_ok_and_spool_ignore(server: UwsgiServer) -> None:
    tag = f"ud-retry-ok-{time.monotonic_ns()}"
    job = server.wait_job(spool(server, "raw", tag, retries=1)["job"], timeout=30)
    assert (job["state"], job["attempts"]) == ("succeeded", 2)
    tag = f"ud-ignore-{time.monotonic_ns()}"
    job = server.wait_job(spool(server, "raw", tag, ignore=True)["job"])
    assert (job["state"], job["attempts"]) == ("failed", 1)
    assert "SPOOL_IGNORE" in job["error"]["message"]


def test_an_exception_is_retried_with_backoff_then_fails(server: UwsgiServer) -> None:
    tag = f"ud-raises-{time.monotonic_ns()}"
    job = server.wait_job(spool(server, "raises", tag)["job"], timeout=60)
    assert (job["state"], job["attempts"], job["error"]["type"]) == ("failed", 3, "ValueError")
    assert len(server.records_of(tag)) == 3


def test_a_raw_job_that_kills_its_spooler_ends_failed(server: UwsgiServer) -> None:
    tag = f"ud-kills-{time.monotonic_ns()}"
    job = server.wait_job(spool(server, "kills", tag)["job"], timeout=90)
    assert (job["state"], job["attempts"]) == ("failed", 3)
    assert job["error"]["type"] == "WorkerLost"
    assert len(server.records_of(tag)) == 3


def test_spoolforever_runs_again_and_again(server: UwsgiServer) -> None:
    tag = f"ud-forever-{time.monotonic_ns()}"
    spool(server, "forever", tag)
    wait_for(lambda: len(server.records_of(tag)) >= 3, 30, "three runs of @spoolforever")
    jobs = server.get(f"/jobs?task={LEGACY}.forever&state=succeeded").json()["jobs"]
    assert len(jobs) >= 2  # each run is a job of its own


# -- uwsgi-tasks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "task"),
    [("tasks-spooler", "tasks_spooler"), ("tasks-auto", "tasks_auto"),
     ("tasks-mule", "tasks_mule")],
)  # fmt: skip
def test_uwsgi_tasks_executors_all_reach_a_spooler(
    server: UwsgiServer, style: str, task: str
) -> None:
    """AUTO and MULE would go to the kit's housekeeping mule, which reads no messages."""
    tag = f"{style}-{time.monotonic_ns()}"
    spool(server, style, tag)
    job = finished(server, task, tag)
    assert (job["state"], job["attempts"], job["origin"]) == ("succeeded", 1, "uwsgi-tasks")
    assert len(server.records_of(tag)) == 1


def test_uwsgi_tasks_retry_count_and_timeout_are_kept(server: UwsgiServer) -> None:
    tag = f"tasks-retry-{time.monotonic_ns()}"
    spool(server, "tasks-retry", tag)
    wait_for(lambda: len(server.records_of(tag)) >= 3, 30, "three runs")
    job = finished(server, "tasks_retry", tag)
    assert (job["state"], job["attempts"], job["max_attempts"]) == ("succeeded", 3, 3)
    runs = [record["time"] for record in server.records_of(tag)]
    assert all(later - earlier >= 0.9 for earlier, later in itertools.pairwise(runs))


def test_uwsgi_tasks_at_priority_and_body(server: UwsgiServer) -> None:
    tag = f"tasks-later-{time.monotonic_ns()}"
    spool(server, "tasks-later", tag)
    waiting = job_of(server, "tasks_later", tag)
    assert waiting["state"] == "scheduled" and server.records_of(tag) == []
    assert finished(server, "tasks_later", tag)["state"] == "succeeded"
    tag = f"tasks-priority-{time.monotonic_ns()}"
    spool(server, "tasks-priority", tag)
    assert finished(server, "tasks_priority", tag)["priority"] == 3
    tag = f"tasks-big-{time.monotonic_ns()}"
    spool(server, "tasks-big", tag, size=100_000)
    assert finished(server, "tasks_big", tag)["state"] == "succeeded"
    assert server.records_of(tag)[0]["size"] == 100_000


def test_uwsgi_tasks_exception_is_retried_not_dropped(server: UwsgiServer) -> None:
    tag = f"tasks-raises-{time.monotonic_ns()}"
    spool(server, "tasks-raises", tag)
    wait_for(lambda: len(server.records_of(tag)) >= 3, 60, "three attempts")
    job = finished(server, "tasks_raises", tag)
    assert (job["state"], job["attempts"], job["error"]["type"]) == ("failed", 3, "ValueError")


# -- side by side, and files left before the kit -----------------------------------------------


def test_kit_jobs_and_library_jobs_drain_side_by_side(server: UwsgiServer) -> None:
    tags = [f"mixed-{i}-{time.monotonic_ns()}" for i in range(10)]
    kit = [server.enqueue("mark", tag) for tag in tags[:5]]
    library = [spool(server, "call", tag)["job"] for tag in tags[5:]]
    for job_id in kit + library:
        assert server.wait_job(job_id)["state"] == "succeeded"
    assert all(len(server.records_of(tag)) == 1 for tag in tags)


def test_files_written_by_the_raw_libraries_run_after_the_kit_starts(tmp_path: Path) -> None:
    server = legacy_server(tmp_path, "before")
    server.spool_dir.mkdir(parents=True, exist_ok=True)
    decorators_tag, tasks_tag = "raw-ud-file", "raw-ut-file"
    message = {b"ud_spool_func": b"spool_task", b"ud_spool_ret": b"-2",
               b"tag": decorators_tag.encode()}  # fmt: skip
    server.drop_spool_file("uwsgi_spoolfile_on_host_1_1_1_1_1", encode_file(message))
    content = SpoolerTask(function=f"{LEGACY}.tasks_spooler", args=(tasks_tag, 9), kwargs={})
    server.drop_spool_file(
        "uwsgi_spoolfile_on_host_1_1_1_1_2", encode_file(content.get_message_content())
    )
    with server:
        ud = finished(server, "spool_task", decorators_tag)
        ut = finished(server, "tasks_spooler", tasks_tag)
        assert (ud["state"], ud["origin"]) == ("succeeded", "uwsgidecorators")
        assert (ut["state"], ut["origin"]) == ("succeeded", "uwsgi-tasks")
        assert server.records_of(tasks_tag)[0]["value"] == 9
        assert server.spool_files() == []
