"""A task: a function declared with ``@spool``, its name and its retry policy.

Calling the task runs it inline, as a plain function. ``.delay(...)`` and
``.apply_async(...)`` check the call against the function's signature (by
mypy through ``ParamSpec``, and at run time), encode the arguments as JSON,
and hand the resulting :class:`Call` to the app's job service, found
through Flask's ``current_app`` like any extension: a request, a job run by
a spooler and ``flask`` commands all have an app context.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast

from flask import current_app, has_app_context

from .encoding import encode_arguments
from .errors import ConfigurationError
from .job import Job
from .retry import RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")

#: Where ``SpoolKit.init_app`` keeps the app's job service (``app.extensions``).
EXTENSION_KEY = "spoolkit"


@dataclass(frozen=True)
class Call:
    """One call of a task, checked and encoded: what gets recorded and spooled."""

    task: str
    payload: str
    policy: RetryPolicy
    #: "spoolkit" for @spool tasks; the library's name for calls the kit took over.
    origin: str = "spoolkit"


class Enqueuer(Protocol):
    """What a task needs from the app's job service to queue a call."""

    def enqueue(
        self,
        call: Call,
        *,
        at: object = None,
        countdown: object = None,
        priority: object = None,
        max_attempts: object = None,
    ) -> Job: ...


def app_enqueuer() -> Enqueuer:
    """The job service of the current Flask app."""
    if not has_app_context():
        raise ConfigurationError(
            "jobs are queued inside a Flask app context: a request, a running job and "
            "'flask' commands have one; in a script use 'with app.app_context():'"
        )
    service = current_app.extensions.get(EXTENSION_KEY)
    if service is None:
        raise ConfigurationError(
            f"SpoolKit is not set up on the app {current_app.name!r}: create SpoolKit(app) "
            "(or call kit.init_app(app)) before queueing jobs"
        )
    return cast(Enqueuer, service)


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
        call = self.call(args, kwargs or {})
        return app_enqueuer().enqueue(
            call, at=at, countdown=countdown, priority=priority, max_attempts=max_attempts
        )

    def call(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Call:
        """Check ``args``/``kwargs`` against the signature and encode them.

        Raises ``TypeError`` if the call does not fit the signature and
        :class:`~spoolkit.EncodeError` (a ``TypeError``) naming the argument
        that is not JSON.
        """
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}(): {exc}") from None
        names = [
            parameter.name
            for parameter in self.signature.parameters.values()
            if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        ]
        return Call(self.name, encode_arguments(self.name, args, kwargs, names), self.policy)
