"""A real PostgreSQL server in a temporary directory, on a unix socket only.

Shared by the tests (``tests/pg.py`` adds the pytest fixtures) and the benchmark
(the ``kit-pg`` system), which is why it lives here: ``bench/.venv`` has psycopg but
not pytest.

The server is Debian's (package ``postgresql``: ``/usr/lib/postgresql/<version>/bin``,
the newest version installed). Each cluster lives in its own ``spoolkit-pg-*``
directory under ``parent`` (``/tmp`` unless told; short: a unix socket path is
limited to 107 bytes, and pytest's ``tmp_path`` can be longer), which holds the
data directory, the socket and ``server.log``.

initdb refuses to run as root, and CI runs as root: the cluster then belongs to
``nobody`` (any unprivileged user works; ``nobody`` exists everywhere, so nothing
changes in ``/etc/passwd``). The socket directory is private to that user (root
reaches it anyway). Programs run through ``setpriv`` (util-linux, always
installed), which changes the user then *executes* the server, so the pid we hold is
the postmaster's itself, and sets a parent-death signal: if the test or bench run is
killed, the postmaster gets SIGQUIT (immediate shutdown) instead of outliving it.
The process is stopped by pid (the signals of ``pg_ctl stop -m``), never by name.

Settings are fast by default (``FAST``: no fsync); a test about crashes, and the
benchmark, pass ``DURABLE``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import psycopg
from psycopg import sql

from bench.common import alive, descendants, wait_for

LIB_DIR = Path("/usr/lib/postgresql")
#: Not crash-safe, and quick: what every test that does not crash the server wants.
FAST: Mapping[str, str] = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
#: PostgreSQL's defaults for the same settings: a committed row survives a crash.
DURABLE: Mapping[str, str] = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
#: The unprivileged user the server runs as when the tests run as root.
SERVER_USER = "nobody"
#: Only the socket's name: with listen_addresses empty, nothing listens on this port.
PORT = 5432
#: Trust on the socket (only the server's user and root can reach it), no fsync while
#: creating it: a crashed machine loses a test cluster, nothing else.
INITDB_OPTIONS = (
    "--auth=trust",
    "--username=postgres",
    "-E",
    "UTF8",
    "--locale=C",
    "--no-sync",
    "--no-instructions",
)
StopMode = Literal["smart", "fast", "immediate"]
#: The postmaster's shutdown signals, as ``pg_ctl stop -m <mode>`` sends them.
STOP_SIGNALS: Mapping[StopMode, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}


def find_bin_dir(lib_dir: Path = LIB_DIR) -> Path:
    """The newest ``<lib_dir>/<version>/bin`` holding the server; AssertionError if none
    (a missing server fails the tests, it does not skip them)."""
    found = [
        path.parent for path in lib_dir.glob("*/bin/postgres") if path.parent.parent.name.isdigit()
    ]
    assert found, (
        f"no PostgreSQL server under {lib_dir}/*/bin: install Debian's package 'postgresql' "
        "(scripts/test-deps.sh does; 'make test' and 'make bench' run it)"
    )
    return max(found, key=lambda path: int(path.parent.name))


class PostgresCluster:
    """One PostgreSQL cluster in a temporary directory of its own, on a unix socket.

    ``start()`` creates it (initdb) the first time, then starts the server; ``stop()``
    and ``start()`` again keep the data; ``close()`` stops it and deletes everything.
    Used as a context manager, it is started on entry and closed on exit.
    ``settings`` (``-c name=value``) replace ``FAST`` as a whole: a setting not named
    keeps PostgreSQL's default. The socket-only settings are always added.
    """

    def __init__(
        self,
        settings: Mapping[str, str] = FAST,
        *,
        user: str | None = None,
        lib_dir: Path = LIB_DIR,
        parent: Path = Path("/tmp"),
        timeout: float = 30,
    ) -> None:
        self.settings = dict(settings)
        self.user = user if user is not None else (SERVER_USER if os.geteuid() == 0 else None)
        self.lib_dir = lib_dir
        self.parent = parent
        self.timeout = timeout
        self.bin_dir: Path | None = None
        self.base: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._templates: set[str] = set()

    # -- where things are ------------------------------------------------------------

    def _base(self) -> Path:
        assert self.base is not None, "the cluster has not been started: call start()"
        return self.base

    @property
    def socket_dir(self) -> Path:
        return self._base()

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def log_path(self) -> Path:
        return self._base() / "server.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        """The postmaster's pid."""
        assert self._process is not None and self.running, "the server is not running"
        return self._process.pid

    def processes(self) -> list[int]:
        """The postmaster and every process under it (backends, checkpointer, ...)."""
        return [self.pid, *descendants(self.pid)]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for ``dbname`` as the superuser ``postgres``, over the socket."""
        host = urllib.parse.quote(str(self.socket_dir), safe="")
        return (
            f"postgresql://postgres@/{urllib.parse.quote(dbname, safe='')}?host={host}&port={PORT}"
        )

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        """An autocommit connection (close it: ``with cluster.connect() as conn``)."""
        return psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=10)

    # -- life cycle --------------------------------------------------------------------

    def _command(self, program: str, *args: str) -> list[str]:
        """``program`` from the server's bin directory, run as the server's user."""
        assert self.bin_dir is not None
        setpriv = ["setpriv", "--pdeathsig", "QUIT"]
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            setpriv += [
                "--reuid",
                str(entry.pw_uid),
                "--regid",
                str(entry.pw_gid),
                "--clear-groups",
            ]
        return [*setpriv, "--", str(self.bin_dir / program), *args]

    def _env(self) -> dict[str, str]:
        # Nothing from the caller's PG* variables, locale or time zone leaks in.
        return {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "TZ": "UTC"}

    def _create(self) -> None:
        self.bin_dir = find_bin_dir(self.lib_dir)
        if self.user is not None:
            try:
                entry = pwd.getpwnam(self.user)
            except KeyError:
                raise AssertionError(f"no user {self.user!r} to run PostgreSQL as") from None
        self.base = Path(tempfile.mkdtemp(prefix="spoolkit-pg-", dir=self.parent))
        if self.user is not None:
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
        result = subprocess.run(
            self._command("initdb", "-D", str(self.data_dir), *INITDB_OPTIONS),
            env=self._env(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=self.timeout,
            check=False,
        )
        assert result.returncode == 0, f"initdb failed:\n{result.stdout}{result.stderr}"

    def start(self) -> PostgresCluster:
        """Create the cluster (the first time), start the server and wait until it
        accepts connections."""
        assert not self.running, "the server is already running"
        if self.base is None:
            self._create()
        options = {
            **self.settings,
            "listen_addresses": "",
            "unix_socket_directories": str(self.socket_dir),
            "unix_socket_permissions": "0700",
            "port": str(PORT),
        }
        args = [arg for name, value in options.items() for arg in ("-c", f"{name}={value}")]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command("postgres", "-D", str(self.data_dir), *args),
                env=self._env(),
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C in the terminal is the caller's to handle
            )
        try:
            wait_for(self._ready, self.timeout, "PostgreSQL to accept connections")
        except (TimeoutError, AssertionError) as error:
            self._kill()
            raise AssertionError(
                f"PostgreSQL did not start ({error}):\n{self.log_text()[-3000:]}"
            ) from None
        return self

    def _ready(self) -> bool:
        assert self.running, "the server exited"
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2):
                return True
        except psycopg.OperationalError:  # no socket yet, or "the database system is starting up"
            return False

    def stop(self, mode: StopMode = "fast", timeout: float = 30) -> None:
        """Shut the server down (``pg_ctl stop -m mode``'s signal to the postmaster) and
        wait until it and every process under it are gone. ``immediate`` is a crash as
        far as the data goes: the next start replays the WAL."""
        process = self._process
        assert process is not None and self.running, "the server is not running"
        family = self.processes()
        process.send_signal(STOP_SIGNALS[mode])
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            raise AssertionError(
                f"PostgreSQL did not stop ({mode}) within {timeout}s:\n{self.log_text()[-3000:]}"
            ) from None
        self._process = None
        # The postmaster has waited for its children (and SIGKILLed any slow one).
        left = [pid for pid in family if alive(pid)]
        assert not left, f"PostgreSQL processes left after stop ({mode}): {left}"

    def restart(self, mode: StopMode = "fast") -> None:
        self.stop(mode)
        self.start()

    def _kill(self) -> None:
        """SIGKILL the postmaster and everything under it, by pid."""
        if self._process is None:
            return
        family = [self._process.pid, *descendants(self._process.pid)]
        self._kill_all(family)
        self._process.wait(10)
        self._process = None

    @staticmethod
    def _kill_all(pids: list[int]) -> None:
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the server if it runs and delete the cluster's directory."""
        try:
            if self.running:
                self.stop("immediate")  # the data is thrown away: no checkpoint needed
            else:
                self._kill()
        finally:
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)
                self.base = None

    def __enter__(self) -> PostgresCluster:
        try:
            return self.start()
        except BaseException:
            self.close()  # the error carries the log; nothing is left behind
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- databases ---------------------------------------------------------------------

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        """``CREATE DATABASE`` (``t_<n>`` unless named), copied from ``template`` if
        given; returns its name."""
        name = name or f"t_{next(self._names)}"
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with self.connect() as conn:
            conn.execute(query)
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any session still connected to it."""
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def create_template(self, name: str, setup: Callable[[str], None] | None = None) -> str:
        """A template database: created from ``template0``, filled by ``setup(dsn)``
        (a schema, fixed rows), then closed to connections so that ``CREATE DATABASE
        ... TEMPLATE`` can copy it. Made once per cluster; later calls return ``name``."""
        if name in self._templates:
            return name
        self.create_database(name, template="template0")
        if setup is not None:
            setup(self.dsn(name))
        with self.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)
            ).fetchone()
            assert row is not None and row[0] == 0, (
                f"the setup of template {name!r} left {row and row[0]} connection(s) open: "
                "close them (with psycopg.connect(...) as conn)"
            )
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                    sql.Identifier(name)
                )
            )
        self._templates.add(name)
        return name
