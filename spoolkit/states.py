"""Job states, and the groups of them that the store's operations accept.

Each store operation that changes a job's state is a conditional update on
one of these groups (``WHERE state IN ...``): a claim takes a ``WAITING``
job, a cancel a ``WAITING`` one, a manual retry a ``RETRYABLE`` one, an
outcome only a ``running`` one held by its runner. So two processes racing
on one job (a cancel and a spooler's claim) cannot both win: whichever
commits first decides, the other sees the new state. The store's contract
tests check each refusal.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in its life. The value is what the API and the store show."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED


#: Waiting for a spooler: a claim may start them, a cancel may end them.
WAITING = frozenset({JobState.QUEUED, JobState.SCHEDULED})
#: Final states; only an explicit retry moves a failed or cancelled job on.
FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
#: States a manual retry (``POST /jobs/<id>/retry``) accepts.
RETRYABLE = frozenset({JobState.FAILED, JobState.CANCELLED})
