"""Periodic jobs without a server: the slot rule with a fixed clock, the store's
once-per-slot record, the housekeeper's firing, the checks at start-up, the API and
the CLI. The end-to-end half is ``test_e2e_periodic.py``."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask import Flask

import tasks  # the example app's tasks: its periodic clean-up
from spoolkit import ConfigurationError, SpoolKit, periodic, spool
from spoolkit.errors import StoreUnavailable
from spoolkit.firing import PeriodicJobs
from spoolkit.housekeeping import Housekeeper
from spoolkit.recurrence import PeriodicSchedule, Schedules, next_run, plan
from spoolkit.registry import TaskRegistry, default_registry
from spoolkit.runner import Deferred
from spoolkit.schedule import Parking
from spoolkit.sqlite import SQLiteStore
from spoolkit.store import NewJob, Store

from . import jobs
from .support import REPO, make_app
from .test_store_contract import IMPLEMENTATIONS

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, zone: Any = UTC) -> float:
    """Unix seconds of a wall-clock time in ``zone``."""
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def every(seconds: int, grace: float = 60) -> PeriodicSchedule:
    return PeriodicSchedule(name="s", task="t", every=seconds, misfire_grace=grace)


class FakeRunner:
    """Takes the jobs the firer hands over, like a runner; runs nothing."""

    name = "fake"
    housekept = True
    queues = None  # any queue
    parking = Parking()

    def __init__(self) -> None:
        self.handed: list[str] = []
        self.queues_used: list[str | None] = []

    def delivery_for(self, job_id: str, *rest: Any, **options: Any) -> str:
        return f"file-{job_id}"

    def stage(self, job_id: str, *rest: Any, **options: Any) -> Deferred:
        self.queues_used.append(options.get("queue"))
        return Deferred(lambda: self.handed.append(job_id))


# -- where the slots fall --------------------------------------------------------------------


def test_every_puts_slots_on_multiples_of_its_period_since_the_epoch() -> None:
    schedule = every(10)
    assert schedule.next_after(100.0) == 110.0
    assert schedule.next_after(99.5) == 100.0
    assert schedule.latest_until(100.0) == 100.0
    assert schedule.latest_until(109.99) == 100.0
    assert schedule.expression == "every 10 s"


def test_cron_is_read_in_its_time_zone_across_daylight_saving_changes() -> None:
    """Debian cron's rules: a time the clocks skip fires at the end of the gap, a time
    they repeat fires once; hourly expressions follow real hours."""
    daily = PeriodicSchedule(name="d", task="t", cron="30 2 * * *", tz="Europe/Berlin")
    slots, moment = [], at("2026-03-27 12:00")
    for _ in range(3):
        moment = daily.next_after(moment) or 0.0
        slots.append(utc(moment))
    # 02:30 CET, then 02:30 does not exist (clocks jump 02:00 -> 03:00): 03:00 CEST,
    # then 02:30 CEST.
    assert slots == ["2026-03-28 01:30:00", "2026-03-29 01:00:00", "2026-03-30 00:30:00"]
    moment, slots = at("2026-10-24 12:00"), []
    for _ in range(2):
        moment = daily.next_after(moment) or 0.0
        slots.append(utc(moment))
    # 02:30 happens twice on 25 October (CEST, then CET): it fires once, the first time.
    assert slots == ["2026-10-25 00:30:00", "2026-10-26 01:30:00"]
    hourly = PeriodicSchedule(name="h", task="t", cron="0 * * * *", tz="Europe/Berlin")
    moment, slots = at("2026-10-24 23:30"), []
    for _ in range(3):
        moment = hourly.next_after(moment) or 0.0
        slots.append(utc(moment))
    assert slots == ["2026-10-25 00:00:00", "2026-10-25 01:00:00", "2026-10-25 02:00:00"]


def test_latest_until_agrees_with_next_after_through_the_gap() -> None:
    daily = PeriodicSchedule(name="d", task="t", cron="30 2 * * *", tz="Europe/Berlin")
    fired = at("2026-03-29 03:00", BERLIN)
    assert daily.latest_until(fired) == fired
    assert daily.latest_until(fired - 1) == at("2026-03-28 02:30", BERLIN)
    # After the repeated hour, the slot is still the first 02:30.
    assert daily.latest_until(at("2026-10-25 01:45")) == at("2026-10-25 00:30")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "does not parse: Bad minute"),
        ({"cron": "* * * *"}, "not five fields"),
        ({"cron": "0 0 * * * *"}, "not five fields"),
        ({"cron": "0 0 30 2 *"}, "does not parse"),
        ({"cron": 5}, "not five fields"),
        ({}, "exactly one of cron="),
        ({"cron": "* * * * *", "every": 5}, "exactly one of cron="),
        ({"every": 0}, "whole number of seconds >= 1"),
        ({"every": 1.5}, "whole number of seconds >= 1"),
        ({"every": True}, "whole number of seconds >= 1"),
        ({"every": 5, "tz": "Europe/Paris"}, "tz= goes with cron="),
        ({"cron": "0 3 * * *", "tz": "Mars/Olympus"}, "not a time zone this system knows"),
        ({"cron": "0 3 * * *", "tz": ""}, "IANA time zone name"),
        ({"every": 5, "misfire_grace": 0}, "misfire_grace= is a number of seconds >= 1"),
        ({"every": 5, "misfire_grace": float("inf")}, "misfire_grace="),
    ],
)
def test_a_bad_schedule_is_refused_naming_it(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match="periodic schedule 'nightly'") as caught:
        periodic("tests.jobs.add", name="nightly", registry=TaskRegistry(), **options)
    assert message in str(caught.value)


def test_spool_cron_or_every_needs_a_task_without_required_arguments() -> None:
    registry = TaskRegistry()

    def needs(a: int) -> int:
        return a

    with pytest.raises(ConfigurationError, match=r"required arguments.*periodic\("):
        spool(every=5, registry=registry, name="needs")(needs)
    assert "needs" not in registry and len(registry.schedules) == 0

    def optional(a: int = 1) -> int:
        return a

    spool(cron="*/5 * * * *", tz="Europe/Berlin", registry=registry, name="optional")(optional)
    (schedule,) = registry.schedules
    assert (schedule.name, schedule.task, schedule.cron, schedule.tz) == (
        "optional", "optional", "*/5 * * * *", "Europe/Berlin",
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="go with cron= or every="):
        spool(misfire_grace=5, registry=registry, name="plain")(optional)
    with pytest.raises(ConfigurationError, match="does not parse"):
        spool(cron="0 25 * * *", registry=registry, name="bad")(optional)


def test_schedule_names_are_unique_and_a_declaration_met_again_replaces_itself() -> None:
    registry = TaskRegistry()
    for _ in range(2):  # a module imported twice
        periodic("tests.jobs.add", every=5, args=[1, 2], registry=registry)
    with pytest.raises(ConfigurationError, match="already declared"):
        periodic("tests.jobs.add", every=60, args=[3, 4], registry=registry)
    periodic("tests.jobs.add", every=60, args=[3, 4], name="add-hourly", registry=registry)
    assert [s.name for s in registry.schedules] == ["add-hourly", "tests.jobs.add"]
    with pytest.raises(ConfigurationError, match="args must be a list"):
        periodic("tests.jobs.add", every=5, args="12", name="x", registry=registry)  # type: ignore[arg-type]


# -- which slot is due ------------------------------------------------------------------------


def test_plan_starts_a_new_schedule_with_its_next_slot() -> None:
    decided = plan(every(10), None, 135.0, starting=True)
    assert decided.fire == () and decided.record == 130.0 and decided.first_sight


def test_plan_after_a_stop_fires_only_the_latest_missed_slot_within_the_grace() -> None:
    decided = plan(every(10), 100.0, 135.0, starting=True)
    assert decided.fire == (130.0,) and decided.skipped == (110.0, 120.0)
    late = plan(every(10, grace=4), 100.0, 135.0, starting=True)
    assert late.fire == () and late.record == 130.0 and late.skipped == (110.0, 130.0)


def test_plan_while_running_catches_up_every_slot_within_the_grace() -> None:
    assert plan(every(10), 100.0, 135.0, starting=False).fire == (110.0, 120.0, 130.0)
    decided = plan(every(10, grace=20), 100.0, 135.0, starting=False)
    assert decided.fire == (120.0, 130.0) and decided.skipped == (110.0, 110.0)
    assert plan(every(10), 130.0, 139.9, starting=False).fire == ()


def test_next_run() -> None:
    schedule = every(10)
    assert next_run(schedule, None, 135.0) == 140.0
    assert next_run(schedule, 120.0, 135.0) == 130.0  # due, fires at the next tick
    assert next_run(schedule, 130.0, 135.0) == 140.0
    assert next_run(schedule, 0.0, 1000.0) == 1000.0  # due now, within the grace


# -- the store's record -------------------------------------------------------------------------


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made = IMPLEMENTATIONS[request.param](tmp_path, request)
    made.setup()
    yield made
    made.close()


def new_job(job_id: str, now: float = 100.0) -> NewJob:
    return NewJob(
        id=job_id, task="t", payload='{"args":[],"kwargs":{}}', max_attempts=2, backoff=1.0,
        priority=None, created_at=now, run_at=None, spool_file=f"file-{job_id}",
    )  # fmt: skip


def test_a_slot_is_recorded_with_its_job_once(store: Store) -> None:
    assert store.slots() == {}
    assert store.advance_slot("s", 100.0, 101.0, new_job("a" * 22))
    job = store.get("a" * 22)
    assert job is not None and job.periodic_slot == 100.0
    assert job.to_dict()["periodic_slot"] == "1970-01-01T00:01:40.000000Z"
    assert store.slots()["s"].fired_job == "a" * 22
    # The same slot again, or an earlier one: refused, and no job recorded.
    assert not store.advance_slot("s", 100.0, 102.0, new_job("b" * 22))
    assert not store.advance_slot("s", 90.0, 102.0, new_job("c" * 22))
    assert store.get("b" * 22) is None and store.get("c" * 22) is None
    # A skipped slot moves the record on and keeps the last fired slot and job.
    assert store.advance_slot("s", 110.0, 130.0, None)
    record = store.slots()["s"]
    assert (record.last_slot, record.fired_slot, record.fired_job) == (110.0, 100.0, "a" * 22)
    assert [job.periodic_slot for job in store.list_jobs()] == [100.0]


def test_the_job_and_the_slot_are_one_transaction(store: Store) -> None:
    """A job that cannot be recorded leaves the slot undecided, to be fired again."""
    store.insert(new_job("a" * 22))
    with pytest.raises(StoreUnavailable):
        store.advance_slot("s", 100.0, 101.0, new_job("a" * 22))  # its id is taken
    assert store.slots() == {}
    assert store.advance_slot("s", 100.0, 101.0, new_job("b" * 22))


def test_racing_firers_on_one_store_fire_each_slot_once(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")
    SQLiteStore(path).setup()
    registry = TaskRegistry()
    registry.register(jobs.add)
    periodic("tests.jobs.add", every=1, args=[1, 2], registry=registry)
    firers = [PeriodicJobs(registry, SQLiteStore(path), FakeRunner()) for _ in range(4)]
    start = 1_000_000.0
    barrier = threading.Barrier(len(firers))

    errors: list[BaseException] = []

    def run(firer: PeriodicJobs) -> None:
        # Each thread opens its connections before any of them writes, through the
        # store's retry: opening one while another connection commits can fail at once
        # (the store's timeout=0).
        store = firer.store
        assert isinstance(store, SQLiteStore)
        try:
            store._locked(lambda: store._connection(durable=False))
            store._locked(lambda: store._connection(durable=True))
            for step in range(40):
                barrier.wait(timeout=120)  # a slow disk under a loaded CI, not a hang
                firer.fire_due(start + step * 0.5)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()  # the others stop waiting for this one
            raise

    threads = [threading.Thread(target=run, args=(firer,)) for firer in firers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The first error is the cause (the others are the broken barrier it left).
    assert not errors, f"a firer failed: {errors[0]!r}"
    slots = [job.periodic_slot for job in SQLiteStore(path).list_jobs(limit=1000)]
    assert Counter(slots).most_common(1)[0][1] == 1
    assert sorted(slots) == [start + n for n in range(1, 20)]


# -- the housekeeper fires -----------------------------------------------------------------------


def firer_on(tmp_path: Path, *schedules: PeriodicSchedule) -> tuple[PeriodicJobs, FakeRunner]:
    registry = TaskRegistry()
    registry.register(jobs.add)
    for schedule in schedules:
        registry.schedules.add(schedule)
    store = SQLiteStore(str(tmp_path / "jobs.db"))
    store.setup()
    runner = FakeRunner()
    return PeriodicJobs(registry, store, runner), runner


def fired_slots(firer: PeriodicJobs) -> list[str]:
    return sorted(utc(job.periodic_slot or 0) for job in firer.store.list_jobs(limit=10_000))


def test_a_cron_with_a_time_zone_fires_at_the_wall_clock_time_across_dst(tmp_path: Path) -> None:
    """A fixed clock stepped through three days around each change, twice a second
    as the mule does, from the fixed clock's start."""
    daily = PeriodicSchedule(
        name="daily", task="tests.jobs.add", cron="30 2 * * *", tz="Europe/Berlin",
        args=(1, 2),
    )  # fmt: skip
    morning = PeriodicSchedule(
        name="morning", task="tests.jobs.add", cron="0 9 * * *", tz="America/New_York",
        args=(1, 2),
    )  # fmt: skip
    firer, runner = firer_on(tmp_path, daily, morning)
    for start in ("2026-03-07 12:00", "2026-10-24 12:00"):
        run_clock(firer, at(start), at(start) + 3 * 86400)
    assert fired_slots(firer) == sorted([
        # New York: 09:00 EST (14:00Z), then EDT from 8 March (13:00Z).
        "2026-03-07 14:00:00", "2026-03-08 13:00:00", "2026-03-09 13:00:00",
        # Berlin, still CET in early March: 02:30 is 01:30Z.
        "2026-03-08 01:30:00", "2026-03-09 01:30:00", "2026-03-10 01:30:00",
        # Berlin in October: 02:30 happens twice on the 25th, fires once (CEST, 00:30Z).
        "2026-10-25 00:30:00", "2026-10-26 01:30:00", "2026-10-27 01:30:00",
        # New York changes on 1 November: still EDT (13:00Z) in these days.
        "2026-10-24 13:00:00", "2026-10-25 13:00:00", "2026-10-26 13:00:00",
    ])  # fmt: skip
    assert len(runner.handed) == 12
    # Berlin's spring change: 29 March has no 02:30, the job fires at 03:00 CEST (01:00Z).
    spring, _ = firer_on(tmp_path / "spring", daily)
    run_clock(spring, at("2026-03-28 12:00"), at("2026-03-30 12:00"))
    assert fired_slots(spring) == ["2026-03-29 01:00:00", "2026-03-30 00:30:00"]


def run_clock(firer: PeriodicJobs, start: float, end: float, step: float = 15.0) -> None:
    """The mule's loop on a fixed clock (coarser than its 0.5 s tick: cron is per minute)."""
    now = start
    while now < end:
        firer.fire_due(now)
        now += step


def test_every_slot_fires_once_and_a_held_up_tick_catches_up(tmp_path: Path) -> None:
    firer, runner = firer_on(
        tmp_path, PeriodicSchedule(name="ten", task="tests.jobs.add", every=10, args=(1, 2))
    )
    assert firer.fire_due(1005.0) == 0  # first sight
    for step in range(40):
        firer.fire_due(1005.0 + step * 0.5)
    assert fired_slots(firer) == [utc(1010.0), utc(1020.0)]
    assert firer.fire_due(1055.0) == 3  # held up for 30 s: 1030, 1040, 1050
    assert len(fired_slots(firer)) == len(set(fired_slots(firer))) == 5 == len(runner.handed)
    job = firer.store.get(runner.handed[0])
    assert job is not None and job.task == "tests.jobs.add" and job.max_attempts == 3
    assert json.loads(firer.store.payload(job.id))["args"] == [1, 2]


def test_after_a_restart_the_missed_slot_fires_within_the_grace_else_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lenient = PeriodicSchedule(name="lenient", task="tests.jobs.add", every=10, args=(1, 2))
    strict = PeriodicSchedule(
        name="strict", task="tests.jobs.add", every=10, misfire_grace=2, args=(1, 2)
    )
    firer, _ = firer_on(tmp_path, lenient, strict)
    firer.fire_due(1001.0)
    firer.fire_due(1010.2)  # both fire 1010; then the server stops
    # Started again at 1053: 1020..1050 were missed while it was down.
    restarted = PeriodicJobs(firer_registry(lenient, strict), firer.store, FakeRunner())
    caplog.set_level(logging.INFO, "spoolkit.periodic")
    assert restarted.fire_due(1053.0) == 1
    records = restarted.store.slots()
    assert records["lenient"].fired_slot == 1050.0  # only the latest missed slot: no burst
    assert records["strict"].fired_slot == 1010.0 and records["strict"].last_slot == 1050.0
    assert "periodic lenient: slots 1970-01-01T00:17:00.000000Z to " in caplog.text
    assert "only the latest missed slot fires" in caplog.text
    assert "periodic strict: slots" in caplog.text and "more than misfire_grace=2s" in caplog.text
    # Running on: both fire the next slot, and a restart within it fires nothing again.
    assert restarted.fire_due(1060.3) == 2
    again = PeriodicJobs(firer_registry(lenient, strict), firer.store, FakeRunner())
    assert again.fire_due(1060.4) == 0


def test_a_firing_goes_to_its_tasks_queue_which_must_be_configured(tmp_path: Path) -> None:
    registry = TaskRegistry()

    def nightly() -> None:
        pass

    spool(queue="slow", every=60, registry=registry, name="nightly")(nightly)
    store = SQLiteStore(str(tmp_path / "jobs.db"))
    store.setup()
    runner = FakeRunner()
    runner.queues = {"default"}  # type: ignore[assignment]
    with pytest.raises(ConfigurationError, match=r"schedule 'nightly'.*queue 'slow' is not"):
        PeriodicJobs(registry, store, runner)  # type: ignore[arg-type]
    runner.queues = {"default", "slow"}  # type: ignore[assignment]
    firer = PeriodicJobs(registry, store, runner)  # type: ignore[arg-type]
    firer.fire_due(1000.0)
    assert firer.fire_due(1020.0) == 1
    assert runner.queues_used == ["slow"]


def firer_registry(*schedules: PeriodicSchedule) -> TaskRegistry:
    registry = TaskRegistry()
    registry.register(jobs.add)
    for schedule in schedules:
        registry.schedules.add(schedule)
    return registry


def test_the_housekeeper_fires_and_a_service_without_schedules_fires_nothing(
    tmp_path: Path,
) -> None:
    firer, _ = firer_on(
        tmp_path, PeriodicSchedule(name="s", task="tests.jobs.add", every=1, args=(1, 2))
    )
    keeper = Housekeeper(firer.store, firer.runner, None, firer)  # type: ignore[arg-type]
    keeper.fire_due(100.2)
    assert keeper.fire_due(101.2) == 1
    bare = Housekeeper(firer.store, firer.runner, None)  # type: ignore[arg-type]
    assert bare.fire_due(200.0) == 0


CRASHING_FIRER = """
import sys, time
from spoolkit.firing import PeriodicJobs
from spoolkit.recurrence import PeriodicSchedule
from spoolkit.registry import TaskRegistry
from spoolkit.runner import Deferred
from spoolkit.schedule import Parking
from spoolkit.sqlite import SQLiteStore
import tests.jobs
from spoolkit.registry import default_registry

class Runner:
    name, housekept, queues, parking = "fake", True, None, Parking()
    def delivery_for(self, job_id, *rest, **options): return "file-" + job_id
    def stage(self, *rest, **options): return Deferred()

registry = TaskRegistry()
registry.register(default_registry.get("tests.jobs.add"))
registry.schedules.add(PeriodicSchedule(name="s", task="tests.jobs.add", every=1, args=(1, 2)))
store = SQLiteStore(sys.argv[1], synchronous="OFF")
firer = PeriodicJobs(registry, store, Runner())
record = store.slots().get("s")
now = record.last_slot if record else 1_000_000.0  # started again where it stopped
print("ready", flush=True)
while True:
    now += 0.5
    firer.fire_due(now)
"""


def test_kill_minus_9_in_the_middle_of_firing_never_fires_a_slot_twice(tmp_path: Path) -> None:
    """A firer on a clock running fast is SIGKILLed at random moments, firing included,
    and started again from the store each time: no slot ever has two jobs."""
    path = tmp_path / "jobs.db"
    SQLiteStore(str(path)).setup()
    script = tmp_path / "firer.py"
    script.write_text(textwrap.dedent(CRASHING_FIRER))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(12):
        child = subprocess.Popen(
            [sys.executable, str(script), str(path)], cwd=str(REPO), env=env,
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        time.sleep(random.uniform(0.02, 0.15))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    store = SQLiteStore(str(path))
    slots = [job.periodic_slot for job in store.list_jobs(limit=1_000_000)]
    assert len(slots) > 12
    assert [slot for slot, count in Counter(slots).items() if count > 1] == []
    record = store.slots()["s"]
    assert record.fired_slot == max(s for s in slots if s is not None)
    fired = store.get(record.fired_job or "")
    assert fired is not None and fired.periodic_slot == record.fired_slot


# -- start-up, API and CLI ---------------------------------------------------------------------


@pytest.fixture
def schedules(monkeypatch: pytest.MonkeyPatch) -> Schedules:
    """The default registry's schedules, empty for this test (tasks.py's are left out)."""
    fresh = Schedules()
    monkeypatch.setattr(default_registry, "schedules", fresh)
    return fresh


def test_an_unknown_task_stops_the_start_up(tmp_path: Path, schedules: Schedules) -> None:
    periodic("tests.jobs.no_such_task", cron="0 3 * * *", name="nightly")
    with pytest.raises(ConfigurationError, match=r"periodic schedule 'nightly' \(.*test_periodic"):
        make_app(tmp_path)


def test_arguments_that_do_not_fit_stop_the_start_up(tmp_path: Path, schedules: Schedules) -> None:
    periodic("tests.jobs.add", every=60, args=[1])
    with pytest.raises(ConfigurationError, match=r"tests\.jobs\.add.*missing a required argument"):
        make_app(tmp_path)
    schedules._items.clear()
    periodic("tests.jobs.echo", every=60, args=[object()])
    with pytest.raises(ConfigurationError, match=r"tests\.jobs\.echo"):
        make_app(tmp_path / "2")


def test_a_bad_expression_in_a_task_module_stops_the_start_up(
    tmp_path: Path, schedules: Schedules, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_schedules.py").write_text(
        "from spoolkit import periodic\n"
        "periodic('tests.jobs.add', cron='0 25 * * *', args=[1, 2], name='broken')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigurationError, match=r"periodic schedule 'broken'.*Bad hour"):
        app = Flask("testapp")
        app.config.update(
            SPOOLKIT_DATABASE=str(tmp_path / "jobs.db"),
            SPOOLKIT_IMPORTS="tests.jobs,broken_schedules",
        )
        SpoolKit(app)
    assert len(schedules) == 0


def test_the_api_and_the_cli_list_the_schedules(tmp_path: Path, schedules: Schedules) -> None:
    periodic("tests.jobs.add", every=30, args=[1, 2], name="adder")
    periodic("tests.jobs.echo", cron="0 9 * * 1-5", tz="Europe/Berlin", args=["hi"])
    app = make_app(tmp_path, SPOOLKIT_EAGER=True)
    client = app.test_client()
    listed = client.get("/jobs/periodic")
    assert listed.status_code == 200 and listed.json is not None
    # Not a job id: nothing but GET is advertised or routed there.
    assert set(client.options("/jobs/periodic").headers["Allow"].split(", ")) == {
        "GET", "HEAD", "OPTIONS",
    }  # fmt: skip
    assert client.delete("/jobs/periodic").status_code == 405
    assert client.delete("/jobs/periodicx").status_code == 404  # an unknown job
    adder, echo = listed.json["schedules"]
    assert adder["name"] == "adder" and adder["task"] == "tests.jobs.add"
    assert adder["expression"] == "every 30 s" and adder["last_slot"] is None
    assert echo == {
        "name": "tests.jobs.echo", "task": "tests.jobs.echo", "expression": "0 9 * * 1-5",
        "tz": "Europe/Berlin", "misfire_grace": 60.0, "next_run": echo["next_run"],
        "last_slot": None, "last_job": None,
    }  # fmt: skip
    assert datetime.fromisoformat(echo["next_run"]).astimezone(BERLIN).hour == 9
    # Fired (an eager runner runs the job at once): a normal job with its slot.
    service = app.extensions["spoolkit"]
    now = time.time()
    service.periodic.fire_due(now)
    service.periodic.fire_due(now + 30)
    adder = client.get("/jobs/periodic").json["schedules"][0]  # type: ignore[index]
    job = client.get(f"/jobs/{adder['last_job']}").json
    assert job is not None and job["state"] == "succeeded" and job["result"] == 3
    assert job["periodic_slot"] == adder["last_slot"]
    slot = datetime.fromisoformat(job["periodic_slot"]).timestamp()
    assert slot % 30 == 0 and now < slot <= now + 30
    assert len(job["history"]) == 1
    # The CLI says the same.
    output = app.test_cli_runner().invoke(args=["spoolkit", "periodic"]).output
    assert "adder  every 30 s  tz=UTC  next=" in output
    assert f"job={adder['last_job']}" in output
    assert "tests.jobs.echo  0 9 * * 1-5  tz=Europe/Berlin" in output


def test_the_example_clean_up_deletes_only_wav_files_older_than_a_day(tmp_path: Path) -> None:
    old, new, other = tmp_path / "old.wav", tmp_path / "new.wav", tmp_path / "ready.jsonl"
    for path in (old, new, other):
        path.write_bytes(b"x")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    os.utime(other, (two_days_ago, two_days_ago))
    app = Flask("cleanup")
    app.config["RENDER_OUTPUT_DIR"] = str(tmp_path)
    with app.app_context():
        assert tasks.clean_old_renders() == 1
        app.config["RENDER_OUTPUT_DIR"] = str(tmp_path / "missing")
        assert tasks.clean_old_renders() == 0
    assert not old.exists() and new.exists() and other.exists()
    (schedule,) = [s for s in default_registry.schedules if s.task == "tasks.clean_old_renders"]
    assert schedule.cron == "15 4 * * *" and schedule.tz == "UTC"
