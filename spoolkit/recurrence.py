"""Periodic schedules as plain values: where their slots fall, and which slot is due now.

A schedule fires at *slots*, whole seconds of Unix time. ``every=N`` puts one on
every multiple of N seconds since the Unix epoch, so every process computes the
same slots whenever it starts. ``cron=`` puts one on each minute a five-field
cron expression matches, read in the schedule's ``tz`` (an IANA name, UTC by
default). cronsim parses and evaluates the expression and follows Debian cron
across daylight-saving changes: a time skipped when the clocks go forward fires
at the first minute after the gap; a time that happens twice when they go back
fires once, at its first occurrence (hourly and finer expressions follow real
time instead: an hour that happens twice fires twice).

:func:`plan` is the rule the housekeeper applies on every tick, pure so that it
can be tested with a fixed clock; the store makes each slot fire at most once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .encoding import TASK_NAME_PATTERN
from .errors import ConfigurationError

#: Seconds after its slot a firing may still happen (the missed slot at start-up included).
DEFAULT_MISFIRE_GRACE = 60.0
#: Slots one tick fires at most for one schedule (the next tick goes on from there).
CATCH_UP_LIMIT = 100
# A fixed moment to check that a cron expression matches at all.
_PROBE = datetime(2000, 1, 1)


def _zone(tz: object) -> tzinfo:
    if not isinstance(tz, str) or not tz:
        raise ValueError(f"tz must be an IANA time zone name such as 'Europe/Paris', got {tz!r}")
    if tz == "UTC":
        return UTC  # needs no zone database
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"tz={tz!r} is not a time zone this system knows (an IANA name such as "
            "'Europe/Paris'; the zone database comes from the OS, or pip's tzdata)"
        ) from None


@dataclass(frozen=True)
class PeriodicSchedule:
    """One declared schedule: run ``task`` with ``args``/``kwargs`` at every slot.

    Build it with ``@spool(cron=..., every=...)`` or ``spoolkit.periodic(...)``;
    both check it at once and raise :class:`ConfigurationError` naming it.
    """

    name: str
    task: str
    cron: str | None = None
    every: int | None = None
    tz: str = "UTC"
    misfire_grace: float = DEFAULT_MISFIRE_GRACE
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: ``file:line`` of the declaration: the same one imported again replaces itself.
    where: str = ""

    def __post_init__(self) -> None:
        try:
            self._check()
        except ValueError as exc:
            raise ConfigurationError(f"periodic schedule {self.name!r}: {exc}") from None

    def _check(self) -> None:
        if not isinstance(self.name, str) or not TASK_NAME_PATTERN.fullmatch(self.name):
            raise ValueError("a schedule name is 1-200 letters, digits, '_', '.', ':' or '-'")
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron= (an expression) or every= (seconds)")
        if self.every is not None:
            if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
                raise ValueError(f"every= is a whole number of seconds >= 1, got {self.every!r}")
            if self.tz != "UTC":
                raise ValueError("tz= goes with cron=; every= counts seconds from the Unix epoch")
        grace = self.misfire_grace
        if (
            isinstance(grace, bool)
            or not isinstance(grace, int | float)
            or not (1 <= grace < math.inf)
        ):
            raise ValueError(f"misfire_grace= is a number of seconds >= 1, got {grace!r}")
        zone = _zone(self.tz)
        if self.cron is not None:
            if not isinstance(self.cron, str) or len(self.cron.split()) != 5:
                raise ValueError(
                    f"cron={self.cron!r} is not five fields (minute hour day-of-month month "
                    "day-of-week); for seconds use every="
                )
            try:
                next(CronSim(self.cron, _PROBE.replace(tzinfo=zone)))
            except CronSimError as exc:
                raise ValueError(f"cron={self.cron!r} does not parse: {exc}") from None
            except StopIteration:
                raise ValueError(f"cron={self.cron!r} never matches") from None

    @property
    def expression(self) -> str:
        """The cron expression, or ``every N s``."""
        return self.cron if self.cron is not None else f"every {self.every} s"

    @cached_property
    def zone(self) -> tzinfo:
        return _zone(self.tz)

    def _cron_next(self, start: float, reverse: bool) -> float | None:
        assert self.cron is not None
        try:
            moment = next(CronSim(self.cron, datetime.fromtimestamp(start, self.zone), reverse))
        except StopIteration:  # no match within 50 years
            return None
        return moment.timestamp()

    def next_after(self, moment: float) -> float | None:
        """The first slot strictly after ``moment`` (``None``: none within 50 years)."""
        if self.every is not None:
            return float((math.floor(moment) // self.every + 1) * self.every)
        # cronsim starts one second after the whole second given: > moment.
        return self._cron_next(math.floor(moment), reverse=False)

    def latest_until(self, moment: float) -> float | None:
        """The last slot at or before ``moment``."""
        if self.every is not None:
            return float(math.floor(moment) // self.every * self.every)
        # Backwards, cronsim starts one second before the whole second given.
        return self._cron_next(math.floor(moment) + 1, reverse=True)


@dataclass(frozen=True)
class Plan:
    """What a schedule's next tick does: fire ``fire`` (oldest first), or just move its
    record on to ``record`` without a job; ``skipped`` is the span of slots passed over."""

    fire: tuple[float, ...] = ()
    record: float | None = None
    skipped: tuple[float, float] | None = None
    first_sight: bool = False


def plan(
    schedule: PeriodicSchedule, last_slot: float | None, now: float, *, starting: bool
) -> Plan:
    """Which slots to fire at ``now``, given the last slot decided (fired or skipped).

    * Never seen before (``last_slot`` is ``None``): nothing fires; the schedule
      starts with its next slot.
    * A slot later than ``misfire_grace`` seconds is skipped, never fired.
    * ``starting`` (the housekeeper's first look since it started): of the slots
      missed while the server was down, only the most recent fires, if within
      the grace; the older ones are skipped. No burst.
    * Running: every slot since the last one fires, oldest first, within the grace
      (a tick held up by a busy store loses no slot).
    """
    latest = schedule.latest_until(now)
    if latest is None or (last_slot is not None and latest <= last_slot):
        return Plan()
    if last_slot is None:
        return Plan(record=latest, first_sight=True)
    horizon = now - schedule.misfire_grace
    first_missed = schedule.next_after(last_slot)
    assert first_missed is not None  # latest > last_slot is one
    if latest < horizon:
        return Plan(record=latest, skipped=(first_missed, latest))
    if starting:
        oldest = latest
    else:
        # Whole-second slots at or after the horizon, after the last one.
        oldest = schedule.next_after(max(last_slot, math.ceil(horizon) - 1)) or latest
    skipped = None
    if first_missed < oldest:
        skipped = (first_missed, schedule.latest_until(oldest - 1) or first_missed)
    return Plan(fire=tuple(_slots(schedule, oldest, latest)), skipped=skipped)


def _slots(schedule: PeriodicSchedule, oldest: float, latest: float) -> Iterator[float]:
    slot: float | None = oldest
    for _ in range(CATCH_UP_LIMIT):
        if slot is None or slot > latest:
            return
        yield slot
        slot = schedule.next_after(slot)


def next_run(schedule: PeriodicSchedule, last_slot: float | None, now: float) -> float | None:
    """When the schedule fires next: a due slot not fired yet, else the next one."""
    latest = schedule.latest_until(now)
    due = (
        last_slot is not None
        and latest is not None
        and latest > last_slot
        and latest >= now - schedule.misfire_grace
    )
    if due:
        return latest
    return schedule.next_after(max(now, last_slot or now))


class Schedules:
    """The periodic schedules declared in this process, by name (``registry.schedules``)."""

    def __init__(self) -> None:
        self._items: dict[str, PeriodicSchedule] = {}

    def add(self, schedule: PeriodicSchedule) -> None:
        """Add ``schedule``; another under a taken name is refused (the same declaration
        met again, a module imported twice, replaces itself)."""
        existing = self._items.get(schedule.name)
        if existing is not None and existing != schedule:
            raise ConfigurationError(
                f"periodic schedule {schedule.name!r} is already declared ({existing.where}); "
                "pass name='...' to tell them apart"
            )
        self._items[schedule.name] = schedule

    def __iter__(self) -> Iterator[PeriodicSchedule]:
        return iter(sorted(self._items.values(), key=lambda item: item.name))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
