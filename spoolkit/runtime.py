"""Where this process runs: inside uWSGI (which process?) or outside it.

Everything that touches the ``uwsgi`` module is here, so the rest of the
kit imports and tests without uWSGI.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
from pathlib import Path
from types import ModuleType

from .errors import ConfigurationError

log = logging.getLogger("spoolkit.runtime")


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


#: In the spool directory: the spoolers serving it, for producers in other
#: uWSGI instances (``spooler-external``), which uWSGI never wakes.
SPOOLERS_FILE = ".spoolkit-spoolers.json"


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def publish_spoolers(directory: str) -> None:
    """Write this instance's spooler pids into the spool directory (if they changed)."""
    spoolers = sorted((pid, process_start(pid)) for pid in spooler_pids())
    path = os.path.join(directory, SPOOLERS_FILE)
    content = json.dumps({"spoolers": spoolers})
    with contextlib.suppress(FileNotFoundError):
        if Path(path).read_text() == content:
            return
    tmp = f"{path}.{os.getpid()}"
    Path(tmp).write_text(content)
    os.replace(tmp, path)


def _same_executable(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/exe") == os.readlink("/proc/self/exe")
    except OSError:
        return False


class SpoolerWaker:
    """Wakes every spooler serving a spool directory with SIGUSR1, busy ones included.

    ``uwsgi.spool()`` only signals *idle* spoolers of *its own* instance, so a
    job written while all are busy, or by another instance, waits for the
    next ``spooler-frequency`` tick. A busy spooler that gets the signal scans
    again as soon as its current job ends. Besides this instance's spoolers,
    it signals those the serving instance published (``publish_spoolers``),
    each checked against its start time (a reused pid is never signalled) and
    its executable: only processes running the same uWSGI binary as this one,
    all of which handle or ignore SIGUSR1, so a forged list (by whoever can
    write the spool directory) can at worst make a uWSGI process log stats.
    """

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, SPOOLERS_FILE)
        self._published: tuple[int, list[int]] = (-1, [])

    def published(self) -> list[int]:
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return []
        if stamp != self._published[0]:
            try:
                listed = json.loads(Path(self.path).read_text())["spoolers"]
                pids = [
                    int(pid)
                    for pid, start in listed
                    if process_start(int(pid)) == start and _same_executable(int(pid))
                ]
            except (OSError, ValueError, KeyError, TypeError):
                pids = []
            self._published = (stamp, pids)
        return self._published[1]

    def __call__(self) -> None:
        for pid in {*spooler_pids(), *self.published()}:
            # A pid that is gone is being respawned: the new spooler scans at start.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGUSR1)


def spooler_directory() -> str:
    """The first ``spooler`` directory configured in uwsgi.ini (or, in an instance
    that only produces jobs for another one, its ``spooler-external``), absolute."""
    uwsgi = uwsgi_module()
    if uwsgi is None:
        raise ConfigurationError("not running under uWSGI")
    value = uwsgi.opt.get("spooler") or uwsgi.opt.get("spooler-external")
    if isinstance(value, list):
        value = value[0] if value else None
    if not value:
        raise ConfigurationError(
            "uWSGI runs without a spooler: add 'spooler = <directory>' and "
            "'spooler-processes = N' to uwsgi.ini, or 'spooler-external = <directory>' "
            "to queue jobs for another instance's spoolers (or set SPOOLKIT_EAGER=1)"
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


def renice_spooler(nice: int | None) -> None:
    """Move this spooler from the nice 19 uWSGI gives it to ``SPOOLKIT_SPOOLER_NICE``.

    uWSGI has no hook after a spooler's fork, so the dispatcher calls this
    before the first job of each spooler process. A process may raise its
    niceness freely but lowering it needs CAP_SYS_NICE or RLIMIT_NICE; without
    them the spooler keeps nice 19 and says how to allow it, once.
    """
    if nice is None:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        log.warning(
            "spooler %d cannot set SPOOLKIT_SPOOLER_NICE=%d (%s) and stays at nice %d; "
            "allow it with LimitNICE=%+d in the systemd unit (or CAP_SYS_NICE)",
            os.getpid(), nice, exc.strerror, os.getpriority(os.PRIO_PROCESS, 0), nice,
        )  # fmt: skip
    else:
        log.info("spooler %d runs at nice %d (SPOOLKIT_SPOOLER_NICE)", os.getpid(), nice)


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
