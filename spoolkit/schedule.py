"""Turning ``at`` / ``countdown`` / ``priority`` into validated values.

The spooler only knows whole seconds (a file's mtime), so every time here is
a float of unix seconds and :func:`spool_mtime` rounds *up*: a job may start
up to a second late, never early. Times without a zone are UTC, in the HTTP
API and in Python alike, so one rule holds everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import InvalidSchedule

#: Priorities map to uWSGI priority subdirectories ``NN``; lower runs first.
MIN_PRIORITY = 0
MAX_PRIORITY = 99
# A timestamp past this is a mistake (milliseconds passed as seconds, say).
_LATEST = datetime(9999, 1, 1, tzinfo=UTC).timestamp()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float(number: object, name: str) -> float:
    """``float(number)``, with an int too large for a float as ``InvalidSchedule``."""
    try:
        return float(number)  # type: ignore[arg-type]
    except OverflowError:
        raise InvalidSchedule(f"{name} is out of range") from None


def to_timestamp(at: object) -> float:
    """Unix seconds from a ``datetime``, a number of unix seconds or an ISO 8601 string."""
    if isinstance(at, datetime):
        moment = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
        return moment.timestamp()
    if _is_number(at):
        value = _float(at, "at")
    elif isinstance(at, str):
        try:
            value = to_timestamp(datetime.fromisoformat(at.strip()))
        except ValueError:
            try:
                value = float(at)
            except ValueError:
                raise InvalidSchedule(
                    f"at={at!r} is neither unix seconds nor an ISO 8601 time "
                    "(for example 2030-01-31T12:00:00Z)"
                ) from None
    else:
        raise InvalidSchedule(
            f"at must be unix seconds, an ISO 8601 string or a datetime, got {type(at).__name__}"
        )
    if not math.isfinite(value) or value < 0 or value > _LATEST:
        raise InvalidSchedule(f"at={at!r} is out of range")
    return value


def resolve_run_at(at: object, countdown: object, now: float) -> float | None:
    """When a job may first run: ``None`` for now, else unix seconds.

    Giving both ``at`` and ``countdown`` is an error: which one would win is a
    guess either way.
    """
    if at is not None and countdown is not None:
        raise InvalidSchedule("give either at or countdown, not both")
    if countdown is not None:
        if not _is_number(countdown):
            raise InvalidSchedule(f"countdown must be a number of seconds, got {countdown!r}")
        seconds = _float(countdown, "countdown")
        if not math.isfinite(seconds) or seconds < 0 or now + seconds > _LATEST:
            raise InvalidSchedule(f"countdown must be >= 0 seconds, got {countdown!r}")
        return now + seconds if seconds > 0 else None
    if at is not None:
        moment = to_timestamp(at)
        return moment if moment > now else None
    return None


def validate_priority(priority: object) -> int | None:
    """An int in ``MIN_PRIORITY..MAX_PRIORITY``, or ``None``.

    The value becomes a directory name under the spool, so nothing but a
    small int may pass (no ``../``, no absolute path).
    """
    if priority is None:
        return None
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidSchedule(f"priority must be an int, got {priority!r}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidSchedule(
            f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {priority}"
        )
    return priority


def spool_mtime(run_at: float | None, now: float) -> int:
    """The whole second to stamp on a spool file: ``ceil(run_at)``, or a second ago.

    A job to run now is stamped one second in the past, not ``int(now)``:
    uWSGI compares the mtime with ``time(NULL)``, which reads the kernel's
    coarse clock and lags ``time.time()`` by a few milliseconds after each
    second turns. A file stamped with the new second would look "in the
    future" to a scan in that window and wait a whole ``spooler-frequency``.
    """
    if run_at is None or run_at <= now:
        return int(now) - 1
    return math.ceil(run_at)


def isoformat(timestamp: float | None) -> str | None:
    """``2026-11-22T03:40:34.123456Z`` for the API, or ``None``."""
    if timestamp is None:
        return None
    # Clamped into what datetime can show: a stored row must never break the API.
    moment = min(max(float(timestamp), 0.0), _LATEST) if math.isfinite(timestamp) else _LATEST
    text = datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class Parking:
    """Which jobs wait in the store instead of in a runner ("parked").

    A job due more than ``ahead`` seconds from now is parked; ``None``
    never parks (runners that hold jobs in memory, or run them at once).
    The uWSGI spooler parks, because it ``lstat()``\\ s every file on every
    scan: a large far-future backlog in the spool directory would slow
    every pickup.
    """

    ahead: float | None = None
    #: Park every job, due or not: where nodes claim jobs from a shared store, a job
    #: waits in the store until a node with an idle spooler claims it.
    everything: bool = False
    #: Park the jobs of a batch (``enqueue_many``), whatever their time: the batch is one
    #: transaction and writes no spool file; the housekeeper spools its jobs within a
    #: tick, off the request, so a batch is recorded at the store's speed.
    batches: bool = False

    def parks(self, run_at: float | None, now: float, *, batch: bool = False) -> bool:
        """Does a job due at ``run_at`` (of a batch, with ``batch``) wait in the store?"""
        if self.everything or (batch and self.batches):
            return True
        return self.ahead is not None and run_at is not None and run_at > now + self.ahead
