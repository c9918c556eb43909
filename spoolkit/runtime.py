"""Where this process runs: inside uWSGI (which process?) or outside it.

Everything that touches the ``uwsgi`` module is here or in the spooler
runner (``spooler.py``, ``dispatcher.py``), so the rest of the kit imports
and tests without uWSGI. The two hosts tell the worker about the processes
jobs run in: :class:`UwsgiHost` (spoolers of this uWSGI instance) and
:class:`ProcessHost` (threads of this process).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from types import ModuleType

from .errors import ConfigurationError, JobTimeout
from .queues import DEFAULT_QUEUE, validate_queue

try:
    import uwsgi  # only exists inside a uWSGI server
except ImportError:
    uwsgi = None

log = logging.getLogger("spoolkit.runtime")


def uwsgi_module() -> ModuleType | None:
    """The ``uwsgi`` module when running inside uWSGI, else ``None``."""
    return uwsgi if uwsgi is not None and hasattr(uwsgi, "opt") else None


def instance_id() -> str:
    """Identifies this run of the server: a restart or reload gives a new one.

    Under uWSGI: host, master pid, the master's start second and the reload
    count (``UWSGI_RELOADS``; a reload re-executes the master). A spooler
    respawned after a crash keeps its instance's id; that is how a crash is
    told apart from a restart. Outside uWSGI: host and this process's pid.
    """
    server = uwsgi_module()
    host = socket.gethostname()
    if server is None:
        return f"{host}:local:{os.getpid()}"
    reloads = os.environ.get("UWSGI_RELOADS", "0")
    return f"{host}:{server.masterpid()}:{server.started_on}:{reloads}"


def spooler_pids() -> list[int]:
    server = uwsgi_module()
    if server is None:
        return []
    return [pid for pid in server.spooler_pids() if pid > 0]


def configured_spoolers() -> int:
    """How many spooler processes uwsgi.ini asks for (a dead one's slot counts too)."""
    server = uwsgi_module()
    return len(server.spooler_pids()) if server is not None else 0


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


def spooler_cwd(pid: int) -> str | None:
    """A spooler's working directory, resolved (``None`` if it cannot be read).

    ``uwsgi.spooler_pids()`` does not say which directory a spooler serves;
    a spooler changes into its directory before every scan (into a priority
    subdirectory while it runs a job from one), so its working directory does
    (``/proc/<pid>/cwd``, readable by the same user, already free of symlinks).
    """
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def spool_directory_of(cwd: str | None, directories: Collection[str]) -> str | None:
    """The one of ``directories`` that ``cwd`` is, or is a priority subdirectory of."""
    if cwd is None:
        return None
    if cwd in directories:
        return cwd
    parent = os.path.dirname(cwd)
    return parent if os.path.basename(cwd).isdigit() and parent in directories else None


def spooler_places(pids: Collection[int], known: Collection[str]) -> dict[int, str | None]:
    """The one of ``known`` directories each spooler is seen serving (``None``: none of
    them, as a spooler just forked or moved by a task is)."""
    return {pid: spool_directory_of(spooler_cwd(pid), known) for pid in pids}


def serving(places: dict[int, str | None], directory: str) -> list[int]:
    """The spoolers of ``places`` that may serve ``directory``: all but those seen
    serving another one; one seen in none counts for every directory."""
    return [pid for pid, place in places.items() if place in (None, directory)]


def spoolers_of(directory: str, directories: Collection[str] = ()) -> list[int]:
    """This instance's spoolers that may serve ``directory``, the other queues' being
    ``directories`` (``serving``)."""
    return serving(spooler_places(spooler_pids(), {directory, *directories}), directory)


def publish_spoolers(directory: str, directories: Collection[str] = ()) -> None:
    """Write the pids of this instance's spoolers of ``directory`` into it (if they changed).
    With none (another instance serves that queue), what that instance wrote stays."""
    spoolers = sorted((pid, process_start(pid)) for pid in spoolers_of(directory, directories))
    if not spoolers:
        return
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

    def __init__(self, directory: str, directories: Collection[str] = ()) -> None:
        #: The spool directory whose spoolers it wakes, and the other queues' (whose
        #: spoolers it leaves asleep).
        self.directory = os.path.realpath(directory)
        self.directories = tuple(os.path.realpath(other) for other in directories)
        self.path = os.path.join(directory, SPOOLERS_FILE)
        self._published: tuple[int, list[int]] = (-1, [])
        #: ``spooler_places`` of this instance's spoolers, kept: a spooler serves one
        #: directory for its life, so /proc is read again only when the set of pids
        #: changes (a respawn) or one was seen in no queue's directory yet.
        self._places: dict[int, str | None] = {}

    def local(self) -> list[int]:
        """This instance's spoolers that may serve the directory (``spoolers_of``)."""
        pids = spooler_pids()
        if set(pids) != self._places.keys() or None in self._places.values():
            self._places = spooler_places(pids, {self.directory, *self.directories})
        return serving(self._places, self.directory)

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
        for pid in {*self.local(), *self.published()}:
            # A pid that is gone is being respawned: the new spooler scans at start.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGUSR1)


def declares_spooler() -> bool:
    """Does uwsgi.ini give this instance a spool directory (its own or another's)?"""
    server = uwsgi_module()
    return server is not None and bool(
        server.opt.get("spooler") or server.opt.get("spooler-external")
    )


def spooler_directory() -> str:
    """The ``spooler`` directory configured in uwsgi.ini (or, in an instance that only
    produces jobs for another one, its ``spooler-external``), absolute. With several
    ``spooler`` lines, ``uwsgi.opt`` holds only the last: see ``spooler_queues``."""
    server = uwsgi_module()
    if server is None:
        raise ConfigurationError("not running under uWSGI")
    value = server.opt.get("spooler") or server.opt.get("spooler-external")
    if isinstance(value, list):
        value = value[0] if value else None
    if not value:
        raise ConfigurationError(
            "uWSGI runs without a spooler: add 'spooler = <directory>' and "
            "'spooler-processes = N' to uwsgi.ini, or 'spooler-external = <directory>' "
            "to queue jobs for another instance's spoolers (or set SPOOLKIT_EAGER=1). "
            "A web node without spoolers (uwsgi.ini:web) needs a store several hosts "
            "share: SPOOLKIT_DATABASE=postgresql://..."
        )
    path = value.decode() if isinstance(value, bytes) else str(value)
    return os.path.abspath(path)


#: uwsgi.ini names a queue's directory with ``set-placeholder = spoolkit-queue-<name>=<dir>``.
QUEUE_PLACEHOLDER = "spoolkit-queue-"


def spooler_queues() -> dict[str, str]:
    """Queue name -> absolute spooler directory, as uwsgi.ini declares them.

    uWSGI's Python plugin keeps only the last value of a repeated option in
    ``uwsgi.opt`` (on Python 3 its "already there?" check looks the key up as
    bytes, so each ``spooler`` line replaces the one before), so the
    directories cannot be read from the ``spooler`` lines. Each queue is
    declared by a placeholder of its own instead, which the ``spooler`` line
    then uses. Without any, the one ``spooler`` directory is the ``default`` queue.
    """
    server = uwsgi_module()
    if server is None:
        raise ConfigurationError("not running under uWSGI")
    queues: dict[str, str] = {}
    for key, value in server.opt.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if not name.startswith(QUEUE_PLACEHOLDER):
            continue
        queue = validate_queue(name[len(QUEUE_PLACEHOLDER) :])
        path = (value[-1] if value else None) if isinstance(value, list) else value
        if not path or path is True:
            raise ConfigurationError(f"uwsgi.ini: {name} names no directory")
        queues[queue] = os.path.realpath(os.fsdecode(path))
    if not queues:
        return {DEFAULT_QUEUE: spooler_directory()}
    if DEFAULT_QUEUE not in queues:
        raise ConfigurationError(
            f"uwsgi.ini declares the queues {', '.join(sorted(queues))} but none named "
            f"{DEFAULT_QUEUE!r}, where jobs go unless told otherwise: add "
            f"'set-placeholder = {QUEUE_PLACEHOLDER}{DEFAULT_QUEUE}=<directory>' and a "
            "'spooler' line for it"
        )
    return queues


def uwsgi_option(name: str) -> str | None:
    server = uwsgi_module()
    if server is None:
        return None
    value = server.opt.get(name)
    if isinstance(value, list):
        value = value[-1] if value else None
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def in_master_before_fork() -> bool:
    """Loading the app in the uWSGI master, before workers and spoolers exist."""
    server = uwsgi_module()
    return bool(
        server is not None
        and server.worker_id() == 0
        and server.mule_id() == 0
        and not server.i_am_the_spooler()
    )


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
    server = uwsgi_module()
    if kind != "local" and server is not None and owner == server.masterpid():
        return False
    return process_exists(owner)


class _PerProcess:
    """The instance id, computed once per process (a forked spooler computes its own)."""

    def __init__(self) -> None:
        self._cached: tuple[int, str] | None = None

    def instance(self) -> str:
        if self._cached is None or self._cached[0] != os.getpid():
            self._cached = (os.getpid(), instance_id())
        return self._cached[1]

    def runner_alive(self, runner: str | None, pid: int | None) -> bool:
        return runner_alive(runner, pid)


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise ``JobTimeout`` in this (main) thread after ``seconds`` (SIGALRM)."""

    def expire(signum: int, frame: object) -> None:
        raise JobTimeout(f"the attempt ran past its timeout of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class UwsgiHost(_PerProcess):
    """Jobs run in the spooler processes of this uWSGI instance, one at a time, in
    their main thread: an attempt can be interrupted (SIGALRM) and its spooler
    killed (uWSGI starts a new one)."""

    def is_alive(self, pid: int) -> bool:
        return spooler_alive(pid)

    @contextlib.contextmanager
    def limit(self, seconds: float | None, grace: float) -> Iterator[None]:
        """``JobTimeout`` after ``seconds``; SIGKILL to this spooler ``grace`` later."""
        if not seconds:
            yield
            return
        me = os.getpid()
        killer = threading.Timer(seconds + grace, os.kill, (me, signal.SIGKILL))
        killer.daemon = True
        killer.start()
        try:
            with _alarm(seconds):
                yield
        finally:
            killer.cancel()

    def kill(self, runner: str | None, pid: int | None) -> bool:
        """SIGKILL ``pid`` if it is a live spooler of this instance running for ``runner``."""
        if runner != self.instance() or pid is None or not spooler_alive(pid):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return True

    def time_limit(self) -> int | None:
        harakiri = uwsgi_option("spooler-harakiri")
        if harakiri and harakiri.isdigit() and int(harakiri) > 0:
            return int(harakiri)
        return None


class ProcessHost(_PerProcess):
    """Jobs run in threads of this process (local and eager runners). A job's timeout
    interrupts it only in the main thread (eager mode); no thread can be killed."""

    def is_alive(self, pid: int) -> bool:
        return pid == os.getpid()

    @contextlib.contextmanager
    def limit(self, seconds: float | None, grace: float) -> Iterator[None]:
        if seconds and threading.current_thread() is threading.main_thread():
            with _alarm(seconds):
                yield
        else:
            yield

    def kill(self, runner: str | None, pid: int | None) -> bool:
        return False

    def time_limit(self) -> int | None:
        return None
