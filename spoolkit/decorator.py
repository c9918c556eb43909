"""``@spool``: declare a function as a task and register it under its name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

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
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Declare a task. Bare ``@spool`` means ``max_attempts=3, backoff=1.0``.

    ``backoff`` is the base delay in seconds: retry ``n`` waits about
    ``backoff * 2 ** (n - 1)`` (+/- 20 % jitter, capped by
    ``SPOOLKIT_MAX_BACKOFF``). The name defaults to ``module.function``.
    ``on_success``/``on_failure`` (a task or a name) are queued with the
    finished job's JSON when it succeeds or fails for good; ``timeout``
    (seconds) stops an attempt that runs longer (``JobTimeout``).
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
                    on_failure=on_failure, timeout=timeout)  # fmt: skip
        target.register(task)
        return task

    if fn is not None:
        return decorate(fn)
    return decorate
