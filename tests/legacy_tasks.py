"""Tasks written for uwsgidecorators and uwsgi-tasks, as users already have them.

Imported only under uWSGI (both libraries need the ``uwsgi`` module). Each run
writes a record line under ``$SPOOLKIT_TEST_DIR/<tag>.jsonl`` (tests.jobs.record).
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from typing import Any

import uwsgi
from uwsgi_tasks import RetryTaskException, TaskExecutor, task
from uwsgidecorators import spool, spoolforever, spoolraw

from tests.jobs import record


@spool
def spool_task(args: dict[str, Any]) -> int:
    """The blog seed's task (shared/seeds/003): a dict of str, return code ignored by
    @spool. Its bare ``except: return SPOOL_RETRY`` is kept as ``except Exception``."""
    try:
        record(args["tag"], keys=sorted(args), body=len(args.get("body", "")))
        return int(uwsgi.SPOOL_OK)
    except Exception:
        return int(uwsgi.SPOOL_RETRY)


@spool(pass_arguments=True)
def with_arguments(tag: str, value: int, big: str = "") -> None:
    record(tag, value=value, big=len(big))


@spoolraw
def raw_codes(args: dict[str, Any]) -> int:
    runs = record(args["tag"])
    if args.get("ignore"):
        return int(uwsgi.SPOOL_IGNORE)
    if runs <= int(args.get("retries", "0")):
        return int(uwsgi.SPOOL_RETRY)
    return int(uwsgi.SPOOL_OK)


@spoolforever
def forever(args: dict[str, Any]) -> None:
    record(args["tag"])


@spool
def kills_its_spooler(args: dict[str, Any]) -> None:
    record(args["tag"])
    os.kill(os.getpid(), signal.SIGKILL)


@spool
def raises(args: dict[str, Any]) -> None:
    record(args["tag"])
    raise ValueError("boom")


@task(executor=TaskExecutor.SPOOLER)
def tasks_spooler(tag: str, value: int) -> None:
    record(tag, value=value)


@task
def tasks_auto(tag: str) -> None:
    record(tag)


@task(executor=TaskExecutor.MULE)
def tasks_mule(tag: str) -> None:
    record(tag)


@task(executor=TaskExecutor.SPOOLER, retry_count=3, retry_timeout=1)
def tasks_retry(tag: str) -> None:
    if record(tag) < 3:
        raise RetryTaskException()


@task(executor=TaskExecutor.SPOOLER, at=timedelta(seconds=3))
def tasks_later(tag: str) -> None:
    record(tag)


@task(executor=TaskExecutor.SPOOLER, priority="3")
def tasks_priority(tag: str) -> None:
    record(tag)


@task(executor=TaskExecutor.SPOOLER)
def tasks_big(tag: str, blob: str) -> None:
    record(tag, size=len(blob))


@task(executor=TaskExecutor.SPOOLER)
def tasks_raises(tag: str) -> None:
    record(tag)
    raise ValueError("boom")
