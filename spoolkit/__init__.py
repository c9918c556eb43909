"""spoolkit: background jobs for Flask on uWSGI spoolers: ids, status, retries, scheduling."""

from .api import accepted, json_http_error
from .context import current_job
from .decorator import periodic, spool
from .errors import (
    BatchItemError,
    ConfigurationError,
    DecodeError,
    DuplicateTaskError,
    EncodeError,
    IdempotencyConflict,
    InvalidJobState,
    InvalidSchedule,
    JobNotFound,
    JobTimeout,
    ResultTooLarge,
    SpoolkitError,
    SpoolWriteError,
    StoreFull,
    StoreUnavailable,
    TaskNotFound,
)
from .extension import SpoolKit
from .job import Job, JobError, Progress
from .retry import GiveUp, Retry, RetryPolicy
from .states import JobState
from .task import Task

__all__ = [
    # the extension and tasks
    "SpoolKit",
    "spool",
    "periodic",
    "Task",
    "current_job",
    "Retry",
    "GiveUp",
    "RetryPolicy",
    "accepted",
    "json_http_error",
    # jobs
    "Job",
    "JobState",
    "JobError",
    "Progress",
    # errors
    "SpoolkitError",
    "BatchItemError",
    "ConfigurationError",
    "DecodeError",
    "DuplicateTaskError",
    "EncodeError",
    "IdempotencyConflict",
    "InvalidJobState",
    "InvalidSchedule",
    "JobNotFound",
    "JobTimeout",
    "ResultTooLarge",
    "SpoolWriteError",
    "StoreFull",
    "StoreUnavailable",
    "TaskNotFound",
]
