"""``@spool``: declare a function as a task and register it under its name;
``periodic()``: declare a schedule that runs a task on its own."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, overload

from .errors import ConfigurationError
from .recurrence import DEFAULT_MISFIRE_GRACE, PeriodicSchedule
from .registry import TaskRegistry, default_registry
from .retry import DEFAULT_BACKOFF, DEFAULT_MAX_ATTEMPTS, RetryPolicy
from .task import P, R, Task


@overload
def spool(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def spool(
    *,
    name: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    registry: TaskRegistry | None = None,
    on_success: str | Task[Any, Any] | None = None,
    on_failure: str | Task[Any, Any] | None = None,
    timeout: float | None = None,
    queue: str | None = None,
    cron: str | None = None,
    every: int | None = None,
    tz: str | None = None,
    misfire_grace: float | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def spool(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    registry: TaskRegistry | None = None,
    on_success: str | Task[Any, Any] | None = None,
    on_failure: str | Task[Any, Any] | None = None,
    timeout: float | None = None,
    queue: str | None = None,
    cron: str | None = None,
    every: int | None = None,
    tz: str | None = None,
    misfire_grace: float | None = None,
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Declare a task. Bare ``@spool`` means ``max_attempts=3, backoff=1.0``.

    ``backoff`` is the base delay in seconds: retry ``n`` waits about
    ``backoff * 2 ** (n - 1)`` (+/- 20 % jitter, capped by
    ``SPOOLKIT_MAX_BACKOFF``). The name defaults to ``module.function``.
    ``on_success``/``on_failure`` (a task or a name) are queued with the
    finished job's JSON when it succeeds or fails for good; ``timeout``
    (seconds) stops an attempt that runs longer (``JobTimeout``); ``queue`` names
    the queue its jobs run in (``default`` unless given; README, "Named queues").

    ``cron="*/5 * * * *"`` (read in ``tz``, an IANA name, UTC by default) or
    ``every=30`` (seconds) also runs the task, which must take no required
    argument, once per slot (README, "Periodic jobs"); a slot missed by more
    than ``misfire_grace`` seconds (60) is skipped. A bad expression raises
    ``ConfigurationError`` here.
    """
    policy = RetryPolicy(max_attempts=max_attempts, backoff=backoff)
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    target = default_registry if registry is None else registry

    def decorate(function: Callable[P, R]) -> Task[P, R]:
        task_name = name or f"{function.__module__}.{function.__qualname__}"
        if name is None and "<locals>" in task_name:
            raise ValueError(
                f"{function.__qualname__} is defined inside a function; define tasks at module "
                "level (the spoolers must find them by importing the module) or pass name='...'"
            )
        task = Task(function, name=task_name, policy=policy, on_success=on_success,
                    on_failure=on_failure, timeout=timeout, queue=queue)  # fmt: skip
        schedule = _own_schedule(task, cron=cron, every=every, tz=tz, grace=misfire_grace)
        target.register(task)
        if schedule is not None:
            target.schedules.add(schedule)
        return task

    if fn is not None:
        return decorate(fn)
    return decorate


def _own_schedule(
    task: Task[Any, Any], *, cron: str | None, every: int | None, tz: str | None,
    grace: float | None,
) -> PeriodicSchedule | None:
    """The schedule ``@spool(cron=/every=)`` declares for ``task``, under the task's name."""
    if cron is None and every is None:
        if tz is not None or grace is not None:
            raise ConfigurationError(f"{task.name}: tz= and misfire_grace= go with cron= or every=")
        return None
    code = getattr(task.fn, "__code__", None)
    where = f"{getattr(code, 'co_filename', '?')}:{getattr(code, 'co_firstlineno', 0)}"
    schedule = _schedule(task.name, task.name, cron, every, tz, grace, (), None, where)
    try:
        task.signature.bind()
    except TypeError as exc:
        raise ConfigurationError(
            f"periodic schedule {task.name!r}: the task has required arguments ({exc}); "
            f"declare it with spoolkit.periodic({task.name!r}, ..., args=[...])"
        ) from None
    return schedule


def _schedule(
    name: str, task: str, cron: str | None, every: int | None, tz: str | None,
    grace: float | None, args: Sequence[Any], kwargs: Mapping[str, Any] | None, where: str,
) -> PeriodicSchedule:
    if isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise ConfigurationError(f"periodic schedule {name!r}: args must be a list")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ConfigurationError(f"periodic schedule {name!r}: kwargs must be a dict")
    return PeriodicSchedule(
        name=name, task=task, cron=cron, every=every, tz="UTC" if tz is None else tz,
        misfire_grace=DEFAULT_MISFIRE_GRACE if grace is None else grace, args=tuple(args),
        kwargs=dict(kwargs or {}), where=where,
    )  # fmt: skip


def periodic(
    task: str | Task[Any, Any],
    *,
    cron: str | None = None,
    every: int | None = None,
    tz: str | None = None,
    misfire_grace: float | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    name: str | None = None,
    registry: TaskRegistry | None = None,
) -> PeriodicSchedule:
    """Run ``task`` (a task, or a registered task's name) with ``args``/``kwargs`` once
    per slot of ``cron`` (in ``tz``, UTC by default) or ``every`` seconds.

    Call it at module level, like ``@spool``. The schedule is named after the task
    unless ``name`` is given (two schedules of one task need names). A bad
    expression raises ``ConfigurationError`` here; an unknown task, or arguments
    that do not fit it, make ``SpoolKit.init_app`` raise it.
    """
    task_name = getattr(task, "name", task)
    if not isinstance(task_name, str) or not task_name:
        raise TypeError(f"periodic() takes a task or a task name, got {task!r}")
    caller = sys._getframe(1)
    where = f"{caller.f_code.co_filename}:{caller.f_lineno}"
    schedule = _schedule(name or task_name, task_name, cron, every, tz, misfire_grace, args,
                         kwargs, where)  # fmt: skip
    (default_registry if registry is None else registry).schedules.add(schedule)
    return schedule
