"""The kit under a real uWSGI with its store on a real PostgreSQL (tests/pg.py): jobs,
retries and a spooler killed mid-job as on SQLite, and a database server that goes
away mid-drain and comes back: nothing answered ``202`` is lost, nothing refused runs."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolkit.states import FINISHED

from .pg import DURABLE, PostgresCluster
from .support import UwsgiServer, wait_for

pytestmark = pytest.mark.e2e

FINAL = {state.value for state in FINISHED}


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[PostgresCluster]:
    """A server of its own with PostgreSQL's durable defaults: a crash keeps what it
    committed (the shared test server trades that for speed)."""
    with PostgresCluster(DURABLE) as cluster:
        yield cluster


@pytest.fixture
def server(tmp_path: Path, pg_dsn: str) -> Iterator[UwsgiServer]:
    with UwsgiServer(tmp_path / "srv", SPOOLKIT_DATABASE=pg_dsn,
                     SPOOLKIT_STORE_TIMEOUT="2") as running:  # fmt: skip
        yield running


def test_jobs_retries_and_progress_on_postgres(server: UwsgiServer) -> None:
    ids = [server.enqueue("add", i, i) for i in range(20)]
    flaky = server.enqueue("flaky", "pg-flaky", 2)
    stepped = server.enqueue("progress_steps", 3)
    results = [server.wait_job(job_id, timeout=30)["result"] for job_id in ids]
    assert results == [2 * i for i in range(20)]
    retried = server.wait_job(flaky, timeout=30)
    assert (retried["state"], retried["attempts"]) == ("succeeded", 3)
    assert [a["outcome"] for a in retried["history"]] == ["retry", "retry", "succeeded"]
    assert server.wait_job(stepped)["progress"] == {"done": 3, "total": 3, "message": "step 3"}
    health = server.get("/healthz")
    assert health.status == 200 and health.json()["store"] == "ok"
    assert health.json()["jobs"]["succeeded"] == 22
    # This node, as its housekeeper recorded it by the database server's clock.
    nodes = wait_for(lambda: server.get("/healthz").json()["nodes"], 10, "the node's beat")
    assert [node["host"] for node in nodes] == [socket.gethostname()]
    assert nodes[0]["spoolers"] == {"alive": 4, "configured": 4}
    assert 0 <= nodes[0]["last_beat_age"] < 5
    # The operator's views read the same store.
    metrics = server.get("/metrics").body.decode()
    assert 'spoolkit_jobs_finished_total{state="succeeded",task="tests.jobs.add"} 20.0' in metrics
    assert 'spoolkit_attempts_total{outcome="retry",task="tests.jobs.flaky"} 2.0' in metrics
    page = server.get(f"/dashboard/jobs/{flaky}").body.decode()
    assert 'id="job-state">succeeded<' in page and 'id="job-history"' in page


def test_a_spooler_killed_mid_job_counts_one_attempt(server: UwsgiServer) -> None:
    job_id = server.enqueue("blocks_first_run", "pg-killed", 30)
    run = wait_for(lambda: server.records_of("pg-killed"), 30, "the first run to start")
    os.kill(run[0]["pid"], signal.SIGKILL)
    job = server.wait_job(job_id, timeout=60)
    assert (job["state"], job["attempts"]) == ("succeeded", 2)
    assert [a["outcome"] for a in job["history"]] == ["worker_lost", "succeeded"]


def test_the_database_going_away_mid_drain(tmp_path: Path, durable: PostgresCluster) -> None:
    """Stopped with ``-m immediate`` (a crash of the server) while jobs drain: POSTs
    are refused (503) while it is down, never accepted and lost; the kit reconnects
    by itself and every accepted job ends ``succeeded``."""
    database = durable.create_database()
    with UwsgiServer(tmp_path / "down", SPOOLKIT_DATABASE=durable.dsn(database),
                     SPOOLKIT_STORE_TIMEOUT="2") as server:  # fmt: skip
        _survive_a_database_crash(server, durable)


def _survive_a_database_crash(server: UwsgiServer, postgres: PostgresCluster) -> None:
    accepted = [server.enqueue("sleeper", f"pg-down-{i}", 0.2) for i in range(10)]
    postgres.stop("immediate")
    refused, down_accepted = 0, []
    try:
        for i in range(5):
            answer = server.post("/jobs", {"task": "tests.jobs.mark", "args": [f"down-{i}"]})
            if answer.status == 202:
                down_accepted.append(str(answer.json()["id"]))
            else:
                assert answer.status == 503, answer
                refused += 1
        assert server.get("/healthz").status == 503
    finally:
        postgres.start()
    assert refused == 5 and not down_accepted
    wait_for(lambda: server.get("/healthz").status == 200, 30, "/healthz to recover")
    after = server.enqueue("mark", "pg-after")
    jobs = [server.wait_job(job_id, timeout=60) for job_id in [*accepted, after]]
    assert [job["state"] for job in jobs] == ["succeeded"] * len(jobs)
    assert not any(server.records_of(f"down-{i}") for i in range(5))
