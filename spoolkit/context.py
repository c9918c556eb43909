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
    ) -> None:
        self.id = job_id
        self.task = task
        self.attempt = attempt
        self.max_attempts = max_attempts
        self._report = report
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

    def __bool__(self) -> bool:
        return _current.get() is not None


current_job = CurrentJob()
