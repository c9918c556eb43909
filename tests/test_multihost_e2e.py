"""Several uWSGI instances on one PostgreSQL, as the nodes of a multi-host deployment:
a web node (``uwsgi.ini:web``, no spoolers) and spooler nodes, each with its own
spool directory and ``SPOOLKIT_NODE``, on loopback ports only.

What issue 15 asks: jobs posted to any node run on the spooler nodes; a spooler
node killed with SIGKILL mid-drain loses nothing and its running jobs count one
``worker_lost`` attempt; a node frozen (SIGSTOP) past ``SPOOLKIT_NODE_TIMEOUT``
has its jobs taken back and, once resumed, its late outcome is fenced; the
database stopped with ``-m immediate`` mid-drain refuses jobs (503) and never
loses one answered 202; a periodic job fires once per slot across three nodes.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .pg import DURABLE, PostgresCluster
from .support import UwsgiServer, descendants, wait_for

pytestmark = pytest.mark.e2e

#: Seconds of silence after which a node is taken for dead (kept short for the tests).
NODE_TIMEOUT = "3"


def node(base: Path, dsn: str, name: str, *, web: bool = False, **env: str) -> UwsgiServer:
    """One node: a web node (no spoolers) or a spooler node (web workers too)."""
    return UwsgiServer(base / name, section="web" if web else None, SPOOLKIT_DATABASE=dsn,
                       SPOOLKIT_NODE=name, SPOOLKIT_NODE_TIMEOUT=NODE_TIMEOUT,
                       SPOOLKIT_STORE_TIMEOUT="2", SPOOLKIT_SPOOLERS="2", **env)  # fmt: skip


@contextlib.contextmanager
def cluster(base: Path, dsn: str, *names: str, **env: str) -> Iterator[dict[str, UwsgiServer]]:
    """``web`` plus a spooler node per name, started; every one stopped after."""
    nodes = {"web": node(base, dsn, "web", web=True, **env)}
    nodes.update({name: node(base, dsn, name, **env) for name in names})
    try:
        for server in nodes.values():
            server.start()
        yield nodes
    finally:
        for server in nodes.values():
            server.stop()


def ran_on(nodes: dict[str, UwsgiServer], tag: str) -> dict[str, list[dict[str, Any]]]:
    """Each node's records of ``tag`` (a task's lines land in its node's records dir)."""
    return {name: server.records_of(tag) for name, server in nodes.items()}


def tree(server: UwsgiServer) -> list[int]:
    return [server.pid, *descendants(server.pid)]


def test_jobs_posted_to_any_node_run_on_the_spooler_nodes(tmp_path: Path, pg_dsn: str) -> None:
    with cluster(tmp_path, pg_dsn, "a", "b") as nodes:
        web = nodes["web"]
        posted = [nodes[name].enqueue("sleeper", f"any-{i}", 0.2)
                  for i, name in enumerate(["web", "a", "b"] * 8)]  # fmt: skip
        jobs = [web.wait_job(job_id, timeout=60) for job_id in posted]
        missing = [job["id"] for job in jobs if job["state"] != "succeeded"]
        assert not missing, f"lost={len(missing)}: {missing}"
        runs = Counter()
        for i in range(len(posted)):
            for name, lines in ran_on(nodes, f"any-{i}").items():
                runs[name] += sum(1 for line in lines if line.get("event") == "end")
        # The web node has no spooler; both spooler nodes took their share, each job once.
        assert runs["web"] == 0 and runs["a"] > 0 and runs["b"] > 0, runs
        assert sum(runs.values()) == len(posted)
        # Every node lists every live node; the web node is healthy without spoolers.
        health = web.get("/healthz")
        assert health.status == 200, health
        report = health.json()
        assert report["node"] == {"id": "web", "role": "web"}
        listed = wait_for(lambda: {n["id"]: n for n in web.get("/healthz").json()["nodes"]}
                          if len(web.get("/healthz").json()["nodes"]) == 3 else None,
                          15, "three nodes in /healthz")  # fmt: skip
        assert listed["a"]["spoolers"] == {"alive": 4, "configured": 4}
        assert listed["web"]["spoolers"] == {"alive": 0, "configured": 0}
        # Per node in /metrics and on the dashboard, from any node.
        metrics = web.get("/metrics").body.decode()
        assert 'spoolkit_node_spoolers{node="b",state="alive"} 4.0' in metrics
        assert 'spoolkit_node_last_beat_age_seconds{node="a"}' in metrics
        page = nodes["a"].get("/dashboard").body.decode()
        assert all(f'data-node="{name}"' in page for name in ("web", "a", "b"))
        # A batch posted to the web node: one transaction, claimed by the spooler nodes.
        batch = web.post("/jobs/batch", {"jobs": [{"task": "tests.jobs.add", "args": [i, 1]}
                                                  for i in range(50)]})  # fmt: skip
        assert batch.status == 202, batch
        results = [web.wait_job(job["id"], timeout=60)["result"] for job in batch.json()["jobs"]]
        assert results == [i + 1 for i in range(50)]
        # Nothing of another node's was spooled on a node's disk: each job's file was
        # written by the node that claimed it, then removed once it ran.
        for name in ("a", "b"):
            assert not nodes[name].spool_files(), nodes[name].spool_files()


def test_a_spooler_node_killed_mid_drain_loses_nothing(tmp_path: Path, pg_dsn: str) -> None:
    with cluster(tmp_path, pg_dsn, "a", "b") as nodes:
        web, doomed = nodes["web"], nodes["a"]
        posted = [web.enqueue("sleeper", f"kill-{i}", 1.0) for i in range(24)]

        def running_on_doomed() -> list[int]:
            started = {i for i in range(len(posted))
                       if any(line.get("event") == "start" for line in
                              doomed.records_of(f"kill-{i}"))}  # fmt: skip
            ended = {
                i
                for i in started
                if any(line.get("event") == "end" for line in doomed.records_of(f"kill-{i}"))
            }
            return sorted(started - ended)

        cut = wait_for(running_on_doomed, 30, "node a to run jobs")
        doomed.kill_tree()  # SIGKILL master, spoolers and mule at once
        jobs = [web.wait_job(job_id, timeout=90) for job_id in posted]
        missing = [job["id"] for job in jobs if job["state"] != "succeeded"]
        assert not missing, f"lost={len(missing)}: {missing}"
        lost_attempts = {i: [a["outcome"] for a in job["history"]].count("worker_lost")
                         for i, job in enumerate(jobs)}  # fmt: skip
        # The jobs node a was running when it died count exactly one lost attempt each
        # (more may have started between the look and the kill); no job counts two.
        assert all(lost_attempts[i] == 1 for i in cut), (cut, lost_attempts)
        assert max(lost_attempts.values()) == 1
        for i, job in enumerate(jobs):
            assert job["attempts"] == 1 + lost_attempts[i], job
        assert "took back" in nodes["b"].log_text() + web.log_text()


def test_a_frozen_node_is_fenced_when_it_comes_back(tmp_path: Path, pg_dsn: str) -> None:
    with cluster(tmp_path, pg_dsn, "a", "b") as nodes:
        web = nodes["web"]
        # Its first attempt sleeps 8 s; later attempts return at once.
        job_id = web.enqueue("blocks_first", "frozen", 8.0)
        holder = wait_for(lambda: next((name for name, lines in ran_on(nodes, "frozen").items()
                                        if lines), None), 30, "the first attempt to start")  # fmt: skip
        other = "b" if holder == "a" else "a"
        frozen = tree(nodes[holder])
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            # Past the node timeout the other nodes take the job back: the first
            # attempt counts as lost and the second runs on the other node.
            job = web.wait_job(job_id, timeout=60)
            assert (job["state"], job["result"], job["attempts"]) == ("succeeded", 2, 2), job
            assert [a["outcome"] for a in job["history"]] == ["worker_lost", "succeeded"]
            assert nodes[other].records_of("frozen"), "the second attempt ran elsewhere"
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        # Resumed, the frozen spooler ends its first attempt and tries to record it:
        # the row no longer carries its node and epoch, so that write is dropped.
        wait_for(lambda: "was taken over by another runner" in nodes[holder].log_text(), 30,
                 "the resumed node to drop its stale outcome")  # fmt: skip
        after = web.job(job_id)
        assert (after["state"], after["result"], after["attempts"]) == ("succeeded", 2, 2)
        assert [a["outcome"] for a in after["history"]] == ["worker_lost", "succeeded"]
        # Its housekeeper learns it was taken for dead and registers again, then serves.
        wait_for(lambda: "registering again" in nodes[holder].log_text(), 30,
                 "the resumed node to register again")  # fmt: skip
        again = [web.enqueue("add", i, 1) for i in range(6)]
        assert [web.wait_job(j, timeout=30)["result"] for j in again] == [i + 1 for i in range(6)]


@pytest.fixture
def durable() -> Iterator[PostgresCluster]:
    with PostgresCluster(DURABLE) as server:
        yield server


def test_the_database_crashing_under_several_nodes(
    tmp_path: Path, durable: PostgresCluster
) -> None:
    """``-m immediate`` while a web node takes jobs and a spooler node drains: 503 while
    it is down, never a 202 that is lost; both nodes reconnect and drain by themselves."""
    dsn = durable.dsn(durable.create_database())
    with cluster(tmp_path, dsn, "a") as nodes:
        web, spooler = nodes["web"], nodes["a"]
        # Runs through the whole outage, which lasts longer than the node timeout: once
        # the database is back no node may take the other for dead before it could beat.
        across = web.enqueue("sleeper", "across", 8.0)
        wait_for(lambda: spooler.records_of("across"), 30, "the long job to start")
        accepted = [web.enqueue("sleeper", f"down-{i}", 0.2) for i in range(12)]
        durable.stop("immediate")
        refused, wrongly = 0, []
        try:
            for i in range(5):
                answer = web.post("/jobs", {"task": "tests.jobs.mark", "args": [f"refused-{i}"]})
                if answer.status == 202:
                    wrongly.append(answer.json()["id"])
                else:
                    assert answer.status == 503, answer
                    refused += 1
            assert web.get("/healthz").status == 503
        finally:
            durable.start()
        assert (refused, wrongly) == (5, [])
        for server in (web, spooler):
            wait_for(lambda s=server: s.get("/healthz").status == 200, 30, "/healthz to recover")
        accepted.append(web.enqueue("mark", "after"))
        jobs = [web.wait_job(job_id, timeout=90) for job_id in accepted]
        missing = [job["id"] for job in jobs if job["state"] != "succeeded"]
        assert not missing, f"lost={len(missing)}: {missing}"
        assert not any(spooler.records_of(f"refused-{i}") for i in range(5))
        long = web.wait_job(across, timeout=60)
        assert [a["outcome"] for a in long["history"]] == ["succeeded"], long["history"]
        assert long["attempts"] == 1 and len(spooler.records_of("across")) == 2  # start, end


def test_a_periodic_job_fires_once_per_slot_across_three_nodes(tmp_path: Path, pg_dsn: str) -> None:
    with cluster(tmp_path, pg_dsn, "a", "b", SPOOLKIT_IMPORTS="tests.jobs,tests.periodic_jobs",
                 PERIODIC_TEST_PLAN="every1") as nodes:  # fmt: skip
        web = nodes["web"]

        def fired() -> list[dict[str, Any]] | None:
            answer = web.get("/jobs?task=tests.periodic_jobs.every_second&limit=200")
            jobs: list[dict[str, Any]] = answer.json()["jobs"]
            return jobs if len(jobs) >= 8 else None

        wait_for(fired, 60, "eight slots fired")
        jobs = fired() or []
        slots = Counter(job["periodic_slot"] for job in jobs)
        doubled = {slot: count for slot, count in slots.items() if count > 1}
        assert not doubled, f"slots fired twice: {doubled}"
        done = [web.wait_job(job["id"], timeout=30) for job in jobs]
        assert {job["state"] for job in done} == {"succeeded"}
        runs = sum(len(lines) for lines in ran_on(nodes, "every_second").values())
        assert runs >= len(done)


def test_uwsgidecorators_code_on_spooler_nodes(tmp_path: Path, pg_dsn: str) -> None:
    """``uwsgi.spool()`` calls of code written for uwsgidecorators, on two spooler nodes
    that both have that code: the kit records each, it runs once, on one node."""

    def legacy(name: str) -> UwsgiServer:
        return UwsgiServer(tmp_path / name, extra_args=("--module", "tests.legacy_app:app"),
                           SPOOLKIT_DATABASE=pg_dsn, SPOOLKIT_NODE=name,
                           SPOOLKIT_NODE_TIMEOUT=NODE_TIMEOUT, SPOOLKIT_SPOOLERS="2",
                           LEGACY_IMPORT_ORDER="after", SPOOLKIT_IMPORTS="tests.jobs")  # fmt: skip

    nodes = {name: legacy(name) for name in ("a", "b")}
    try:
        for server in nodes.values():
            server.start()
        tags = [f"legacy-{i}" for i in range(8)]
        answers = [nodes["ab"[i % 2]].post("/legacy/call", {"tag": tag})
                   for i, tag in enumerate(tags)]  # fmt: skip
        assert all(answer.status == 200 for answer in answers), answers
        jobs = [nodes["a"].wait_job(answer.json()["job"], timeout=30) for answer in answers]
        outcomes = [(job["state"], job["origin"], job["attempts"]) for job in jobs]
        assert outcomes == [("succeeded", "uwsgidecorators", 1)] * len(tags), jobs[0]["error"]
        assert {job["node"] for job in jobs} <= {"a", "b"}
        runs = {tag: len(nodes["a"].records_of(tag)) + len(nodes["b"].records_of(tag))
                for tag in tags}  # fmt: skip
        assert set(runs.values()) == {1}, runs
    finally:
        for server in nodes.values():
            server.stop()


def test_two_instances_with_one_node_name(tmp_path: Path, pg_dsn: str) -> None:
    """The second instance named like a running one neither beats nor claims (they would
    keep taking each other's jobs back); it says why in its log, and jobs it accepts run
    on the first."""
    with cluster(tmp_path, pg_dsn, "a") as nodes:
        twin = node(tmp_path / "twin", pg_dsn, "a")
        with twin:
            wait_for(lambda: "is taken by a running instance" in twin.log_text(), 30,
                     "the twin to notice")  # fmt: skip
            posted = [twin.enqueue("sleeper", f"twin-{i}", 0.05) for i in range(8)]
            done = [twin.wait_job(job_id, timeout=30) for job_id in posted]
            assert {job["state"] for job in done} == {"succeeded"}
            assert all(nodes["a"].records_of(f"twin-{i}") for i in range(8))
            assert not any(twin.records_of(f"twin-{i}") for i in range(8))
