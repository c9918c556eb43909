"""The benchmark harness's own failure handling (pure logic; `make bench-quick` runs it for real).

CI once lost a whole bench run because RQ's fork-per-job work horse exited
between being listed and being sent SIGSTOP. These pin the two rules that
came out of it: signalling a vanished consumer is not an error, and a peer's
failed step is recorded while a uWSGI system's failure still aborts the run.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import signal_pids
from bench.render import markdown
from bench.run import peer_failure_recorded
from bench.uwsgi_bench import KIT, UwsgiDriver


class _PeerDriver:
    """Stands in for a broker peer: anything that is not a UwsgiDriver."""

    key = "rq"


def test_signalling_a_consumer_that_already_exited_is_not_an_error() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        signal_pids([gone.pid, alive.pid], signal.SIGTERM)
        assert alive.wait(10) == -signal.SIGTERM  # the live one was still signalled
    finally:
        if alive.poll() is None:
            alive.kill()
            alive.wait(10)


def test_a_peer_failure_is_recorded_and_the_run_goes_on() -> None:
    errors: dict[str, str] = {}
    with peer_failure_recorded(_PeerDriver(), "rq@disk: scale", errors):  # type: ignore[arg-type]
        raise ProcessLookupError(3, "No such process")
    assert errors == {"rq@disk: scale": "ProcessLookupError: [Errno 3] No such process"}


def test_a_uwsgi_system_failure_still_aborts_the_run(tmp_path: Path) -> None:
    errors: dict[str, str] = {}
    driver = UwsgiDriver(KIT, tmp_path)
    with (
        pytest.raises(ProcessLookupError),
        peer_failure_recorded(driver, "kit@disk: scale", errors),
    ):
        raise ProcessLookupError(3, "No such process")
    assert errors == {}


def test_results_md_names_the_failed_steps() -> None:
    results = {
        "quick": True,
        "started": "2026-11-22T00:00:00+00:00",
        "seconds": 1,
        "machine": {"cores": 2, "cpu": "x", "memory_gib": 1, "kernel": "k", "python": "3"},
        "filesystems": {"disk": "ext4", "tmpfs": "tmpfs"},
        "versions": {},
        "core": {},
        "extended": {},
        "labels": {},
        "promises": {},
        "errors": {"rq@disk: scale": "ProcessLookupError: [Errno 3] No such process"},
    }
    text = markdown(results)
    assert "## Steps that failed" in text
    assert "- rq@disk: scale: `ProcessLookupError: [Errno 3] No such process`" in text
