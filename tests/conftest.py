from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from spoolkit import SpoolKit

from .support import UWSGI, UwsgiServer


def pytest_sessionstart(session: pytest.Session) -> None:
    # A missing uwsgi must fail the run, not skip the end-to-end tests silently.
    if not UWSGI.exists():
        raise pytest.UsageError(f"{UWSGI} not found: run the tests with 'make test'")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SPOOLKIT_* setting leaks in from the shell that runs the tests."""
    import os

    for key in list(os.environ):
        if key.startswith("SPOOLKIT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SPOOLKIT_TEST_DIR", str(tmp_path))


def make_app(tmp_path: Path, **config: Any) -> Flask:
    app = Flask("testapp")
    app.config.update(
        TESTING=True,
        SPOOLKIT_DATABASE=str(tmp_path / "jobs.db"),
        SPOOLKIT_IMPORTS="tests.jobs",
        **config,
    )
    SpoolKit(app)
    return app


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
