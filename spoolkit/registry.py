"""Task names to functions. Only registered names ever run.

A spool file or an HTTP request names a task; the name is looked up here
and nowhere else (nothing is imported because a file says so). Names are
``module.function`` unless given, so two ``send`` functions in different
modules do not overwrite each other as they do in ``uwsgidecorators``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .encoding import TASK_NAME_PATTERN
from .errors import DuplicateTaskError, TaskNotFound
from .recurrence import Schedules
from .task import Task

log = logging.getLogger("spoolkit.registry")


def _origin(task: Task[Any, Any]) -> tuple[str, str, int]:
    code = getattr(task.fn, "__code__", None)
    return (
        f"{task.fn.__module__}.{task.fn.__qualname__}",
        getattr(code, "co_filename", ""),
        getattr(code, "co_firstlineno", 0),
    )


class TaskRegistry:
    """The tasks this process knows, by name."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._providers: list[Callable[[str], Task[Any, Any] | None]] = []
        #: Periodic schedules declared with ``@spool(cron=/every=)`` or ``periodic()``.
        self.schedules = Schedules()

    def add_provider(self, provide: Callable[[str], Task[Any, Any] | None]) -> None:
        """Ask ``provide(name)`` for names not registered here: how tasks declared with
        another library (uwsgidecorators, uwsgi-tasks) are found when their jobs run.
        A provider answers only for functions that library registered, never imports."""
        self._providers.append(provide)

    def register(self, task: Task[Any, Any]) -> None:
        """Add ``task``; a different function under a taken name is refused.

        The same function defined again (a module re-imported or reloaded)
        replaces the old entry.
        """
        if not TASK_NAME_PATTERN.fullmatch(task.name):
            raise ValueError(
                f"task name {task.name!r} is not allowed: use letters, digits, '_', '.', ':' "
                "or '-',"
                " starting with a letter or '_'"
            )
        existing = self._tasks.get(task.name)
        if existing is not None and _origin(existing) != _origin(task):
            where, file, line = _origin(existing)
            raise DuplicateTaskError(
                f"task name {task.name!r} is already taken by {where} ({file}:{line}); "
                "pass name='...' to @spool to tell them apart"
            )
        self._tasks[task.name] = task

    def get(self, name: str, *, origin: str = "spoolkit") -> Task[Any, Any]:
        """The task registered as ``name``; for a job another library queued
        (``origin``), the providers' adapter instead, so a function moved to
        ``@spoolkit.spool`` under the same name never gets that library's message."""
        found = self._tasks.get(name) if origin == "spoolkit" else None
        for provide in self._providers if origin != "spoolkit" else ():
            if found is not None:
                break
            found = provide(name)
        if found is None:
            raise TaskNotFound(
                f"no task named {name!r} is registered in this process; import its module "
                "(list it in SPOOLKIT_IMPORTS, or spooler-import in uwsgi.ini)"
            )
        return found

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks


#: The registry ``@spool`` uses unless told otherwise.
default_registry = TaskRegistry()
