"""``current_job``: what a running task can know and report about its job."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .job import Progress

#: Progress writes closer together than this are coalesced; the last one is kept.
PROGRESS_INTERVAL = 0.25
#: A running task's ``current_job.abort_requested`` reads the store at most this often.
ABORT_CHECK_INTERVAL = 0.5
_MAX_MESSAGE = 1000


class JobContext:
    """The job being run by this thread; reached through ``current_job``."""

    def __init__(
        self,
        job_id: str,
        task: str,
        attempt: int,
        max_attempts: int,
        report: Callable[[Progress], None],
        check_abort: Callable[[], bool] = lambda: False,
    ) -> None:
        self.id = job_id
        self.task = task
        self.attempt = attempt
        self.max_attempts = max_attempts
        self._report = report
        self._check_abort = check_abort
        self._aborted = False
        self._last_check = 0.0
        self._pending: Progress | None = None
        self._last_write = 0.0

    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        for label, value in (("done", done), ("total", total)):
            if value is None and label == "total":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"progress {label} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"progress {label} must be a finite number >= 0, got {value!r}")
        if message is not None and not isinstance(message, str):
            raise TypeError(f"progress message must be a str, got {type(message).__name__}")
        self._pending = Progress(done, total, message[:_MAX_MESSAGE] if message else message)
        now = time.monotonic()
        if now - self._last_write >= PROGRESS_INTERVAL or (total is not None and done >= total):
            self.flush()

    @property
    def abort_requested(self) -> bool:
        """Has someone asked to stop this job (``POST /jobs/<id>/abort``)? Read from the
        store at most every ``ABORT_CHECK_INTERVAL`` seconds."""
        now = time.monotonic()
        if not self._aborted and now - self._last_check >= ABORT_CHECK_INTERVAL:
            self._last_check = now
            self._aborted = self._check_abort()
        return self._aborted

    def flush(self) -> None:
        """Write the last reported progress, if not written yet."""
        if self._pending is not None:
            self._report(self._pending)
            self._pending = None
            self._last_write = time.monotonic()


_current: ContextVar[JobContext | None] = ContextVar("spoolkit_current_job", default=None)


@contextmanager
def running(context: JobContext) -> Iterator[JobContext]:
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


class CurrentJob:
    """Proxy to the job this thread is running.

    ``current_job.id``, ``.attempt`` (1 for the first run), ``.max_attempts``,
    ``.task`` and ``.progress(done, total=None, message=None)``. Outside a
    running task every access raises ``RuntimeError``.
    """

    def _get(self) -> JobContext:
        context = _current.get()
        if context is None:
            raise RuntimeError(
                "current_job is only available while a job runs (inside a @spool task "
                "started by .delay() or .apply_async())"
            )
        return context

    @property
    def id(self) -> str:
        return self._get().id

    @property
    def task(self) -> str:
        return self._get().task

    @property
    def attempt(self) -> int:
        return self._get().attempt

    @property
    def max_attempts(self) -> int:
        return self._get().max_attempts

    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report how far the job is; shown under ``progress`` in ``GET /jobs/<id>``."""
        self._get().progress(done, total, message)

    @property
    def abort_requested(self) -> bool:
        """True once the job's abort was requested: stop cleanly and return (the job ends
        ``cancelled``); a task that goes on is killed after ``SPOOLKIT_ABORT_GRACE``."""
        return self._get().abort_requested

    def __bool__(self) -> bool:
        return _current.get() is not None


current_job = CurrentJob()
