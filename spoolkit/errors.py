"""Every exception the kit raises on purpose, under one base class.

Each one names what went wrong and, where there is one, the fix. ``Retry``
is not here: it is control flow a task raises, not an error (see retry.py).
"""

from __future__ import annotations


class SpoolkitError(Exception):
    """Base class of every error raised by spoolkit."""


class ConfigurationError(SpoolkitError):
    """The kit is set up wrongly; the message names the setting to change."""


class DuplicateTaskError(SpoolkitError, ValueError):
    """Two different functions were registered under the same task name."""


class TaskNotFound(SpoolkitError, LookupError):
    """No task is registered under the given name in this process."""


class EncodeError(SpoolkitError, TypeError):
    """Arguments or a result cannot be encoded as JSON for the spool."""


class ResultTooLarge(EncodeError):
    """A task's result is over ``SPOOLKIT_MAX_RESULT_BYTES`` once encoded."""


class DecodeError(SpoolkitError, ValueError):
    """A spool file does not hold a job envelope this version can read."""


class InvalidSchedule(SpoolkitError, ValueError):
    """``at``, ``countdown`` or ``priority`` has a wrong type or value."""


class JobNotFound(SpoolkitError, LookupError):
    """No job with the given id exists in the store."""


class InvalidJobState(SpoolkitError):
    """The job's state does not allow the operation (cancelling a running job)."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


class IdempotencyConflict(SpoolkitError, ValueError):
    """An idempotency key already names a job of another task or other arguments."""


class BatchItemError(SpoolkitError, ValueError):
    """One job of a batch (``enqueue_many``, ``task.map``, ``POST /jobs/batch``) is
    wrong: nothing of the batch was recorded. ``index`` is its position."""

    def __init__(self, index: int, cause: Exception) -> None:
        super().__init__(f"job {index} of the batch: {cause}")
        self.index = index
        self.cause = cause


class JobTimeout(SpoolkitError):
    """Raised inside a task whose attempt ran past its ``timeout``: ``finally`` blocks
    run; a task that does not return within ``SPOOLKIT_TIMEOUT_GRACE`` is killed."""


class StoreUnavailable(SpoolkitError):
    """The job store did not answer (locked past its timeout, or unreachable)."""


class StoreFull(StoreUnavailable):
    """The job store's disk is full: nothing was recorded (HTTP 507)."""


class NodeFenced(SpoolkitError):
    """This node was taken for dead by another (its heartbeat went stale) and its
    jobs were taken back: it must register again before it claims any job."""


class SpoolWriteError(SpoolkitError):
    """A spool file could not be written (disk full, permissions)."""
