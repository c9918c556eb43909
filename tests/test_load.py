"""Load: wrk POSTing jobs at 32 connections. Every answer 2xx, every accepted job
succeeds, web worker and spooler memory stays flat.

`make test` runs 10 s; `make soak` runs 60 s (SPOOLKIT_SOAK=1).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .reporting import SOAK, report
from .support import UwsgiServer, wait_for

pytestmark = pytest.mark.e2e

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"task": "tests.jobs.add", "args": [1, 2]}'
wrk.headers["Content-Type"] = "application/json"
"""


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match is not None
    return int(match.group(1))


def _memory(server: UwsgiServer) -> dict[str, list[int]]:
    stats = server.stats()
    return {
        "workers": [_rss_kib(worker["pid"]) for worker in stats["workers"]],
        "spoolers": [_rss_kib(spooler["pid"]) for spooler in stats["spoolers"]],
    }


def _parse_wrk(output: str) -> dict[str, Any]:
    requests = re.search(r"(\d+) requests in ([\d.]+)(m|s)", output)
    assert requests is not None, output
    seconds = float(requests.group(2)) * (60 if requests.group(3) == "m" else 1)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", output, re.M))
    return {
        "requests": int(requests.group(1)),
        "seconds": seconds,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "connect_errors": int(errors.group(1)) if errors else 0,
        # uWSGI's http-socket closes after each answer; wrk counts that close as a "read error".
        "closes": int(errors.group(2)) if errors else 0,
        "write_errors": int(errors.group(3)) if errors else 0,
        "timeouts": int(errors.group(4)) if errors else 0,
        "latency": latency,
    }


def test_wrk_load_every_answer_2xx_every_job_succeeds_memory_flat(tmp_path: Path) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.fail("wrk is not installed: run the suite with 'make test' (scripts/test-deps.sh)")
    duration = 60 if SOAK else 10
    (tmp_path / "post.lua").write_text(WRK_SCRIPT)
    with UwsgiServer(tmp_path / "srv", SPOOLKIT_LOG_LEVEL="WARNING") as server:
        for _ in range(200):  # warm-up: imports, SQLite caches, first spool files
            server.enqueue("add", 1, 2)
        wait_for(lambda: server.get("/healthz").json()["jobs"]["succeeded"] >= 200, 60, "warm-up")
        before = _memory(server)
        done = subprocess.run(
            [wrk, "-t2", "-c32", f"-d{duration}s", "--timeout", "10s", "--latency",
             "-s", str(tmp_path / "post.lua"), f"http://127.0.0.1:{server.port}/jobs"],
            capture_output=True, text=True, check=True, timeout=duration + 60,
        )  # fmt: skip
        figures = _parse_wrk(done.stdout)

        def drained() -> dict[str, int] | None:
            counts: dict[str, int] = server.get("/healthz").json()["jobs"]
            busy = counts["queued"] + counts["scheduled"] + counts["running"]
            return counts if busy == 0 else None

        counts = wait_for(drained, 300, "every accepted job to finish", interval=0.5)
        after = _memory(server)
    accepted = sum(counts.values()) - 200
    succeeded = counts["succeeded"] - 200
    finished = succeeded + counts["failed"] + counts["cancelled"]
    answered_2xx = figures["requests"] - figures["non_2xx"]
    # Lost: answered 2xx but not in the store, or in the store and never finished.
    lost = max(0, answered_2xx - accepted) + accepted - finished
    report("wrk-load", duration=duration, connections=32, **figures, accepted=accepted,
           succeeded=succeeded, failed=counts["failed"], lost=lost,
           rss_kib_before=before, rss_kib_after=after)  # fmt: skip
    assert lost == 0
    assert figures["non_2xx"] == 0
    assert figures["connect_errors"] == figures["write_errors"] == figures["timeouts"] == 0
    assert counts["failed"] == counts["cancelled"] == 0
    # Every answer wrk saw was a 202 for a job in the store; the store may hold
    # a few more: requests still in flight when wrk stopped (one per connection).
    assert figures["requests"] <= accepted <= figures["requests"] + 32
    growth = [b - a for role in before for a, b in zip(before[role], after[role], strict=True)]
    assert max(growth) < 15 * 1024, f"RSS grew by {max(growth)} KiB: {before} -> {after}"
