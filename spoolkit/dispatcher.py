"""The callable uWSGI gives every spool file to (``uwsgi.spooler``).

uWSGI has one such callable per process; each spooler runner set up in the
process registers here for its spool directory, and the :class:`Dispatcher` hands
a file to the runner of the directory it was found in (uWSGI ``chdir()``\\ s
into the spool directory, or a priority subdirectory of it, before the
call). How the spooler's return codes map onto jobs:

* ``SPOOL_OK``: the job is finished (succeeded, failed for good), or the
  file is stale (cancelled job, re-spooled elsewhere), or it was copied to
  the quarantine. uWSGI unlinks the file.
* ``SPOOL_RETRY``: the job must run again later. The kit has already moved
  the file's mtime (uWSGI's ``at``) to the retry time, so uWSGI skips it
  until then instead of re-running it on every scan.

The dispatcher never raises: an exception here would make uWSGI retry the
file on every scan with no record of why.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any, Protocol

from .errors import StoreUnavailable
from .runtime import uwsgi_module
from .schedule import spool_mtime

log = logging.getLogger("spoolkit.dispatcher")

SPOOL_OK = -2
SPOOL_RETRY = -1
#: After an unexpected error, leave the file alone this long (no retry storm).
ERROR_PAUSE = 5.0


class SpoolHandler(Protocol):
    """A spooler runner, as the dispatcher sees it."""

    @property
    def spool_path(self) -> str: ...

    def handle(self, spool: Mapping[Any, Any], name: str, directory: str) -> int:
        """Run the job of spool file ``name`` in ``directory``; a uWSGI return code."""
        ...


class Dispatcher:
    """uWSGI's ``spooler`` callable: hands each file to the runner of its directory.

    Kept on the ``uwsgi`` module itself (the one place uWSGI looks), so every
    runner set up in the process adds its directory to the same dispatcher.
    """

    def __init__(self) -> None:
        self.handlers: dict[str, SpoolHandler] = {}

    def handler_for(self, directory: str) -> SpoolHandler | None:
        """The runner of ``directory``, or of its parent for a priority subdirectory."""
        found = self.handlers.get(directory)
        if found is None and os.path.basename(directory).isdigit():
            found = self.handlers.get(os.path.dirname(directory))
        return found

    def __call__(self, spool: Mapping[Any, Any]) -> int:
        name = "(unnamed)"
        directory = "."
        try:
            directory = os.getcwd()
            raw = spool.get("spooler_task_name", b"")
            # fsdecode keeps a non-UTF-8 name usable for the file operations below.
            text = os.fsdecode(raw) if isinstance(raw, bytes) else str(raw)
            name = os.path.basename(text)
            handler = self.handler_for(directory)
            if handler is None:
                log.error("spool file %s in %s: no spoolkit app serves this directory; "
                          "retrying in %.0fs", name, directory, ERROR_PAUSE)  # fmt: skip
                postpone(directory, name, time.time() + ERROR_PAUSE)
                return SPOOL_RETRY
            return handler.handle(spool, name, directory)
        except StoreUnavailable as exc:
            log.warning("spool file %s: %s; retrying in %.0fs", name, exc, ERROR_PAUSE)
        except Exception:
            log.exception("spool file %s: unexpected error; retrying in %.0fs", name, ERROR_PAUSE)
        postpone(directory, name, time.time() + ERROR_PAUSE)
        return SPOOL_RETRY


class _KeepsDispatcher(ModuleType):
    """The ``uwsgi`` module's class once the kit runs: ``uwsgi.spooler`` stays the kit's
    dispatcher when uwsgidecorators or uwsgi-tasks assign their own, whenever they are
    imported (before the kit, after it, in a spooler through ``spooler-import``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "spooler" and not isinstance(value, Dispatcher):
            log.debug("kept the kit's spooler callable (%r wanted to replace it)", value)
            return
        super().__setattr__(name, value)


def install(handler: SpoolHandler, paths: Iterable[str] = ()) -> None:
    """Make the kit's dispatcher ``uwsgi.spooler`` and route ``handler``'s directory to it,
    or each of ``paths`` (a runner serving several queues, one directory each)."""
    uwsgi = uwsgi_module()
    if uwsgi is None:
        return
    current = getattr(uwsgi, "spooler", None)
    dispatcher = current if isinstance(current, Dispatcher) else Dispatcher()
    for path in paths or [handler.spool_path]:
        dispatcher.handlers[path] = handler
    setattr(uwsgi, "spooler", dispatcher)  # noqa: B010 - a C module attribute uWSGI reads
    if type(uwsgi) is ModuleType:
        uwsgi.__class__ = _KeepsDispatcher


def postpone(directory: str, name: str, at: float) -> None:
    """Set the file's mtime (its ``at``) by path; never open the file a spooler holds locked."""
    try:
        os.utime(os.path.join(directory, name), (spool_mtime(at, 0), spool_mtime(at, 0)))
    except FileNotFoundError:
        log.warning("spool file %s vanished while its job ran", name)
    except OSError as exc:
        log.error("spool file %s: cannot set its retry time: %s", name, exc)
