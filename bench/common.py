"""Helpers shared by every runner: ports, polling, process figures, statistics."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from bench.apps.record import read_records

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read_stats(address: str, timeout: float = 10) -> dict[str, Any]:
    """uWSGI's stats (``--stats``): a unix socket path, or ``host:port`` for TCP."""
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
    else:
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    with sock:
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return dict(json.loads(b"".join(chunks)))


def get_json(url: str, timeout: float = 600) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.loads(answer.read())


def records_in(path: str, first: int, count: int) -> dict[int, float]:
    """Start times of jobs ``first .. first+count-1`` found so far (the first run of each)."""
    found: dict[int, float] = {}
    for i, started in read_records(path):
        if first <= i < first + count and i not in found:
            found[i] = started
    return found


def wait_records(path: str, first: int, count: int, timeout: float) -> dict[int, float]:
    def complete() -> dict[int, float] | None:
        found = records_in(path, first, count)
        return found if len(found) == count else None

    return wait_for(
        complete, timeout, f"{count} jobs from #{first}", interval=0.005 if count < 10 else 0.1
    )


def cpu_seconds(pids: Iterable[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLOCK_TICKS


def rss_mib(pid: int) -> float | None:
    """VmRSS of a live process; None for one that is gone or a zombie (RQ's forks)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def alive(pid: int) -> bool:
    """Is ``pid`` running? The bench's and the tests' only such check. Unlike the
    kit's ``process_exists``, a zombie counts as dead: a killed child its parent has
    not reaped yet has stopped doing anything."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (children of children too)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry)] = int(
                    Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]
                )
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def stop_tree(
    process: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 30
) -> None:
    """Stop a process we started, then any of its descendants left, by pid."""
    family = descendants(process.pid)
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    signal_pids(family, signal.SIGKILL)


def signal_pids(pids: list[int], sig: int) -> None:
    """Signal each pid that still exists. A consumer list is a snapshot: a fork-per-job
    worker (RQ's work horse) may have exited between listing and signalling, and a
    process that is gone can neither run a job nor need waking."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fs_of(path: Path) -> str:
    """'tmpfs', 'ext4 (no journal)', ... for the filesystem holding ``path``."""
    best, kind, device = "", "?", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mount, fstype = line.split()[:3]
        if str(path).startswith(mount) and len(mount) > len(best):
            best, kind, device = mount, fstype, dev
    if kind == "ext4":
        name = os.path.basename(os.path.realpath(device))
        journal = Path(f"/sys/fs/ext4/{name}/journal_task")
        if journal.exists() and journal.read_text().strip() in ("<none>", ""):
            return "ext4 (no journal)"
        return "ext4 (journal)"
    return kind


#: What the fsync probe appends per commit: one 4 KiB page, as a WAL frame is about.
PROBE_BLOCK = 4096


def fsync_probe(directory: Path, seconds: float = 3.0) -> dict[str, Any]:
    """The disk's own durable-write rate: write one page to a file and ``fdatasync`` it,
    again and again for ``seconds``, nothing else. One such flush per accepted job is
    the floor of a durable ``202`` (SQLite's WAL commit with ``synchronous=FULL`` is
    one), so the kit's single-producer enqueue on this disk is compared with this."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fsync-probe"
    block = os.urandom(PROBE_BLOCK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        count, offset = 0, 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            os.pwrite(fd, block, offset)
            os.fdatasync(fd)
            # Round a 1 MiB file, as a WAL is reused after a checkpoint: after the first
            # lap no write grows the file, so no flush carries a size change.
            offset = (offset + PROBE_BLOCK) % (256 * PROBE_BLOCK)
            count += 1
        elapsed = time.monotonic() - t0
    finally:
        os.close(fd)
        path.unlink()
    return {"per_s": count / elapsed, "filesystem": fs_of(directory), "block": PROBE_BLOCK}
