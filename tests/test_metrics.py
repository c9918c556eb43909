"""``GET /metrics`` against a real uWSGI: the figures the tests themselves caused.

Each test starts its own server (a fresh store, so every counter starts at
0), with the API token set, and parses the scrape the way Prometheus would
(``prometheus_client``'s parser; ``promtool check metrics`` lints it).
Counters are checked against what the test ran, counted by the test from the
runs its tasks recorded.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.common import wait_for

from .support import REPO, Response, UwsgiServer

pytestmark = pytest.mark.e2e

TOKEN = secrets.token_urlsafe(32)
#: Families whose samples change with the clock alone.
CLOCK = {"spoolkit_housekeeper_last_pass_age_seconds", "spoolkit_queue_oldest_ready_seconds",
         "spoolkit_node_last_beat_age_seconds"}  # fmt: skip

Key = tuple[str, tuple[tuple[str, str], ...]]


class TokenServer(UwsgiServer):
    """A real uWSGI with ``SPOOLKIT_API_TOKEN`` set, whose requests carry the token."""

    def __init__(self, base: Path, **env: str) -> None:
        env.update(SPOOLKIT_API_TOKEN=TOKEN, FLASK_SECRET_KEY=secrets.token_urlsafe(32))
        super().__init__(base, None, (), **env)

    def __enter__(self) -> TokenServer:
        self.start()
        return self

    def request(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> Response:  # fmt: skip
        sent = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
        return super().request(method, path, body, headers=sent, **kw)

    def anonymous(self, method: str, path: str, body: Any = None) -> Response:
        """A request without the token."""
        return super().request(method, path, body)


class Figures:
    """One scrape, parsed: every sample by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[Key, float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
                self.types[sample.name] = family.type

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        if key not in self.samples:
            raise AssertionError(f"no sample {name}{labels} in the scrape:\n{self.text}")
        return self.samples[key]

    def values(self, label: str) -> set[str]:
        """Every value ``label`` takes, in any family."""
        return {value for _, labels in self.samples for key, value in labels if key == label}

    def of_task(self, task: str) -> dict[Key, float]:
        return {key: v for key, v in self.samples.items() if ("task", task) in key[1]}

    def steady(self) -> dict[Key, float]:
        """The samples that only change when jobs do (not those of ``CLOCK``)."""
        return {key: v for key, v in self.samples.items() if key[0] not in CLOCK}

    def cumulative(self) -> dict[Key, float]:
        """Counters and histograms: what must never go down."""
        kinds = {"counter", "histogram"}
        return {key: v for key, v in self.samples.items() if self.types[key[0]] in kinds}


def scrape(server: UwsgiServer) -> Figures:
    response = server.get("/metrics")
    assert response.status == 200, response
    assert response.headers["Content-Type"].startswith("text/plain; version="), response.headers
    return Figures(response.body.decode())


def task(name: str) -> str:
    return f"tests.jobs.{name}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TokenServer]:
    """A fresh server per test (its counters start at 0), two spoolers per queue."""
    with TokenServer(tmp_path / "server", SPOOLKIT_SPOOLERS="2") as instance:
        yield instance


def _finish(server: UwsgiServer, job_ids: list[str]) -> list[dict[str, Any]]:
    return [server.wait_job(job_id, timeout=60) for job_id in job_ids]


# -- counters and histograms ---------------------------------------------------------------


def test_counters_and_histograms_count_exactly_the_attempts_run(server: TokenServer) -> None:
    before = scrape(server)
    assert before.cumulative() and not any(before.cumulative().values()), "a fresh store"
    jobs = [server.enqueue("mark", "ok") for _ in range(3)]
    jobs += [server.enqueue("always_fails", f"bad-{n}") for n in range(2)]
    jobs += [server.enqueue("flaky", "flaky", 2)]
    finished = _finish(server, jobs)
    assert [job["state"] for job in finished] == ["succeeded"] * 3 + ["failed"] * 2 + ["succeeded"]

    # Runs counted by the test, from each task's own records: one line per run.
    marks = len(server.records_of("ok"))
    fails = [len(server.records_of(f"bad-{n}")) for n in range(2)]
    flakes = len(server.records_of("flaky"))
    assert (marks, fails, flakes) == (3, [3, 3], 3)
    # mark: every run succeeds. always_fails: every run fails, the last one for good.
    # flaky(2): two failed runs, then one that succeeds.
    expected = {
        "mark": ({"succeeded": marks}, {"succeeded": marks}),
        "always_fails": ({"retry": sum(f - 1 for f in fails), "failed": len(fails)},
                         {"failed": len(fails)}),
        "flaky": ({"retry": flakes - 1, "succeeded": 1}, {"succeeded": 1}),
    }  # fmt: skip

    after = scrape(server)  # the totals are written with each outcome: no lag
    outcomes = ("succeeded", "failed", "retry", "timeout", "worker_lost", "aborted", "interrupted")
    assert after.values("outcome") == set(outcomes)
    for name, (attempts, ended) in expected.items():
        for outcome in outcomes:
            got = after("spoolkit_attempts_total", task=task(name), outcome=outcome)
            assert got == attempts.get(outcome, 0), (name, outcome)
        for state in ("succeeded", "failed", "cancelled"):
            got = after("spoolkit_jobs_finished_total", task=task(name), state=state)
            assert got == ended.get(state, 0), (name, state)
        runs = sum(attempts.values())
        for histogram in ("spoolkit_job_duration_seconds", "spoolkit_job_wait_seconds"):
            assert after(f"{histogram}_count", task=task(name)) == runs, (name, histogram)
            assert after(f"{histogram}_bucket", task=task(name), le="+Inf") == runs
            assert after(f"{histogram}_sum", task=task(name)) >= 0
    # The job API's attempt counts agree.
    assert [job["attempts"] for job in finished] == [1, 1, 1, 3, 3, 3]
    # A task nobody ran is exported, at 0 (so a first failure is an increase).
    assert set(after.of_task(task("add")).values()) == {0.0}
    # Jobs per state: the gauge counts the rows.
    assert after("spoolkit_jobs", state="succeeded", queue="default") == 4
    assert after("spoolkit_jobs", state="failed", queue="default") == 2


def test_duration_histogram_puts_a_run_in_its_bucket(server: TokenServer) -> None:
    server.wait_job(server.enqueue("sleeper", "nap", 0.3))
    figures = scrape(server)
    name = "spoolkit_job_duration_seconds"
    assert figures(f"{name}_count", task=task("sleeper")) == 1
    assert figures(f"{name}_sum", task=task("sleeper")) >= 0.3
    assert figures(f"{name}_bucket", task=task("sleeper"), le="0.25") == 0
    assert figures(f"{name}_bucket", task=task("sleeper"), le="+Inf") == 1


def test_wait_histogram_and_queue_gauges_see_a_job_held_up_by_busy_spoolers(
    server: TokenServer,
) -> None:
    wait = "spoolkit_job_wait_seconds"
    # Run at once, and scheduled an hour in the past (due when queued): no wait to speak of.
    server.wait_job(server.enqueue("mark", "at-once"))
    server.wait_job(server.enqueue("mark", "past", at="2000-01-01T00:00:00Z"))
    quick = scrape(server)
    assert quick(f"{wait}_bucket", task=task("mark"), le="1.0") == 2
    assert quick(f"{wait}_count", task=task("mark")) == 2

    # Both spoolers of the default queue (the fixture's two) busy for 3 s: the next job
    # waits for one.
    sleepers = [server.enqueue("sleeper", "busy", 3.0) for _ in range(2)]
    wait_for(lambda: len(server.records_of("busy")) == 2, 20, "both spoolers to be busy")
    held = server.enqueue("mark", "held")

    def held_up() -> Figures | None:
        figures = scrape(server)
        aged = figures("spoolkit_queue_oldest_ready_seconds", queue="default") >= 1.0
        return figures if aged else None

    during = wait_for(held_up, 10, "the oldest ready job's age to pass 1 s")
    assert server.job(held)["state"] == "queued"  # still waiting: the figures were its own
    assert during("spoolkit_jobs", state="queued", queue="default") == 1
    assert during("spoolkit_jobs", state="running", queue="default") == 2
    assert during("spoolkit_queue_oldest_ready_seconds", queue="slow") == 0
    _finish(server, [*sleepers, held])

    after = scrape(server)
    assert after(f"{wait}_count", task=task("mark")) == 3
    assert after(f"{wait}_bucket", task=task("mark"), le="1.0") == 2  # the held job is not
    assert after(f"{wait}_sum", task=task("mark")) - quick(f"{wait}_sum", task=task("mark")) > 1
    assert after("spoolkit_queue_oldest_ready_seconds", queue="default") == 0
    assert after("spoolkit_jobs", state="queued", queue="default") == 0


def test_jobs_gauge_counts_scheduled_jobs_per_queue_and_cancels_count_as_finished(
    server: TokenServer,
) -> None:
    later = [server.enqueue("mark", "later", countdown=3600) for _ in range(3)]
    server.enqueue("slow_sleeper", "later-slow", 1.0, countdown=3600)
    figures = scrape(server)
    assert figures("spoolkit_jobs", state="scheduled", queue="default") == 3
    assert figures("spoolkit_jobs", state="scheduled", queue="slow") == 1
    assert figures("spoolkit_jobs", state="queued", queue="default") == 0
    # Scheduled for later is not ready: nothing waits yet.
    assert figures("spoolkit_queue_oldest_ready_seconds", queue="default") == 0

    for job_id in later[:2]:
        assert server.request("DELETE", f"/jobs/{job_id}").status == 200
    figures = scrape(server)
    assert figures("spoolkit_jobs", state="scheduled", queue="default") == 1
    assert figures("spoolkit_jobs", state="cancelled", queue="default") == 2
    assert figures("spoolkit_jobs_finished_total", task=task("mark"), state="cancelled") == 2
    # No attempt ended: a cancel while waiting adds to no attempt counter or histogram.
    assert figures("spoolkit_job_duration_seconds_count", task=task("mark")) == 0
    assert all(
        figures("spoolkit_attempts_total", task=task("mark"), outcome=outcome) == 0
        for outcome in ("succeeded", "failed", "retry", "aborted")
    )


# -- spoolers ---------------------------------------------------------------------------


def test_spoolers_alive_and_configured_are_what_uwsgi_reports(tmp_path: Path) -> None:
    # Three per queue, two queues: six, so the figure is not a default's constant.
    with TokenServer(tmp_path / "server", SPOOLKIT_SPOOLERS="3") as server:
        wait_for(lambda: len(server.spooler_pids()) == 6, 20, "uWSGI's stats to list six spoolers")
        pids = server.spooler_pids()
        figures = scrape(server)
        assert figures("spoolkit_spoolers", state="alive") == len(pids) == 6
        assert figures("spoolkit_spoolers", state="configured") == len(pids)


# -- counters keep counting: purge, restart ------------------------------------------------


def _purge(server: UwsgiServer) -> str:
    """``flask spoolkit purge --yes`` on the server's store, as an operator runs it."""
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "flask"), "--app", "app", "spoolkit", "purge", "--yes"],
        cwd=str(REPO), env=server.env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_counters_survive_a_purge_and_a_restart(server: TokenServer) -> None:
    _finish(server, [server.enqueue("mark", "kept") for _ in range(2)]
            + [server.enqueue("always_fails", "kept-bad")])  # fmt: skip
    ran = scrape(server)
    assert ran("spoolkit_jobs_finished_total", task=task("mark"), state="succeeded") == 2
    assert ran("spoolkit_attempts_total", task=task("always_fails"), outcome="retry") == 2

    _purge(server)
    with contextlib.closing(sqlite3.connect(server.database, timeout=30)) as db:
        assert db.execute("SELECT COUNT(*) FROM spoolkit_jobs").fetchone() == (0,)
    purged = scrape(server)
    assert purged("spoolkit_jobs", state="succeeded", queue="default") == 0
    assert purged("spoolkit_jobs", state="failed", queue="default") == 0
    assert purged.cumulative() == ran.cumulative()  # the rows went, the totals did not

    server.stop()
    server.start()
    restarted = scrape(server)
    assert restarted.cumulative() == ran.cumulative()
    # And they count on from there, not from 0.
    server.wait_job(server.enqueue("mark", "kept"))
    more = scrape(server)
    assert more("spoolkit_jobs_finished_total", task=task("mark"), state="succeeded") == 3
    assert more("spoolkit_job_duration_seconds_count", task=task("mark")) == 3


# -- every worker, the same figures -----------------------------------------------------------


def test_every_web_worker_answers_the_same_figures(tmp_path: Path) -> None:
    with TokenServer(tmp_path / "server", SPOOLKIT_WORKERS="4") as server:
        _finish(server, [server.enqueue("mark", "w") for _ in range(3)]
                + [server.enqueue("flaky", "w-flaky", 1)])  # fmt: skip
        served = {int(w["id"]): int(w["requests"]) for w in server.stats()["workers"]}
        assert len(served) == 4
        scrapes: list[Figures] = []

        def every_worker_answered() -> bool:
            with ThreadPoolExecutor(8) as pool:
                scrapes.extend(pool.map(lambda _: scrape(server), range(16)))
            now = {int(w["id"]): int(w["requests"]) for w in server.stats()["workers"]}
            return all(now[worker] > count for worker, count in served.items())

        wait_for(every_worker_answered, 30, "every web worker to answer a scrape")
    first = scrapes[0].steady()
    assert first[("spoolkit_jobs_finished_total",
                  (("state", "succeeded"), ("task", task("mark"))))] == 3  # fmt: skip
    for other in scrapes[1:]:
        assert other.steady() == first


# -- access ------------------------------------------------------------------------------


def test_metrics_need_the_api_token(server: TokenServer) -> None:
    refused = server.anonymous("GET", "/metrics")
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert refused.json() == {"error": "missing or wrong bearer token"}
    wrong = server.request("GET", "/metrics", headers={"Authorization": "Bearer wrong"})
    assert wrong.status == 401
    assert server.get("/metrics").status == 200


def test_metrics_public_opens_metrics_and_nothing_else(tmp_path: Path) -> None:
    with TokenServer(tmp_path / "server", SPOOLKIT_SPOOLERS="2",
                     SPOOLKIT_METRICS_PUBLIC="1") as server:  # fmt: skip
        answer = server.anonymous("GET", "/metrics")
        assert answer.status == 200, answer
        assert Figures(answer.body.decode())("spoolkit_spoolers", state="configured") == 4
        assert server.anonymous("GET", "/jobs").status == 401
        assert server.anonymous("POST", "/jobs", {"task": task("echo"), "args": [1]}).status == 401


# -- bounded labels, and a scrape Prometheus accepts ---------------------------------------------


def test_unknown_tasks_and_queues_add_no_label(server: TokenServer) -> None:
    before = scrape(server)
    tasks, queues = before.values("task"), before.values("queue")
    assert task("echo") in tasks and queues == {"default", "slow"}
    refused = [
        server.post("/jobs", {"task": "nope", "args": []}),
        server.post("/jobs", {"task": task("nope"), "args": []}),
        server.post("/jobs", {"task": task("echo"), "args": [1], "queue": "nope"}),
        server.post("/jobs", {"task": task("echo"), "args": [1], "queue": "../x"}),
    ]
    assert [answer.status for answer in refused] == [404, 404, 422, 422], refused
    after = scrape(server)
    assert after.values("task") == tasks
    assert after.values("queue") == queues
    assert "nope" not in after.text


def test_promtool_accepts_the_scrape(server: TokenServer) -> None:
    server.wait_job(server.enqueue("mark", "lint"))
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian package prometheus): run 'make test'")
    done = subprocess.run(
        [promtool, "check", "metrics"], input=server.get("/metrics").body,
        capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    assert done.stdout + done.stderr == b""  # no lint warning either
