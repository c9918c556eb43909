from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from spoolkit.sqlite import SQLiteStore

from .pg import pg_dsn, pg_template, postgres  # noqa: F401 (fixtures)
from .reporting import SOAK
from .standin import StandinUwsgi, install, make_store
from .support import UWSGI, UwsgiServer, make_app


def pytest_collection_finish(session: pytest.Session) -> None:
    # A missing uwsgi must fail a run that selected end-to-end tests, not skip them
    # silently; a run without them (-m "not e2e") does not need the binary.
    if not UWSGI.exists() and any(item.get_closest_marker("e2e") for item in session.items):
        raise pytest.UsageError(f"{UWSGI} not found: run the tests with 'make test'")
    unmarked = [
        item.nodeid
        for item in session.items
        if "server" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("e2e")
    ]
    if unmarked:
        raise pytest.UsageError(f"mark these tests e2e, they start uwsgi: {', '.join(unmarked)}")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SPOOLKIT_* setting leaks in from the shell that runs the tests."""
    for key in list(os.environ):
        if key.startswith("SPOOLKIT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SPOOLKIT_TEST_DIR", str(tmp_path))


@pytest.fixture
def eager_app(tmp_path: Path) -> Flask:
    return make_app(tmp_path, SPOOLKIT_EAGER=True)


@pytest.fixture
def eager_client(eager_app: Flask) -> FlaskClient:
    return eager_app.test_client()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UwsgiServer]:
    """One real uWSGI for a whole test module (modules that break it make their own)."""
    instance = UwsgiServer(tmp_path_factory.mktemp("uwsgi"))
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


#: A small disk's size. At soak size a fault-matrix cell keeps 20 jobs in flight, and the
#: store's write-ahead log grows by a few pages per commit until the housekeeper's next
#: checkpoint: past 1 MiB, it fills the disk by itself before the filler does, and the
#: filler's removal gives back nothing. The fault under test is "something else filled
#: the disk", so the disk must hold the kit's working set with room to spare.
SMALL_DISK = "8m" if SOAK else "1m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs (``SMALL_DISK``): a real filesystem that really fills up (needs
    root, as CI has)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.fail("the disk-full tests mount a tmpfs and need root (CI runs as root)")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK},mode=0755", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# -- component tests: a stand-in uwsgi module and a real SQLite store (tests/standin.py) --


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path.resolve() / "spool"


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch, spool_dir: Path) -> StandinUwsgi:
    return install(monkeypatch, StandinUwsgi(spool_dir, spooler_process=True))


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    return make_store(tmp_path)
