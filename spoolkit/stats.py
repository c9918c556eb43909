"""Running totals per task, kept in the store: what ``/metrics`` serves as counters and
histograms.

Why in the store and not in each process's memory: a job's attempts end in
whichever spooler ran them, uWSGI respawns spoolers, and ``/metrics`` is
answered by any web worker. Totals added to the store in the transaction
that records each outcome are one truth for every process (and, with a
shared database, every host), survive restarts, and cannot be counted twice
or lost by a crash between the outcome and the count. Purging old jobs does
not lower them, as a Prometheus counter requires.

A total is a ``(task, series, value)`` row. Series names:

- ``attempt:<outcome>``: attempts that ended so (``job.ATTEMPT_OUTCOMES``);
- ``finished:<state>``: jobs that reached a final state;
- ``duration:<le>``, ``duration:sum``: attempt run times, in seconds;
- ``wait:<le>``, ``wait:sum``: from when an attempt was due to its start.

A histogram keeps one count per bucket (not cumulative: one row changes per
observation); :func:`histogram` adds them up as Prometheus wants.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from .job import Job

#: Histogram bucket upper bounds, seconds: from a quick task to the hour of
#: the longest spooler harakiri one would set.
BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0, math.inf,
)  # fmt: skip
HISTOGRAMS = ("duration", "wait")

Series = tuple[str, float]


def bucket_label(bound: float) -> str:
    """A bound as Prometheus writes ``le``: ``0.5``, ``10.0``, ``+Inf``."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _observe(name: str, seconds: float) -> list[Series]:
    seconds = max(0.0, seconds)
    bound = next(b for b in BUCKETS if seconds <= b)
    return [(f"{name}:{bucket_label(bound)}", 1.0), (f"{name}:sum", seconds)]


def attempt_series(
    outcome: str,
    started_at: float | None,
    due_at: float | None,
    now: float,
    final_state: str | None,
) -> list[Series]:
    """What one ended attempt adds: its outcome, its run time and wait when known, and
    the job's final state if it has one now."""
    series: list[Series] = [(f"attempt:{outcome}", 1.0)]
    if started_at is not None:
        series += _observe("duration", now - started_at)
        if due_at is not None:
            series += _observe("wait", started_at - due_at)
    if final_state is not None:
        series.append((f"finished:{final_state}", 1.0))
    return series


def ended_attempt(job: Job, outcome: str, now: float, final_state: str | None) -> list[Series]:
    """``attempt_series`` of ``job``'s attempt that ended at ``now``: it was due at its
    scheduled time (a retry's included), else at its creation."""
    due = job.created_at if job.scheduled_for is None else max(job.created_at, job.scheduled_for)
    return attempt_series(outcome, job.started_at, due, now, final_state)


def finished_series(final_state: str) -> list[Series]:
    """What a job finished without an attempt ending (a cancel while it waited) adds."""
    return [(f"finished:{final_state}", 1.0)]


def labelled(totals: Mapping[str, float], kind: str) -> dict[str, float]:
    """``{"succeeded": 3.0, ...}`` from one task's ``kind:label`` totals."""
    prefix = f"{kind}:"
    return {name[len(prefix):]: value for name, value in totals.items() if name.startswith(prefix)}


def histogram(totals: Mapping[str, float], name: str) -> tuple[list[tuple[str, float]], float]:
    """One task's histogram ``name`` as Prometheus buckets (cumulative counts, ``+Inf``
    last) and the sum of observations."""
    running, buckets = 0.0, []
    for bound in BUCKETS:
        label = bucket_label(bound)
        running += totals.get(f"{name}:{label}", 0.0)
        buckets.append((label, running))
    return buckets, totals.get(f"{name}:sum", 0.0)


def by_task(rows: Iterable[tuple[str, str, float]]) -> dict[str, dict[str, float]]:
    """``(task, series, value)`` rows as ``{task: {series: value}}``."""
    totals: dict[str, dict[str, float]] = {}
    for task, series, value in rows:
        totals.setdefault(task, {})[series] = value
    return totals
