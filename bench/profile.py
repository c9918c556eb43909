"""Where the kit's time goes per job: ``python -m bench.profile`` (``make bench-profile``).

Starts the kit as the benchmark does (bench/uwsgi_bench.py, default
settings, spool and store on the disk directory), then drains jobs twice:
once under py-spy (sampling the web worker that runs the producer loop and
both spoolers, without pausing them) and once under ``strace -c`` (system
calls of the web worker and one spooler). Writes the summary to
bench/PROFILE.md and the raw collapsed stacks next to it in
bench/profile-raw/ (not committed).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, fs_of, signal_pids, wait_for, wait_records
from bench.measure import Measure
from bench.uwsgi_bench import KIT, UwsgiDriver

log = logging.getLogger("bench.profile")
HERE = Path(__file__).resolve().parent
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError(f"{name} is not installed")
    return found


def short(path: str) -> str:
    """site-packages/flask/app.py -> flask/app.py; /repo/spoolkit/store.py -> spoolkit/store.py."""
    for marker in ("site-packages/", "lib/python3", str(HERE.parent) + "/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "lib/python3" else tail
    return path


def read_stacks(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """py-spy's raw (collapsed) format: ``frame;frame;...;leaf count`` per line."""
    stacks = []
    for line in path.read_text().splitlines():
        text, _, count = line.rpartition(" ")
        frames = []
        for frame in text.split(";"):
            match = FRAME.match(frame.strip())
            if match:
                frames.append((match["function"], short(match["file"])))
        if frames:
            stacks.append((frames, int(count)))
    return stacks


#: The leaf of a sample that sleeps in the store's back-off, waiting for SQLite's write lock.
LOCK_WAIT = ("SQLiteStore._locked", "spoolkit/sqlite.py")


def lock_wait(stacks: list[tuple[list[tuple[str, str]], int]]) -> tuple[int, int]:
    """(all samples, those sleeping in the store's back-off); all is at least 1."""
    everything = sum(count for _, count in stacks) or 1
    return everything, sum(count for frames, count in stacks if frames[-1] == LOCK_WAIT)


def summarize(
    stacks: list[tuple[list[tuple[str, str]], int]], top: int, paused: bool = True
) -> list[str]:
    """Tables of where the working samples are; lock-wait samples are counted apart."""
    everything, waiting = lock_wait(stacks)
    stacks = [(frames, count) for frames, count in stacks if frames[-1] != LOCK_WAIT]
    total = sum(count for _, count in stacks) or 1
    by_file: collections.Counter[str] = collections.Counter()
    by_leaf: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        for file in {file for _, file in frames}:
            by_file[file] += count
        function, file = frames[-1]
        by_leaf[f"`{function}` ({file})"] += count
    share = 100 * waiting / everything
    why = ("py-spy pauses the process it samples, the lock holder too, which inflates this "
           "share" if paused else "py-spy --nonblocking: no process paused, the waits are real")
    lines = [f"{everything:,} samples with Python frames; {share:.0f} % of them "
             f"sleep in the store's back-off, waiting for SQLite's write lock ({why}). The "
             f"tables are the other {total:,} samples.", "",
             "| module (inclusive: samples with a frame in it) | % |", "|---|---|"]  # fmt: skip
    lines += [f"| {file} | {100 * n / total:.1f} |" for file, n in by_file.most_common(top)]
    lines += ["", "| leaf function (self time) | % |", "|---|---|"]
    lines += [f"| {name} | {100 * n / total:.1f} |" for name, n in by_leaf.most_common(top)]
    return lines


def strace_rows(path: Path) -> list[tuple[float, int, str]]:
    """``strace -c``'s summary as (seconds, calls, syscall), most seconds first."""
    rows = []
    for line in path.read_text().splitlines():
        # % time, seconds, usecs/call, calls, [errors], syscall
        parts = line.split()
        if len(parts) >= 5 and re.match(r"^\d+\.\d+$", parts[0]) and parts[-1] != "total":
            rows.append((float(parts[1]), int(parts[3]), parts[-1]))
    return sorted(rows, reverse=True)


def strace_table(path: Path, top: int, jobs: int) -> list[str]:
    """strace -c -w: wall-clock time in each system call (sleeps and disk waits included)."""
    rows = strace_rows(path)
    lines = ["| syscall | seconds (wall) | calls | calls per job | us per call |"]
    lines.append("|---|---|---|---|---|")
    lines += [
        f"| {name} | {seconds:.3f} | {calls:,} | {calls / jobs:.2f} | {seconds * 1e6 / calls:.0f} |"
        for seconds, calls, name in rows[:top]
    ]
    return lines


def syscalls_per_job(path: Path, names: tuple[str, ...]) -> dict[str, float]:
    """strace -c counts of ``names`` per job this one spooler ran (its ``unlink`` calls:
    uWSGI removes each spool file it has run, and nothing else in it unlinks)."""
    calls = {name: count for _, count, name in strace_rows(path)}
    jobs = calls.get("unlink", 0) or 1
    return {"jobs": jobs, **{name: calls.get(name, 0) / jobs for name in names}}


#: The system calls the backlog profile counts per job: SQLite's page reads and writes,
#: its file locks, and the back-off sleeps between tries for its write lock.
COUNTED = ("pread64", "pwrite64", "fcntl", "clock_nanosleep")


def backlog_profile(base: Path, spoolers: int, n: int, raw_dir: Path) -> dict[str, Any]:
    """The spoolers alone: ``n`` jobs queued while they are stopped, then drained, once
    under py-spy (every spooler, ``--nonblocking``: nothing is paused, so waits are
    real) and once under ``strace -c`` (one spooler). CPU per job is counted without
    either profiler, on a third backlog."""
    driver = UwsgiDriver(dataclasses.replace(KIT, spoolers=spoolers), base)
    driver.start()
    try:
        measure = Measure(driver)
        measure.drain(200)  # warm-up
        consumers = driver.consumer_pids()

        def drained(attach: list[list[str]]) -> tuple[float, float, list[subprocess.Popen[bytes]]]:
            first = measure.ids(n)
            signal_pids(consumers, signal.SIGSTOP)
            try:
                driver.enqueue_many(first, n)
                quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
                tools = [subprocess.Popen(command, **quiet) for command in attach]
                time.sleep(1.0 if tools else 0)  # the profilers attach
                cpu_before, released = cpu_seconds(consumers), time.time()
            finally:
                signal_pids(consumers, signal.SIGCONT)
            starts = wait_records(driver.record, first, n, 1800)
            for started in tools:
                started.send_signal(signal.SIGINT)
            for started in tools:
                started.wait(timeout=120)
            cpu = (cpu_seconds(consumers) - cpu_before) * 1000 / n
            return n / (max(starts.values()) - released), cpu, tools

        drain, cpu, _ = drained([])
        spies = [raw_dir / f"backlog-{spoolers}x{n}-{pid}.txt" for pid in consumers]
        spy = [tool("py-spy"), "record", "-r", "200", "-f", "raw", "--nonblocking"]
        drained([[*spy, "-o", str(out), "-p", str(pid)]
                 for out, pid in zip(spies, consumers, strict=True)])  # fmt: skip
        trace = raw_dir / f"backlog-{spoolers}x{n}-strace.txt"
        drained([[tool("strace"), "-c", "-o", str(trace), "-p", str(consumers[0])]])
    finally:
        driver.stop()
    stacks = [stack for out in spies for stack in read_stacks(out)]
    everything, waiting = lock_wait(stacks)
    return {"spoolers": spoolers, "n": n, "drain_per_s": drain, "cpu_ms": cpu,
            "lock_wait_share": waiting / everything, "stacks": stacks,
            "syscalls": syscalls_per_job(trace, COUNTED)}  # fmt: skip


def backlog_lines(runs: list[dict[str, Any]], where: str) -> list[str]:
    lines = [
        "## The spoolers alone: one against two, 5,000 against 100,000",
        "",
        f"A backlog queued while the spoolers are stopped, then drained by them alone (no "
        f"producer writing meanwhile), on {where}. CPU per job is from a run without profilers; "
        "lock wait is the share of the spoolers' py-spy samples (`--nonblocking`, so not "
        "inflated) that sleep in the store's back-off; system calls per job are one "
        "spooler's (`strace -c`), divided by the jobs that spooler ran (strace slows the "
        "spooler it traces, so beside a second one it runs fewer of the jobs, and its failed "
        "tries for the lock weigh more per job).",
        "",
        "| spoolers | backlog | drain jobs/s | spooler CPU ms/job | lock wait | traced "
        "spooler's jobs | " + " | ".join(f"{name}/job" for name in COUNTED) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(COUNTED),
    ]
    for run in runs:
        calls = " | ".join(f"{run['syscalls'][name]:.1f}" for name in COUNTED)
        wait = 100 * run["lock_wait_share"]
        lines.append(f"| {run['spoolers']} | {run['n']:,} | {run['drain_per_s']:,.0f} | "
                     f"{run['cpu_ms']:.3f} | {wait:.0f} % | {run['syscalls']['jobs']:,} | "
                     f"{calls} |")  # fmt: skip
    for run in runs:
        lines += ["", f"### {run['spoolers']} spooler(s), {run['n']:,} jobs: where the working "
                  "samples are", "", *summarize(run["stacks"], 10, paused=False)]  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=6000, help="jobs per profiled drain")
    parser.add_argument("--disk", default="/tmp/spoolkit-bench", help="base directory")
    parser.add_argument(
        "--large", type=int, default=100_000,
        help="the large backlog of the spoolers-alone section (0: skip it)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    raw_dir = HERE / "profile-raw"
    shutil.rmtree(raw_dir, ignore_errors=True)
    raw_dir.mkdir()
    driver = UwsgiDriver(KIT, Path(args.disk) / "profile")
    driver.start()
    try:
        measure = Measure(driver)
        measure.drain(200)  # warm-up
        roles = {"web worker": driver.worker_pids(), "spoolers": driver.consumer_pids()}
        spies = []
        for role, pids in roles.items():
            for pid in pids:
                out = raw_dir / f"{role.replace(' ', '-')}-{pid}.txt"
                spies.append((role, out, subprocess.Popen(
                    [tool("py-spy"), "record", "-r", "200", "-f", "raw",
                     "-o", str(out), "-p", str(pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )))  # fmt: skip
        time.sleep(1.0)  # py-spy attaches
        spied = measure.drain(args.n)
        for _, _, spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for _, out, spy in spies:
            spy.wait(timeout=60)
            wait_for(out.exists, 10, f"{out.name}")
        log.info("py-spy drain: %s", spied)

        traces = []
        traced_pids = {"web worker": roles["web worker"][0], "spooler": roles["spoolers"][0]}
        for role, pid in traced_pids.items():
            out = raw_dir / f"strace-{role.replace(' ', '-')}.txt"
            traces.append((role, out, subprocess.Popen(
                [tool("strace"), "-c", "-w", "-o", str(out), "-p", str(pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )))  # fmt: skip
        time.sleep(1.0)
        traced = measure.drain(args.n // 3)
        for _, _, trace in traces:
            trace.send_signal(signal.SIGINT)
        for _, _, trace in traces:
            trace.wait(timeout=60)
        log.info("strace drain: %s", traced)
    finally:
        driver.stop()

    lines = [
        "# Where the kit's time goes",
        "",
        f"Generated by `make bench-profile` (`python -m bench.profile`) on "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC: the kit with default settings "
        f"(bench/uwsgi_bench.py), spool and store on {fs_of(Path(args.disk))}, no-op task, "
        f"{args.n:,} jobs enqueued by one loop in the web worker while 2 spoolers drain them.",
        "",
        f"Under py-spy (200 Hz): enqueue {spied['enqueue_per_s']:,.0f}/s, drain "
        f"{spied['drain_per_s']:,.0f}/s, CPU per job {spied['cpu_ms_producer']:.3f} ms producer + "
        f"{spied['cpu_ms_consumers']:.3f} ms spoolers (both profilers slow the processes; "
        "bench/RESULTS.md has the unprofiled rates).",
        "",
    ]
    for role in roles:
        stacks = [s for r, out, _ in spies if r == role for s in read_stacks(out)]
        lines += [f"## {role} (py-spy)", "", *summarize(stacks, 14), ""]
    for role, out, _ in traces:
        lines += [f"## {role}: system calls (strace -c -w, {args.n // 3:,} jobs)", "",
                  *strace_table(out, 12, args.n // 3), ""]  # fmt: skip
    plans = [(2, 5000), (1, 5000)] + ([(2, args.large)] if args.large else [])
    runs = []
    for spoolers, n in plans:
        log.info("backlog: %d spooler(s), %d jobs", spoolers, n)
        runs.append(backlog_profile(Path(args.disk) / "profile-backlog", spoolers, n, raw_dir))
        log.info("  %s", {k: v for k, v in runs[-1].items() if k != "stacks"})
    lines += backlog_lines(runs, fs_of(Path(args.disk)))
    (HERE / "PROFILE.md").write_text("\n".join(lines) + "\n")
    log.info("wrote %s", HERE / "PROFILE.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
