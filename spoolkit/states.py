"""Job states and the transitions between them.

The store enforces these with conditional updates (``WHERE state IN ...``),
so two processes racing on one job (a cancel and a spooler's claim) cannot
both win: whichever commits first decides, the other sees the new state.
"""

from __future__ import annotations

from enum import StrEnum

from .errors import InvalidJobState


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

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.SCHEDULED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    # RUNNING -> RUNNING: a run cut short by a restart starts again, uncounted.
    # RUNNING -> QUEUED: the housekeeper re-spools a job whose runner died.
    JobState.RUNNING: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.SCHEDULED,
            JobState.QUEUED,
            JobState.RUNNING,
        }
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED, JobState.SCHEDULED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED, JobState.SCHEDULED}),
}


def check_transition(current: JobState, new: JobState) -> None:
    """Raise :class:`InvalidJobState` unless ``current -> new`` is allowed."""
    if new not in TRANSITIONS[current]:
        raise InvalidJobState(
            f"a {current.value} job cannot become {new.value}", state=current.value
        )
