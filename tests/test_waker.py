"""Which spoolers a producer wakes, and how often it asks /proc which queue each serves.

Real processes stand in for spoolers: their working directory is what the
waker reads (``/proc/<pid>/cwd``), as it reads a spooler's.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import spoolkit.runtime
from spoolkit.runtime import SpoolerWaker
from tests.standin import StandinUwsgi, install


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by the test, each with the working directory it is given."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:  # stopped by pid
        process.kill()
        process.wait()


def _sleeper(cwd: Path, started: list[subprocess.Popen[bytes]]) -> int:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=cwd)
    started.append(process)
    return process.pid


def test_the_waker_wakes_its_queues_spoolers_and_reads_proc_once_per_pid(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    default, slow, elsewhere = tmp_path / "default", tmp_path / "slow", tmp_path / "elsewhere"
    for directory in (default, slow, elsewhere, default / "3"):
        directory.mkdir(parents=True)
    mine, in_priority, theirs = (_sleeper(place, sleepers) for place in (default, default / "3",
                                                                          slow))  # fmt: skip
    standin = install(monkeypatch, StandinUwsgi(default, spooler_pids=[mine, in_priority, theirs]))
    reads: list[int] = []
    real_cwd = spoolkit.runtime.spooler_cwd

    def counted(pid: int) -> str | None:
        reads.append(pid)
        return real_cwd(pid)

    monkeypatch.setattr(spoolkit.runtime, "spooler_cwd", counted)
    waker = SpoolerWaker(str(default), [str(default), str(slow)])
    for _ in range(3):
        assert sorted(waker.local()) == sorted([mine, in_priority])
    assert len(reads) == 3  # each pid once, then from memory

    # A respawn changes the pids: asked again. One not in any queue's directory (just
    # forked) is woken for every queue and asked about again on the next wake-up.
    fresh = _sleeper(elsewhere, sleepers)
    standin.pids = [mine, theirs, fresh]
    reads.clear()
    assert sorted(waker.local()) == sorted([mine, fresh])
    assert sorted(waker.local()) == sorted([mine, fresh])
    assert len(reads) == 6
