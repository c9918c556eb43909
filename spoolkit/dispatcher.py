"""The callable uWSGI gives every spool file to (``uwsgi.spooler``).

How the spooler's return codes map onto jobs:

* ``SPOOL_OK``: the job is finished (succeeded, failed for good), or the
  file is stale (cancelled job, re-spooled elsewhere), or it was copied to
  the quarantine. uWSGI unlinks the file.
* ``SPOOL_RETRY``: the job must run again later. The kit has already moved
  the file's mtime (uWSGI's ``at``) to the retry time, so uWSGI skips it
  until then instead of re-running it on every scan.

This function never raises: an exception here would make uWSGI retry the
file on every scan with no record of why.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from .backends import SpoolerBackend
from .encoding import from_spool_dict
from .errors import DecodeError, StoreUnavailable
from .runtime import renice_spooler
from .schedule import spool_mtime
from .service import JobService, current_service
from .worker import Verdict

log = logging.getLogger("spoolkit.dispatcher")

SPOOL_OK = -2
SPOOL_RETRY = -1
#: After an unexpected error, leave the file alone this long (no retry storm).
ERROR_PAUSE = 5.0
#: The spooler process that has applied SPOOLKIT_SPOOLER_NICE (set after each fork).
_reniced_pid: int | None = None


def spooler(spool: Mapping[Any, Any]) -> int:
    raw_name = spool.get("spooler_task_name", b"")
    name = os.path.basename(raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name))
    directory = os.getcwd()  # uWSGI chdir()s into the spool (or priority) directory
    try:
        service = current_service()
    except Exception:
        log.exception("spool file %s: spoolkit is not set up in this spooler; retrying later", name)
        return SPOOL_RETRY
    global _reniced_pid
    if _reniced_pid != os.getpid():
        _reniced_pid = os.getpid()
        renice_spooler(service.config.spooler_nice)
    try:
        return _dispatch(service, spool, name, directory)
    except StoreUnavailable as exc:
        log.warning("spool file %s: %s; retrying in %.0fs", name, exc, ERROR_PAUSE)
        _postpone(service, directory, name, time.time() + ERROR_PAUSE)
        return SPOOL_RETRY
    except Exception:
        log.exception("spool file %s: unexpected error; retrying in %.0fs", name, ERROR_PAUSE)
        _postpone(service, directory, name, time.time() + ERROR_PAUSE)
        return SPOOL_RETRY


def _dispatch(service: JobService, spool: Mapping[Any, Any], name: str, directory: str) -> int:
    try:
        envelope = from_spool_dict(spool)
    except DecodeError as exc:
        return _quarantine(service, directory, name, str(exc))
    backend = service.backend
    # The row names the file by its path under the spool directory ("07/..." for priority 7).
    token = (
        backend.directory.relative_of(directory, name)
        if isinstance(backend, SpoolerBackend)
        else name
    )
    step = service.worker.process(
        envelope.job_id, token, envelope.task, envelope.args, envelope.kwargs
    )
    if step.verdict is Verdict.QUARANTINE:
        return _quarantine(service, directory, name, step.reason)
    if step.verdict is Verdict.AGAIN:
        if step.at is not None:
            _postpone(service, directory, name, step.at)
        return SPOOL_RETRY
    return SPOOL_OK


def _postpone(service: JobService, directory: str, name: str, at: float) -> None:
    """Set the file's mtime (its ``at``) by path; never open the file we hold locked."""
    try:
        os.utime(os.path.join(directory, name), (spool_mtime(at, 0), spool_mtime(at, 0)))
    except FileNotFoundError:
        log.warning("spool file %s vanished while its job ran", name)
    except OSError as exc:
        log.error("spool file %s: cannot set its retry time: %s", name, exc)


def _quarantine(service: JobService, directory: str, name: str, reason: str) -> int:
    backend = service.backend
    kept = (
        backend.directory.quarantine(directory, name)
        if isinstance(backend, SpoolerBackend)
        else None
    )
    if kept is None:
        # Could not keep a copy: do not destroy the only one. Park it for a day.
        log.error(
            "spool file %s rejected (%s) but could not be quarantined; parked for 24h", name, reason
        )
        _postpone(service, directory, name, time.time() + 86400)
        return SPOOL_RETRY
    log.error("spool file %s rejected: %s; moved to %s", name, reason, kept)
    return SPOOL_OK
