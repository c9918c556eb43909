"""Where this process runs: inside uWSGI (which process?) or outside it.

Everything that touches the ``uwsgi`` module is here, so the rest of the
kit imports and tests without uWSGI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from types import ModuleType

from .errors import ConfigurationError


def uwsgi_module() -> ModuleType | None:
    """The ``uwsgi`` module when running inside uWSGI, else ``None``."""
    try:
        import uwsgi
    except ImportError:
        return None
    return uwsgi if hasattr(uwsgi, "opt") else None


def instance_id() -> str:
    """Identifies this run of the server: a restart or reload gives a new one.

    Under uWSGI: host, master pid, the master's start second and the reload
    count (``UWSGI_RELOADS``; a reload re-executes the master). A spooler
    respawned after a crash keeps its instance's id; that is how a crash is
    told apart from a restart. Outside uWSGI: host and this process's pid.
    """
    uwsgi = uwsgi_module()
    host = socket.gethostname()
    if uwsgi is None:
        return f"{host}:local:{os.getpid()}"
    reloads = os.environ.get("UWSGI_RELOADS", "0")
    return f"{host}:{uwsgi.masterpid()}:{uwsgi.started_on}:{reloads}"


def spooler_pids() -> list[int]:
    uwsgi = uwsgi_module()
    if uwsgi is None:
        return []
    return [pid for pid in uwsgi.spooler_pids() if pid > 0]


def spooler_alive(pid: int) -> bool:
    """Is ``pid`` a live spooler of this instance? (A respawned spooler has a new pid.)"""
    return pid in spooler_pids() and process_exists(pid)


def wake_spoolers() -> None:
    """SIGUSR1 every spooler, busy ones included.

    ``uwsgi.spool()`` only signals idle spoolers, so a job written while all
    are busy waits for the next ``spooler-frequency`` tick. A busy spooler
    that gets the signal scans again as soon as its current job ends.
    """
    for pid in spooler_pids():
        # A pid that is gone is being respawned: the new spooler scans at start.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGUSR1)


def spooler_directory() -> str:
    """The first ``spooler`` directory configured in uwsgi.ini, absolute."""
    uwsgi = uwsgi_module()
    if uwsgi is None:
        raise ConfigurationError("not running under uWSGI")
    value = uwsgi.opt.get("spooler")
    if isinstance(value, list):
        value = value[0] if value else None
    if not value:
        raise ConfigurationError(
            "uWSGI runs without a spooler: add 'spooler = <directory>' and "
            "'spooler-processes = N' to uwsgi.ini (or set SPOOLKIT_EAGER=1)"
        )
    path = value.decode() if isinstance(value, bytes) else str(value)
    return os.path.abspath(path)


def uwsgi_option(name: str) -> str | None:
    uwsgi = uwsgi_module()
    if uwsgi is None:
        return None
    value = uwsgi.opt.get(name)
    if isinstance(value, list):
        value = value[-1] if value else None
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def in_master_before_fork() -> bool:
    """Loading the app in the uWSGI master, before workers and spoolers exist."""
    uwsgi = uwsgi_module()
    return bool(
        uwsgi is not None
        and uwsgi.worker_id() == 0
        and uwsgi.mule_id() == 0
        and not uwsgi.i_am_the_spooler()
    )


def is_spooler() -> bool:
    uwsgi = uwsgi_module()
    return bool(uwsgi is not None and uwsgi.i_am_the_spooler())


def install_dispatcher() -> None:
    """Make the kit's dispatcher the callable uWSGI gives spool files to."""
    uwsgi = uwsgi_module()
    if uwsgi is not None:
        from .dispatcher import spooler

        setattr(uwsgi, "spooler", spooler)  # noqa: B010 - a C module attribute uWSGI reads


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def runner_alive(runner: str | None, pid: int | None) -> bool:
    """Could the process recorded as running a job still be running it?

    Judged only for runners on this host; another host's runners count as
    alive (their own housekeeper judges them). A runner of an earlier run of
    this very uWSGI master (before a reload) is dead.
    """
    if not runner:
        return False
    host, _, rest = runner.partition(":")
    if host != socket.gethostname():
        return True
    if runner == instance_id():
        if uwsgi_module() is None:
            return True  # this process, local mode: its own threads run the job
        return pid is not None and spooler_alive(pid)
    kind, _, tail = rest.partition(":")
    try:
        owner = int(tail.split(":")[0]) if kind == "local" else int(kind)
    except ValueError:
        return True  # a format we do not know: leave it alone
    uwsgi = uwsgi_module()
    if kind != "local" and uwsgi is not None and owner == uwsgi.masterpid():
        return False
    return process_exists(owner)
