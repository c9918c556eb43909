"""A stand-in ``uwsgi`` module and small builders for component tests.

The component tests run the worker, the spooler runner, the dispatcher and
the housekeeper in this process, against a real SQLite store and a real
spool directory in ``tmp_path``, with :class:`StandinUwsgi` in place of the
``uwsgi`` module that only exists inside a uWSGI server. No uwsgi binary
is needed.

Install the stand-in with :func:`install` (``spoolkit.runtime.uwsgi``).
Whenever the stand-in's spooler pids include a live process, that process
gets ``SIGUSR1`` from :class:`spoolkit.runtime.SpoolerWaker` on each spool
write: :func:`catch_wakeups` keeps such a signal from killing the tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

import spoolkit.runtime
from spoolkit.config import load_config
from spoolkit.encoding import encode_arguments
from spoolkit.job import Job, new_job_id
from spoolkit.registry import TaskRegistry
from spoolkit.spooler import SpoolerRunner
from spoolkit.spoolfile import decode_file
from spoolkit.sqlite import SQLiteStore
from spoolkit.store import NewJob

OptionValue = bytes | str | list[bytes] | list[str]


class StandinUwsgi(types.ModuleType):
    """What the kit reads from the ``uwsgi`` module, with the values a test chooses.

    By default it is the master loading the app (``worker_id() == 0``,
    ``mule_id() == 0``, not a spooler); set ``spooler_process`` for a
    spooler, ``mule`` for a mule (where the housekeeper runs). ``spooler`` (the callable uWSGI hands files to) is set by
    ``spoolkit.dispatcher.install``.
    """

    spooler: Any

    def __init__(
        self,
        spool_dir: str | os.PathLike[str] | None = None,
        *,
        ordered: bool = False,
        harakiri: int | None = None,
        spooler_pids: Sequence[int] = (),
        master_pid: int = 4_000_001,
        started_on: int = 1_700_000_000,
        spooler_process: bool = False,
        mule: int = 0,
    ) -> None:
        super().__init__("uwsgi")
        self.opt: dict[str, OptionValue] = {}
        if spool_dir is not None:
            self.opt["spooler"] = os.fsencode(spool_dir)  # uWSGI gives bytes
        if ordered:
            self.opt["spooler-ordered"] = b"true"
        if harakiri is not None:
            self.opt["spooler-harakiri"] = str(harakiri).encode()
        self.pids = list(spooler_pids)
        self.master_pid = master_pid
        self.started_on = started_on
        self.spooler_process = spooler_process
        self.mule = mule

    def spooler_pids(self) -> list[int]:
        return list(self.pids)

    def masterpid(self) -> int:
        return self.master_pid

    def worker_id(self) -> int:
        return 0

    def mule_id(self) -> int:
        return self.mule

    def i_am_the_spooler(self) -> bool:
        return self.spooler_process

    def instance(self, reloads: int = 0) -> str:
        """The instance id ``spoolkit.runtime.instance_id`` gives under this stand-in."""
        return f"{socket.gethostname()}:{self.master_pid}:{self.started_on}:{reloads}"


def install(monkeypatch: pytest.MonkeyPatch, standin: StandinUwsgi) -> StandinUwsgi:
    """Make ``standin`` the ``uwsgi`` module the kit sees (undone after the test)."""
    monkeypatch.setattr(spoolkit.runtime, "uwsgi", standin)
    monkeypatch.delenv("UWSGI_RELOADS", raising=False)
    return standin


@dataclass
class Wakeups:
    """The SIGUSR1 signals this process received (a spooler's wake-up)."""

    count: int = 0


@contextmanager
def catch_wakeups() -> Iterator[Wakeups]:
    """Count SIGUSR1 instead of dying of it; the previous handler comes back after."""
    wakeups = Wakeups()

    def handler(signum: int, frame: types.FrameType | None) -> None:
        wakeups.count += 1

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        yield wakeups
    finally:
        signal.signal(signal.SIGUSR1, previous)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def make_store(directory: Path, name: str = "jobs.db") -> SQLiteStore:
    store = SQLiteStore(str(directory / name))
    store.setup()
    return store


def make_app(directory: Path, name: str = "standin", **config: Any) -> Flask:
    """A bare Flask app (no SpoolKit extension) whose config points at ``directory``."""
    app = Flask(name, root_path=str(directory))
    app.config.update(SPOOLKIT_DATABASE=str(directory / "jobs.db"), **config)
    return app


def insert_job(
    store: SQLiteStore,
    task: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    job_id: str | None = None,
    spool_file: str | None = "delivery-1",
    created_at: float,
    run_at: float | None = None,
    max_attempts: int = 3,
    backoff: float = 1.0,
    priority: int | None = None,
) -> Job:
    """Record a job the way the service does (row first; no spool file is written)."""
    return store.insert(
        NewJob(
            id=job_id or new_job_id(),
            task=task,
            payload=encode_arguments(task, args, kwargs or {}),
            max_attempts=max_attempts,
            backoff=backoff,
            priority=priority,
            created_at=created_at,
            run_at=run_at,
            spool_file=spool_file,
        )
    )


def make_runner(app: Flask, store: SQLiteStore, registry: TaskRegistry) -> SpoolerRunner:
    """The uWSGI spooler runner for ``app``, set up under the installed stand-in."""
    return SpoolerRunner(app, load_config(app), store, registry)


def submit_job(
    runner: SpoolerRunner,
    store: SQLiteStore,
    task: str,
    args: Sequence[Any] = (),
    *,
    now: float,
    run_at: float | None = None,
    priority: int | None = None,
    max_attempts: int = 3,
    backoff: float = 1.0,
) -> Job:
    """Queue a job the way the service does: the row (parked or with its delivery), then
    the runner writes the spool file."""
    job_id = new_job_id()
    parked = runner.parking.parks(run_at, now)
    job = insert_job(
        store, task, args, job_id=job_id, created_at=now, run_at=run_at, priority=priority,
        max_attempts=max_attempts, backoff=backoff,
        spool_file=None if parked else runner.delivery_for(job_id, priority, now),
    )  # fmt: skip
    runner.submit(job, store.payload(job_id))
    return job


def spool_dict(path: Path | str, *, name: bytes | None = None) -> dict[Any, Any]:
    """The dict uWSGI hands ``uwsgi.spooler`` for the spool file at ``path``.

    Packet entries as bytes keys and values, the file's path under
    ``"spooler_task_name"`` (bytes) and the body, when there is one, under ``"body"``.
    ``name`` replaces the path given (for names that are not UTF-8).
    """
    entries, body = decode_file(Path(path).read_bytes())
    spool: dict[Any, Any] = dict(entries)
    spool["spooler_task_name"] = name if name is not None else os.fsencode(path)
    if body:
        spool["body"] = body
    return spool


@dataclass
class Calls:
    """What test tasks saw when they ran, for assertions."""

    seen: list[dict[str, Any]] = field(default_factory=list)

    def add(self, **data: Any) -> None:
        self.seen.append(data)

    def clear(self) -> None:
        self.seen.clear()

    def __len__(self) -> int:
        return len(self.seen)
