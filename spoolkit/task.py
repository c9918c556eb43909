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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast

from flask import current_app, has_app_context

from .encoding import encode_arguments
from .errors import BatchItemError, ConfigurationError
from .job import Job
from .queues import validate_queue
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
    #: The task's own defaults (``@spool(on_success=..., timeout=...)``).
    on_success: str | None = None
    on_failure: str | None = None
    timeout: float | None = None
    #: The task's queue (``@spool(queue=...)``); ``None``: the default queue.
    queue: str | None = None


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
        on_success: object = None,
        on_failure: object = None,
        callback_url: object = None,
        key: object = None,
        timeout: object = None,
        queue: object = None,
    ) -> Job: ...

    def enqueue_many(self, requests: Sequence[tuple[Call, Mapping[str, Any]]]) -> list[Job]: ...


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


def _task_name(task: object, option: str) -> str | None:
    """The name of a callback task given as a task or a name (checked at enqueue)."""
    if task is None:
        return None
    name = getattr(task, "name", task)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{option} must be a task or a task name, got {task!r}")
    return name


class Task(Generic[P, R]):
    """A registered task: the function, its name and its retry policy."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str,
        policy: RetryPolicy,
        on_success: str | Task[Any, Any] | None = None,
        on_failure: str | Task[Any, Any] | None = None,
        timeout: float | None = None,
        queue: str | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@spool decorates a function, got {fn!r}")
        if inspect.iscoroutinefunction(fn):
            raise TypeError(f"@spool cannot run async functions ({fn.__qualname__}); use a def")
        self.fn = fn
        self.name = name
        self.policy = policy
        self.on_success = _task_name(on_success, "on_success")
        self.on_failure = _task_name(on_failure, "on_failure")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.timeout = None if timeout is None else float(timeout)
        self.queue = None if queue is None else validate_queue(queue)
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
        on_success: str | Task[Any, Any] | None = None,
        on_failure: str | Task[Any, Any] | None = None,
        callback_url: str | None = None,
        key: str | None = None,
        timeout: float | None = None,
        queue: str | None = None,
    ) -> Job:
        """Queue the task with options.

        ``at`` (a datetime, unix seconds or ISO 8601; no zone means UTC) or
        ``countdown`` (seconds) delays the first run; ``priority`` (0-99,
        lower first) needs ``spooler-ordered``; ``max_attempts`` overrides
        the task's. ``on_success``/``on_failure`` (a task or its name) run with
        the finished job's JSON; ``callback_url`` gets it POSTed, signed;
        ``key`` (an idempotency key) returns the job recorded under it before;
        ``timeout`` (seconds) stops an attempt that runs longer; ``queue`` runs it
        in that queue instead of the task's own (``ConfigurationError`` if uwsgi.ini
        does not declare it).
        """
        call = self.call(args, kwargs or {})
        return app_enqueuer().enqueue(
            call, at=at, countdown=countdown, priority=priority, max_attempts=max_attempts,
            on_success=on_success, on_failure=on_failure, callback_url=callback_url, key=key,
            timeout=timeout, queue=queue,
        )  # fmt: skip

    def map(self, calls: Iterable[Sequence[Any] | Mapping[str, Any]]) -> list[Job]:
        """Queue one job per item, all in one transaction (one fsync), all or nothing:
        an item is the positional arguments (a tuple or list) or the keyword arguments
        (a mapping) of one call. ``resize.map([("a.png", 64), ("b.png", 64)])``. A
        call that does not fit raises :class:`~spoolkit.BatchItemError` naming its
        index, and no job is recorded. At most ``SPOOLKIT_MAX_BATCH`` items."""
        requests: list[tuple[Call, Mapping[str, Any]]] = []
        for index, item in enumerate(calls):
            try:
                if isinstance(item, Mapping):
                    requests.append((self.call((), item), {}))
                elif isinstance(item, tuple | list):
                    requests.append((self.call(item, {}), {}))
                else:
                    raise TypeError(
                        f"{self.name}.map(): each item is a tuple or list of arguments, or a "
                        f"mapping of keyword arguments, not {type(item).__name__}"
                    )
            except TypeError as exc:
                raise BatchItemError(index, exc) from exc
        return app_enqueuer().enqueue_many(requests)

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
        return Call(self.name, encode_arguments(self.name, args, kwargs, names), self.policy,
                    on_success=self.on_success, on_failure=self.on_failure,
                    timeout=self.timeout, queue=self.queue)  # fmt: skip
