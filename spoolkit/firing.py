"""Periodic jobs: the declared schedules, checked against the app's tasks, fired by the
housekeeper and listed by ``GET /jobs/periodic`` and ``flask spoolkit periodic``.

Only the housekeeping mule fires, twice a second (``Housekeeper.fire_due``). For a
due slot it records the job and moves the schedule's record on to the slot in one
store transaction, conditional on the record being behind the slot
(``Store.advance_slot``), then hands the job to the runner like any new job. So a
slot fires at most once whatever runs concurrently or crashes: a kill before the
commit leaves nothing (the slot is decided again at start-up), a kill after it
leaves a recorded job whose spool file the housekeeper writes if it is missing.
Which slots are due, and which are skipped as too late, is ``recurrence.plan``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError, SpoolWriteError, TaskNotFound
from .job import new_job_id
from .queues import DEFAULT_QUEUE, check_configured
from .recurrence import CATCH_UP_LIMIT, PeriodicSchedule, Plan, next_run, plan
from .registry import TaskRegistry
from .runner import Runner, delivery_of, hand_over
from .schedule import isoformat
from .store import NewJob, SlotRecord, Store
from .task import Call

log = logging.getLogger("spoolkit.periodic")


@dataclass(frozen=True)
class Prepared:
    """A schedule whose task is registered and whose arguments fit it, encoded once."""

    schedule: PeriodicSchedule
    call: Call


def prepare(registry: TaskRegistry, queues: Collection[str] | None = None) -> list[Prepared]:
    """Check every declared schedule against the registered tasks (at start-up):
    ``ConfigurationError`` naming the first one whose task is unknown, whose
    arguments do not fit it or are not JSON, or whose task's queue is not one of
    ``queues`` (``None``: any)."""
    prepared = []
    for schedule in registry.schedules:
        try:
            task = registry.get(schedule.task)
        except TaskNotFound:
            raise ConfigurationError(
                f"periodic schedule {schedule.name!r} ({schedule.where}): no task named "
                f"{schedule.task!r} is registered; import its module (list it in "
                "SPOOLKIT_IMPORTS) or fix the name"
            ) from None
        try:
            call = task.call(schedule.args, schedule.kwargs)
            check_configured(call.queue or DEFAULT_QUEUE, queues)
        except (TypeError, ConfigurationError) as exc:  # signature, not JSON, queue
            raise ConfigurationError(
                f"periodic schedule {schedule.name!r} ({schedule.where}): {exc}"
            ) from None
        prepared.append(Prepared(schedule, call))
    return prepared


class PeriodicJobs:
    """One app's periodic schedules and their firing."""

    def __init__(self, registry: TaskRegistry, store: Store, runner: Runner) -> None:
        self.schedules = prepare(registry, runner.queues)
        self.store = store
        self.runner = runner
        # Schedules this process has decided at least once: the first decision after a
        # start fires only the latest missed slot.
        self._looked: set[str] = set()
        # When to look at each schedule again (its next slot).
        self._wake: dict[str, float] = {}
        if self.schedules and not runner.housekept:
            log.warning("periodic schedules are fired by uWSGI's housekeeping mule only; in "
                        "%s mode they do not fire: %s", runner.name,
                        ", ".join(p.schedule.name for p in self.schedules))  # fmt: skip

    def fire_due(self, now: float) -> int:
        """Fire the slots due at ``now``; how many jobs were queued."""
        waiting = [p for p in self.schedules if now >= self._wake.get(p.schedule.name, 0.0)]
        if not waiting:
            return 0
        records = self.store.slots()
        fired = 0
        for prepared in waiting:
            name = prepared.schedule.name
            try:
                fired += self._decide(prepared, records.get(name), now)
            except Exception:
                log.exception("periodic %s: could not fire; trying again at the next tick", name)
        return fired

    def _decide(self, prepared: Prepared, record: SlotRecord | None, now: float) -> int:
        schedule = prepared.schedule
        name = schedule.name
        starting = name not in self._looked
        decided = plan(schedule, record.last_slot if record else None, now, starting=starting)
        if decided.record is not None and self.store.advance_slot(name, decided.record, now, None):
            if decided.first_sight:
                log.info("periodic %s (%s, tz %s): first seen; next slot %s", name,
                         schedule.expression, schedule.tz,
                         isoformat(schedule.next_after(now)))  # fmt: skip
            else:
                self._log_skipped(schedule, decided, now, starting)
        fired = 0
        for slot in decided.fire:
            job = self._new_job(prepared, now)
            if not self.store.advance_slot(name, slot, now, job):
                break  # another housekeeper on this store decided it
            if fired == 0:
                self._log_skipped(schedule, decided, now, starting)
            fired += 1
            log.info("job %s queued: periodic %s, slot %s (%.1fs after it)", job.id, name,
                     isoformat(slot), now - slot)  # fmt: skip
            try:
                hand_over(self.runner, [job])
            except SpoolWriteError as exc:
                log.warning("job %s: %s; the housekeeper spools it again", job.id, exc)
        self._looked.add(name)
        more = len(decided.fire) == CATCH_UP_LIMIT
        self._wake[name] = now if more else (schedule.next_after(now) or math.inf)
        return fired

    @staticmethod
    def _log_skipped(schedule: PeriodicSchedule, decided: Plan, now: float, starting: bool) -> None:
        if decided.skipped is None:
            return
        first, last = decided.skipped
        slots = f"slot {isoformat(first)}" if first == last else (
            f"slots {isoformat(first)} to {isoformat(last)}")  # fmt: skip
        if decided.fire and starting:
            why = "missed while the server was stopped; only the latest missed slot fires"
        else:
            why = f"{now - last:.0f}s late, more than misfire_grace={schedule.misfire_grace:g}s"
        log.warning("periodic %s: %s skipped (%s)", schedule.name, slots, why)

    def _new_job(self, prepared: Prepared, now: float) -> NewJob:
        call, job_id = prepared.call, new_job_id()
        return NewJob(
            id=job_id, task=call.task, payload=call.payload,
            max_attempts=call.policy.max_attempts, backoff=call.policy.backoff, priority=None,
            created_at=now, run_at=None,
            spool_file=delivery_of(self.runner, job_id, None, None, now),
            origin=call.origin, on_success=call.on_success, on_failure=call.on_failure,
            timeout=call.timeout, queue=call.queue or DEFAULT_QUEUE,
        )  # fmt: skip

    def listing(self, now: float) -> list[dict[str, Any]]:
        """The schedules as ``GET /jobs/periodic`` shows them, by name."""
        records = self.store.slots() if self.schedules else {}
        shown = []
        for prepared in self.schedules:
            schedule = prepared.schedule
            record = records.get(schedule.name)
            shown.append({
                "name": schedule.name,
                "task": schedule.task,
                "expression": schedule.expression,
                "tz": schedule.tz,
                "misfire_grace": schedule.misfire_grace,
                "next_run": isoformat(
                    next_run(schedule, record.last_slot if record else None, now)
                ),
                "last_slot": isoformat(record.fired_slot) if record else None,
                "last_job": record.fired_job if record else None,
            })  # fmt: skip
        return shown
