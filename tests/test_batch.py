"""Bulk enqueue (issue 16): ``task.map``, ``SpoolKit.enqueue_many`` and ``POST /jobs/batch``
record every job of a batch in one transaction, or none of them.

In-process (eager mode: each job runs at its commit) for the API's contract, and
under a real uWSGI, where a batch is parked (no spool file in the request) and the
housekeeping mule spools its jobs; tests/test_multihost_e2e.py posts one to a web
node on PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from spoolkit import BatchItemError, SpoolKit
from spoolkit.runner import stage_each
from spoolkit.store import NewJob
from tests import jobs

from .support import UwsgiServer, make_app


def _count(client: FlaskClient) -> int:
    answer = client.get("/jobs?limit=1000")
    assert answer.status_code == 200
    return len(answer.get_json()["jobs"])


def test_a_batch_is_recorded_whole_and_answered_with_each_location(
    eager_client: FlaskClient,
) -> None:
    answer = eager_client.post("/jobs/batch", json={"jobs": [
        {"task": "tests.jobs.add", "args": [1, 2]},
        {"task": "tests.jobs.add", "kwargs": {"a": 3, "b": 4}, "max_attempts": 2},
        {"task": "tests.jobs.echo", "args": ["x"], "queue": "default"},
    ]})  # fmt: skip
    assert answer.status_code == 202, answer.get_json()
    listed = answer.get_json()["jobs"]
    assert len(listed) == 3
    for job in listed:
        assert job["location"] == f"/jobs/{job['id']}"
        assert eager_client.get(job["location"]).status_code == 200
    results = [eager_client.get(job["location"]).get_json()["result"] for job in listed]
    assert results == [3, 7, "x"]
    assert listed[1]["max_attempts"] == 2


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"task": "tests.jobs.nope"}, "no task"),
        ({"task": "tests.jobs.add", "args": [1]}, "missing a required argument"),
        ({"task": "tests.jobs.add", "args": [1, 2], "countdown": -1}, "countdown"),
        ({"task": "tests.jobs.add", "args": [1, 2], "queue": "no such queue!"}, "queue"),
        ({"task": "tests.jobs.add", "args": [1, 2], "priority": 100}, "priority"),
        ({"task": "tests.jobs.add", "args": [1, 2], "colour": "red"}, "unknown fields: colour"),
        ({"task": "tests.jobs.add", "args": [1, 2], "on_success": "nope"}, "on_success"),
        ("tests.jobs.add", "is an object"),
    ],
)
def test_one_bad_job_refuses_the_whole_batch_naming_its_index(
    tmp_path: Path, bad: Any, message: str
) -> None:
    client = make_app(tmp_path).test_client()  # local mode: at and countdown are checked
    good = {"task": "tests.jobs.add", "args": [1, 1], "countdown": 3600}
    before = _count(client)
    answer = client.post("/jobs/batch", json={"jobs": [good, good, bad, good]})
    assert answer.status_code == 422, answer.get_json()
    body = answer.get_json()
    assert body["index"] == 2 and body["error"].startswith("jobs[2]: ")
    assert message in body["error"]
    assert _count(client) == before  # nothing recorded, nothing ran
    assert client.post("/jobs/batch", json={"jobs": [good, good]}).status_code == 202
    assert _count(client) == before + 2


def test_the_batch_body_and_size_are_checked(tmp_path: Path) -> None:
    client = make_app(tmp_path, SPOOLKIT_EAGER=True, SPOOLKIT_MAX_BATCH=3).test_client()
    one = {"task": "tests.jobs.add", "args": [1, 1]}
    for body in ({"jobs": []}, {"jobs": one}, {"jobs": [one], "extra": 1}, [one], {}):
        answer = client.post("/jobs/batch", json=body)
        assert answer.status_code == 422, (body, answer.get_json())
        assert "error" in answer.get_json()
    answer = client.post("/jobs/batch", json={"jobs": [one] * 4})
    assert answer.status_code == 422
    assert "at most 3 jobs per batch (SPOOLKIT_MAX_BATCH), got 4" in answer.get_json()["error"]
    assert client.post("/jobs/batch", data=b"{not json").status_code == 400
    assert client.post("/jobs/batch", json={"jobs": [one] * 3}).status_code == 202
    assert _count(client) == 3
    # "batch" is no job id: GET is not an operation there.
    assert client.get("/jobs/batch").status_code == 405


def test_task_map_and_enqueue_many_in_python(eager_app: Flask) -> None:
    with eager_app.app_context():
        mapped = jobs.add.map([(1, 2), [3, 4], {"a": 5, "b": 6}])
        assert [SpoolKit.get_job(job.id).result for job in mapped] == [3, 7, 11]
        many = SpoolKit.enqueue_many([
            {"task": jobs.add, "args": [10, 1]},
            {"task": "tests.jobs.echo", "args": ["y"], "priority": 3},
        ])  # fmt: skip
        assert [SpoolKit.get_job(job.id).result for job in many] == [11, "y"]
        before = len(SpoolKit.list_jobs(limit=1000))
        with pytest.raises(BatchItemError) as caught:
            jobs.add.map([(1, 2), (3,), (5, 6)])
        assert caught.value.index == 1 and "job 1 of the batch" in str(caught.value)
        with pytest.raises(BatchItemError) as caught:
            jobs.add.map([(1, 2), 7])
        assert caught.value.index == 1 and "not int" in str(caught.value)
        with pytest.raises(BatchItemError) as caught:
            SpoolKit.enqueue_many([{"task": jobs.add, "args": [1, 2]},
                                   {"task": jobs.add, "args": [1, 2], "priority": "high"}])
        assert caught.value.index == 1
        assert len(SpoolKit.list_jobs(limit=1000)) == before
        with pytest.raises(ValueError, match="SPOOLKIT_MAX_BATCH"):
            jobs.add.map([(1, 1)] * 1001)
        assert len(SpoolKit.list_jobs(limit=2000)) == before


class _Refusing:
    """A runner whose third ``stage`` fails (a full disk, say)."""

    def __init__(self) -> None:
        self.staged: list[str] = []
        self.aborted: list[str] = []

    def stage(self, job_id: str, *rest: Any, **options: Any) -> Any:
        if len(self.staged) == 2:
            raise OSError("disk full")
        self.staged.append(job_id)
        runner = self

        class Staged:
            def commit(self) -> None:
                raise AssertionError("nothing may run")

            def abort(self) -> None:
                runner.aborted.append(job_id)

        return Staged()


def test_a_batch_that_cannot_be_staged_whole_undoes_what_it_staged() -> None:
    batch = [NewJob(id=f"j{i}", task="t", payload="{}", max_attempts=1, backoff=0,
                    priority=None, created_at=0, run_at=None, spool_file=f"f{i}")
             for i in range(4)]  # fmt: skip
    runner = _Refusing()
    with pytest.raises(OSError):
        stage_each(runner, batch)  # type: ignore[arg-type]
    assert runner.aborted == runner.staged == ["j0", "j1"]


@pytest.mark.e2e
def test_a_batch_under_uwsgi_runs_every_job(server: UwsgiServer) -> None:
    items = [{"task": "tests.jobs.add", "args": [i, i]} for i in range(300)]
    answer = server.post("/jobs/batch", {"jobs": items})
    assert answer.status == 202, answer
    listed = answer.json()["jobs"]
    done = [server.wait_job(job["id"], timeout=120) for job in listed]
    missing = [job["id"] for job in done if job["state"] != "succeeded"]
    assert not missing, f"lost={len(missing)}"
    assert [job["result"] for job in done] == [2 * i for i in range(300)]
    # A refused batch leaves nothing behind, not even a staged spool file.
    files_before = set(server.spool_files())
    bad = server.post("/jobs/batch", {"jobs": [items[0], {"task": "tests.jobs.add"}]})
    assert bad.status == 422 and bad.json()["index"] == 1
    assert set(server.spool_files()) <= files_before
