"""Periodic jobs on a real uWSGI: once per slot across web workers, spoolers and the
mule, across kill -9 of the whole tree, and the misfire grace across a stop.

The schedules live in ``tests/periodic_jobs.py``, chosen by ``PERIODIC_TEST_PLAN``.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections import Counter
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from bench.common import wait_for

from .support import UwsgiServer

pytestmark = pytest.mark.e2e

TASKS = "tests.periodic_jobs"


def periodic_server(base: Path, plan: str, **env: str) -> UwsgiServer:
    return UwsgiServer(
        base,
        SPOOLKIT_IMPORTS=f"tests.jobs,{TASKS}",
        PERIODIC_TEST_PLAN=plan,
        SPOOLKIT_WORKERS="2",
        SPOOLKIT_SPOOLERS="2",
        **env,
    )


def unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def jobs_of(server: UwsgiServer, task: str) -> list[dict[str, Any]]:
    response = server.get(f"/jobs?task={TASKS}.{task}&limit=1000")
    assert response.status == 200, response
    return list(response.json()["jobs"])


def slots_of(server: UwsgiServer, task: str) -> list[int]:
    """Every job's slot, as whole unix seconds (one entry per job)."""
    return [round(unix(job["periodic_slot"])) for job in jobs_of(server, task)]


def slot_rows(server: UwsgiServer) -> dict[str, tuple[float, float | None, str | None]]:
    """The store's record per schedule, read directly (read-only)."""
    with sqlite3.connect(f"file:{server.database}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT name, last_slot, fired_slot, fired_job FROM spoolkit_periodic"
        ).fetchall()
    return {name: (last, fired, job) for name, last, fired, job in rows}


def test_every_second_fires_each_slot_once_over_ten_seconds(tmp_path: Path) -> None:
    with periodic_server(tmp_path, "every1") as server:
        first = wait_for(lambda: slots_of(server, "every_second"), 15, "a first firing")
        time.sleep(10.5)
        jobs = jobs_of(server, "every_second")
        slots = [round(unix(job["periodic_slot"])) for job in jobs]
        twice = {slot: n for slot, n in Counter(slots).items() if n > 1}
        assert twice == {}, f"slots fired twice: {twice}"
        assert min(slots) == min(first)
        assert sorted(slots) == list(range(min(slots), max(slots) + 1)), "a slot is missing"
        assert len(slots) >= 10
        # Each firing is a normal job: it ran and succeeded.
        done = wait_for(
            lambda: all(server.job(job["id"])["state"] == "succeeded" for job in jobs),
            30,
            "every fired job to succeed",
        )
        assert done
        listed = {item["name"]: item for item in server.get("/jobs/periodic").json()["schedules"]}
        # The example app's own schedule is there too.
        assert listed["tasks.clean_old_renders"]["expression"] == "15 4 * * *"
        schedule = listed[f"{TASKS}.every_second"]
        assert schedule["task"] == f"{TASKS}.every_second"
        assert schedule["expression"] == "every 1 s" and schedule["tz"] == "UTC"
        assert schedule["last_job"] in {job["id"] for job in jobs_of(server, "every_second")}
        assert unix(schedule["next_run"]) > unix(schedule["last_slot"])
    log = server.log_text()
    assert "periodic tests.periodic_jobs.every_second" in log


def test_kill_minus_9_of_the_whole_tree_never_fires_a_slot_twice(tmp_path: Path) -> None:
    server = periodic_server(tmp_path, "every1")

    def fired_more_than(count: int) -> bool:
        return len(slots_of(server, "every_second")) >= count + 2

    try:
        before: list[int] = []
        for _ in range(3):
            server.start()
            wait_for(partial(fired_more_than, len(before)), 20, "two more firings")
            time.sleep(random.uniform(0.0, 1.0))  # land anywhere in a second, firing included
            server.kill_tree()
            before = slots_of_store(server)
        server.start()
        wait_for(partial(fired_more_than, len(before)), 20, "firings after the restart")
        jobs = jobs_of(server, "every_second")
        slots = [round(unix(job["periodic_slot"])) for job in jobs]
        twice = {slot: n for slot, n in Counter(slots).items() if n > 1}
        assert twice == {}, f"slots fired twice: {twice}"
        # Every fired job runs (at least once, as any job), none is lost with its file.
        wait_for(
            lambda: all(server.job(job["id"])["state"] == "succeeded" for job in jobs),
            30,
            "every fired job to succeed",
        )
        # The store's record agrees: it names the newest fired slot.
        last, fired, _ = slot_rows(server)[f"{TASKS}.every_second"]
        assert fired is not None and last >= fired >= max(before)
    finally:
        server.stop()


def slots_of_store(server: UwsgiServer, task: str = "every_second") -> list[int]:
    """The slots fired for ``task``, read from the store (while the server is down)."""
    with sqlite3.connect(f"file:{server.database}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT periodic_slot FROM spoolkit_jobs WHERE task = ? AND periodic_slot IS NOT NULL",
            (f"{TASKS}.{task}",),
        ).fetchall()
    return [round(slot) for (slot,) in rows]


def test_a_slot_missed_while_stopped_fires_within_the_grace_and_is_skipped_outside(
    tmp_path: Path,
) -> None:
    every = 12
    server = periodic_server(tmp_path, "grace", PERIODIC_TEST_EVERY=str(every))
    try:
        server.start()
        # The mule's first look records both schedules; they start with their next slot.
        names = {f"{TASKS}.lenient", f"{TASKS}.strict"}
        wait_for(lambda: names <= slot_rows(server).keys(), 10, "the schedules to be seen")
        server.stop()
        stopped = time.time()
        earlier = {task: slots_of_store(server, task) for task in ("lenient", "strict")}
        missed = (int(stopped) // every + 1) * every
        # Start again 3 s after the missed slot: beyond strict's grace (2 s), well
        # within lenient's (120 s), and before the next slot.
        time.sleep(max(0.0, missed + 3 - time.time()))
        server.start()
        assert time.time() < missed + every, "the restart took longer than a slot"

        def new_jobs(task: str) -> list[dict[str, Any]]:
            return [
                job
                for job in jobs_of(server, task)
                if round(unix(job["periodic_slot"])) not in earlier[task]
            ]

        lenient = wait_for(lambda: new_jobs("lenient"), 10, "the missed slot to fire")
        assert [round(unix(job["periodic_slot"])) for job in lenient] == [missed]
        assert unix(lenient[0]["created_at"]) >= missed + 3  # fired at start-up, late
        assert new_jobs("strict") == []
        # Both go on with the next slot, once each.
        wait_for(lambda: len(new_jobs("strict")) == 1, every + 5, "the next slot")
        wait_for(lambda: len(new_jobs("lenient")) == 2, 5, "the next slot")
        assert [round(unix(job["periodic_slot"])) for job in new_jobs("strict")] == [missed + every]
        assert sorted(round(unix(job["periodic_slot"])) for job in new_jobs("lenient")) == [
            missed,
            missed + every,
        ]
        log = server.log_since_start()
        assert f"periodic {TASKS}.strict: slot " in log and "more than misfire_grace=2s" in log
    finally:
        server.stop()
