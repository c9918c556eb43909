"""``@spool``: declare a function as a task that can run in a uWSGI spooler.

Calling the task runs it inline, as a plain function. ``.delay(...)`` and
``.apply_async(...)`` queue it and return the :class:`~spoolkit.Job` at
once; their arguments are checked against the function's signature (by
mypy through ``ParamSpec``, and at run time) and must be JSON.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from .registry import TaskRegistry, default_registry
from .retry import DEFAULT_BACKOFF, DEFAULT_MAX_ATTEMPTS, RetryPolicy

if TYPE_CHECKING:
    from .job import Job

P = ParamSpec("P")
R = TypeVar("R")


class Task(Generic[P, R]):
    """A registered task: the function, its name and its retry policy."""

    def __init__(self, fn: Callable[P, R], *, name: str, policy: RetryPolicy) -> None:
        if not callable(fn):
            raise TypeError(f"@spool decorates a function, got {fn!r}")
        if inspect.iscoroutinefunction(fn):
            raise TypeError(f"@spool cannot run async functions ({fn.__qualname__}); use a def")
        self.fn = fn
        self.name = name
        self.policy = policy
        self.signature = inspect.signature(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task here and now, like the plain function."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name} max_attempts={self.policy.max_attempts}>"

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Queue ``task(*args, **kwargs)`` to run as soon as a spooler is free."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        at: datetime | float | str | None = None,
        countdown: float | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
    ) -> Job:
        """Queue the task with options.

        ``at`` (a datetime, unix seconds or ISO 8601; no zone means UTC) or
        ``countdown`` (seconds) delays the first run; ``priority`` (0-99,
        lower first) needs ``spooler-ordered``; ``max_attempts`` overrides
        the task's.
        """
        from .service import current_service

        return current_service().enqueue(
            self,
            args,
            kwargs or {},
            at=at,
            countdown=countdown,
            priority=priority,
            max_attempts=max_attempts,
        )

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[str]:
        """Raise ``TypeError`` if the call does not fit the signature; return positional names."""
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}(): {exc}") from None
        return [
            parameter.name
            for parameter in self.signature.parameters.values()
            if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        ]


@overload
def spool(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def spool(
    *,
    name: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    registry: TaskRegistry | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def spool(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    registry: TaskRegistry | None = None,
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Declare a task. Bare ``@spool`` means ``max_attempts=3, backoff=1.0``.

    ``backoff`` is the base delay in seconds: retry ``n`` waits about
    ``backoff * 2 ** (n - 1)`` (+/- 20 % jitter, capped by
    ``SPOOLKIT_MAX_BACKOFF``). The name defaults to ``module.function``.
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
        task = Task(function, name=task_name, policy=policy)
        target.register(task)
        return task

    if fn is not None:
        return decorate(fn)
    return decorate
