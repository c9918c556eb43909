"""results.json -> RESULTS.md (tables, targets) and results.png (the plot).

Everything above the END AUTO marker of an existing RESULTS.md is replaced;
hand-written analysis below it is kept.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

MARKER = "<!-- END AUTO -->"


def _n(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _row(core: dict[str, Any], key: str) -> dict[str, Any] | None:
    return core.get(key)


def verdict(ok: bool | None) -> str:
    """A target's cell: met, missed, or n/a when this run could not tell."""
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for the issue's targets, from this run alone."""
    core, ext = results["core"], results["extended"]
    rows: list[tuple[str, str, str]] = []

    for place in ("disk", "tmpfs"):
        kit, raw = _row(core, f"kit@{place}"), _row(core, f"raw@{place}")
        if kit and raw:
            ratio = kit["drain_per_s"] / raw["drain_per_s"]
            rows.append(
                (f"drain >= 0.5x raw @spool ({place})", f"{ratio:.2f}x", verdict(ratio >= 0.5))
            )
            pick = kit["pickup"]["p50_ms"] / raw["pickup"]["p50_ms"]
            rows.append(
                (f"idle pickup p50 <= 2x raw ({place})", f"{pick:.2f}x", verdict(pick <= 2))
            )
    kit = _row(core, "kit@disk")
    ours = {"kit", "kit-normal", "kit-pg", "kit-pg-3", "raw", "uwsgi-tasks"}  # kit, uWSGI floor
    peers = {k: v for k, v in core.items() if k.split("@")[0] not in ours}
    if kit and peers:
        best = max(peers.items(), key=lambda item: item[1]["drain_per_s"])
        rows.append(("drain ahead of every peer", f"kit {_n(kit['drain_per_s'])}/s vs best peer "
                     f"{best[0].split('@')[0]} {_n(best[1]['drain_per_s'])}/s",
                     verdict(kit["drain_per_s"] > best[1]["drain_per_s"])))  # fmt: skip
        fastest = min(peers.items(), key=lambda item: item[1]["pickup"]["p50_ms"])
        rows.append(("idle pickup p50 below every peer", f"kit {kit['pickup']['p50_ms']:.2f} ms vs best peer "
                     f"{fastest[0].split('@')[0]} {fastest[1]['pickup']['p50_ms']:.2f} ms",
                     verdict(kit["pickup"]["p50_ms"] < fastest[1]["pickup"]["p50_ms"])))  # fmt: skip
    rows += performance_ii(results, peers)
    kit_ext, raw_ext = ext.get("kit@disk"), ext.get("raw@disk")
    if kit_ext:
        tail = max(kit_ext["burst_tails_s"])
        rows.append(("last job of a busy burst starts within 50 ms", f"{tail * 1000:.0f} ms (max of "
                     f"{len(kit_ext['burst_tails_s'])} bursts)", verdict(tail <= 0.05)))  # fmt: skip
        if raw_ext and "http" in kit_ext and "http" in raw_ext:
            ratio = kit_ext["http"]["requests_per_s"] / raw_ext["http"]["requests_per_s"]
            rows.append(("HTTP enqueue >= 0.7x raw route", f"{ratio:.2f}x", verdict(ratio >= 0.7)))
        backlog = kit_ext.get("backlog", {})
        sizes = [k for k, v in backlog.items() if "drain_per_s" in v]
        if len(sizes) >= 2:
            small, large = backlog[sizes[0]]["drain_per_s"], backlog[sizes[-1]]["drain_per_s"]
            rows.append((f"drain with {int(sizes[-1]):,} backlog >= 0.8x with {int(sizes[0]):,}",
                         f"{large / small:.2f}x", verdict(large / small >= 0.8)))  # fmt: skip
        far = kit_ext.get("far", {})
        if "pickup" in far:
            rows.append((f"pickup p50 < 5 ms with {far['jobs']:,} jobs scheduled for tomorrow",
                         f"{far['pickup']['p50_ms']:.2f} ms", verdict(far["pickup"]["p50_ms"] < 5)))  # fmt: skip
        else:
            rows.append(("pickup p50 < 5 ms with jobs scheduled for tomorrow",
                         far.get("skipped", "not run"), verdict(None)))  # fmt: skip
        bulk = kit_ext.get("bulk")
        if bulk:
            rows.append((f"bulk enqueue (task.map, {bulk['batch']} per call) >= 10x one at a time",
                         f"{bulk['ratio']:.1f}x ({_n(bulk['batched']['per_s'])} against "
                         f"{_n(bulk['single']['per_s'])} jobs/s)", verdict(bulk["ratio"] >= 10)))  # fmt: skip
        rss = kit_ext.get("consumer_rss_mib", {})
        if rss.get("before") and rss.get("after"):
            growth = max(a - b for a, b in zip(rss["after"], rss["before"], strict=False))
            jobs = sum(int(k) for k, v in backlog.items() if "drain_per_s" in v)
            rows.append((f"spooler RSS growth < 10 MB over {jobs:,} jobs", f"{growth:+.1f} MiB",
                         verdict(growth < 10)))  # fmt: skip
    rows.append(("no missed wake-up with a producer in another instance",
                 "tests/test_e2e_modes.py: max pickup < 0.3 s (a tick is 1 s)", "met (tested, not benched)"))  # fmt: skip
    return rows


def performance_ii(
    results: dict[str, Any], peers: dict[str, dict[str, Any]]
) -> list[tuple[str, str, str]]:
    """The CPU, tmpfs-drain and fsync-floor targets of "Performance II" (issue 16)."""
    core, rows = results["core"], []

    kit, raw = core.get("kit@tmpfs"), core.get("raw@tmpfs")
    if kit and raw:
        ours, theirs = (d["cpu_ms_consumers"] + d["cpu_ms_producer"] for d in (kit, raw))
        if theirs > 0:
            measured = f"{ours / theirs:.1f}x ({ours:.3f} vs {theirs:.3f} ms)"
        else:  # a small N (--quick) can leave raw under one 10 ms clock tick in all
            measured = f"{ours:.3f} ms vs raw below the clock tick at N={raw['n']}"
        rows.append(("CPU per job, spoolers + producer, <= 3x raw (tmpfs)", measured,
                     verdict(ours <= 3 * theirs if theirs > 0 else None)))  # fmt: skip
        ratio = kit["drain_per_s"] / raw["drain_per_s"]
        rows.append(("drain >= 0.35x raw (tmpfs)", f"{ratio:.2f}x ({_n(kit['drain_per_s'])} vs "
                     f"{_n(raw['drain_per_s'])}/s)", verdict(ratio >= 0.35)))  # fmt: skip
        if peers:
            name, best = max(peers.items(), key=lambda item: item[1]["drain_per_s"])
            rows.append(("drain on tmpfs ahead of every peer",
                         f"kit {_n(kit['drain_per_s'])}/s vs best peer {name.split('@')[0]} "
                         f"{_n(best['drain_per_s'])}/s",
                         verdict(kit["drain_per_s"] > best["drain_per_s"])))  # fmt: skip
    probe, on_disk = results.get("fsync_probe", {}).get("before"), core.get("kit@disk")
    if probe and on_disk:
        ratio = on_disk["enqueue_per_s"] / probe["per_s"]
        rows.append(("enqueue on disk (SYNC=full) >= 0.8x the disk's fdatasync rate",
                     f"{ratio:.2f}x ({_n(on_disk['enqueue_per_s'])} jobs/s vs "
                     f"{_n(probe['per_s'])} write+fdatasync/s)", verdict(ratio >= 0.8)))  # fmt: skip
    return rows


def _cpu(data: dict[str, Any]) -> str:
    text = f"{data['cpu_ms_consumers']:.3f} + {data['cpu_ms_producer']:.3f}"
    if data.get("cpu_ms_other") is not None:
        text += f" + {data['cpu_ms_other']:.3f} other"
    if data.get("cpu_ms_server") is not None:
        text += f" + {data['cpu_ms_server']:.3f} server"
    return text


def _kit_cpu(data: dict[str, Any]) -> float:
    """CPU per job in the system's own processes: consumers, producer and the rest of
    its uWSGI instances (master, the kit's mule); results older than that figure lack it."""
    return float(
        data["cpu_ms_consumers"] + data["cpu_ms_producer"] + (data.get("cpu_ms_other") or 0)
    )


def _total_cpu(data: dict[str, Any]) -> float:
    return _kit_cpu(data) + float(data.get("cpu_ms_server") or 0)


def _fsync_probe(results: dict[str, Any]) -> list[str]:
    probe = results.get("fsync_probe")
    if not probe:
        return []
    figures = " and ".join(f"{_n(probe[when]['per_s'])}/s {when} the systems ran"
                           for when in ("before", "after") if when in probe)  # fmt: skip
    first = next(iter(probe.values()))
    return [f"The disk's own flush rate (bench/common.py `fsync_probe`: a {first['block']}-byte "
            f"write and `fdatasync`, nothing else, on {first['filesystem']}): {figures}.", ""]


def _postgres_setup(results: dict[str, Any]) -> list[str]:
    pg = results.get("postgres")
    if not pg:
        return []
    return [
        f"PostgreSQL store (`kit-pg`, `kit-pg-3`): PostgreSQL {pg['server_version']}, started and stopped by "
        f"the bench, data directory on `disk` ({pg['filesystem']}, the SQLite kit's disk), "
        f"fsync={pg['fsync']}, synchronous_commit={pg['synchronous_commit']}, "
        f"full_page_writes={pg['full_page_writes']}, wal_sync_method={pg['wal_sync_method']}, "
        f"shared_buffers={pg['shared_buffers']} (PostgreSQL's defaults), over a "
        f"{pg['connection']}; a fresh database for each start of the kit.",
        "",
    ]


def _verdict(figures: list[tuple[str, float, bool]]) -> str:
    """What PostgreSQL costs and buys on one machine, from (figure, PostgreSQL / SQLite,
    more is better); within 5 % counts as even (one run's noise is larger than that)."""
    worse = [f"{name} ({ratio:.2f}x)" for name, ratio, more_is_better in figures
             if (ratio < 0.95 if more_is_better else ratio > 1.05)]  # fmt: skip
    better = [f"{name} ({ratio:.2f}x)" for name, ratio, more_is_better in figures
              if (ratio > 1.05 if more_is_better else ratio < 0.95)]  # fmt: skip
    text = "So on one machine PostgreSQL "
    if worse:
        text += "costs " + ", ".join(worse) + ("; it gains " + ", ".join(better) if better else "")
    elif better:
        text += "gains " + ", ".join(better)
    else:
        text += "and SQLite are within 5 % of each other on these figures"
    return (
        text + ". What it is for is the store in a server the site already runs, backs up and "
        "watches, writers side by side instead of SQLite's one at a time, and the store on "
        'another machine than the spool disk (README, "The PostgreSQL store"); a server on '
        "another machine adds a network round trip to each statement, which this run does "
        "not measure."
    )


def postgres_vs_sqlite(results: dict[str, Any]) -> list[str]:
    """The kit on PostgreSQL against the kit on SQLite, same run, same disk: a table and
    what it says, every figure from this run."""
    core, ext = results["core"], results["extended"]
    sqlite, pg = core.get("kit@disk"), core.get("kit-pg@disk")
    if not (sqlite and pg):
        return []
    cores = results["machine"]["cores"]
    rows: list[tuple[str, str, str, str]] = []

    def add(what: str, a: float, b: float, digits: int = 0) -> None:
        rows.append((what, _n(a, digits), _n(b, digits), f"{b / a:.2f}x" if a else "-"))

    add("enqueue, jobs/s (a loop in the web worker)", sqlite["enqueue_per_s"], pg["enqueue_per_s"])
    add("drain, jobs/s", sqlite["drain_per_s"], pg["drain_per_s"])
    add("idle pickup p50, ms", sqlite["pickup"]["p50_ms"], pg["pickup"]["p50_ms"], 2)
    add("idle pickup p99, ms", sqlite["pickup"]["p99_ms"], pg["pickup"]["p99_ms"], 2)
    add("CPU ms/job in the kit's processes (spoolers, web worker, master, mule)",
        _kit_cpu(sqlite), _kit_cpu(pg), 3)  # fmt: skip
    add("CPU ms/job in all (+ the PostgreSQL server)", _total_cpu(sqlite), _total_cpu(pg), 3)
    http_sqlite = ext.get("kit@disk", {}).get("http")
    http_pg = ext.get("kit-pg@disk", {}).get("http")
    if http_sqlite and http_pg:
        add(
            "HTTP POST /jobs -> 202, req/s",
            http_sqlite["requests_per_s"],
            http_pg["requests_per_s"],
        )
    backlog_sqlite = ext.get("kit@disk", {}).get("backlog", {})
    backlog_pg = ext.get("kit-pg@disk", {}).get("backlog", {})
    for size, data in backlog_pg.items():
        if "drain_per_s" in data and "drain_per_s" in backlog_sqlite.get(size, {}):
            add(f"drain of a {int(size):,} backlog, jobs/s", backlog_sqlite[size]["drain_per_s"],
                data["drain_per_s"])  # fmt: skip

    drain = pg["drain_per_s"] / sqlite["drain_per_s"]
    enqueue = pg["enqueue_per_s"] / sqlite["enqueue_per_s"]
    pickup = pg["pickup"]["p50_ms"] - sqlite["pickup"]["p50_ms"]
    cpu = _total_cpu(pg) / _total_cpu(sqlite)
    server = pg.get("cpu_ms_server") or 0.0
    bound = cores * 1000 / _total_cpu(pg)
    said = [
        f"With both stores on this disk and on one machine of {cores} cores, the kit on "
        f"PostgreSQL drains at {drain:.2f}x the rate it reaches on SQLite ({_n(pg['drain_per_s'])} "
        f"against {_n(sqlite['drain_per_s'])} jobs/s), its producer enqueues at {enqueue:.2f}x, "
        f"and an idle job starts {abs(pickup):.2f} ms {'later' if pickup >= 0 else 'sooner'} (p50).",
        f"Each job costs {_n(_total_cpu(pg), 3)} ms of CPU in all on PostgreSQL against "
        f"{_n(_total_cpu(sqlite), 3)} ms on SQLite ({cpu:.2f}x), {_n(server, 3)} ms of it in "
        "the server's processes: every statement is a round trip over the socket to a "
        "backend process, where SQLite runs it inside the kit's own. "
        f"{cores} cores / {_n(_total_cpu(pg), 3)} ms is about {_n(bound)} jobs/s, the ceiling "
        "of the PostgreSQL drain here, where the kit, its spoolers and the server share the "
        "cores.",
    ]
    figures = [("drain rate", drain, True), ("enqueue rate", enqueue, True),
               ("idle pickup p50", pg["pickup"]["p50_ms"] / sqlite["pickup"]["p50_ms"], False),
               ("CPU per job", cpu, False)]  # fmt: skip
    if http_sqlite and http_pg:
        ratio = http_pg["requests_per_s"] / http_sqlite["requests_per_s"]
        figures.append(("HTTP enqueue", ratio, True))
        said.append(
            f"Over HTTP (`POST /jobs`, 32 connections, the spoolers draining meanwhile) the "
            f"kit on PostgreSQL answers {ratio:.2f}x the requests per second."
        )
    said.append(_verdict(figures))
    return [
        "",
        "## The PostgreSQL store against SQLite (one machine, disk)",
        "",
        "| | SQLite (kit) | PostgreSQL (kit-pg) | PostgreSQL / SQLite |",
        "|---|---|---|---|",
        *[f"| {what} | {a} | {b} | {ratio} |" for what, a, b, ratio in rows],
        "",
        " ".join(said),
    ]


def nodes_vs_one(results: dict[str, Any]) -> list[str]:
    """The kit on PostgreSQL with three spooler nodes against one node, same run, same
    machine: what coordinating the nodes costs (they share the cores, so no scale-out)."""
    core, ext = results["core"], results["extended"]
    one, three = core.get("kit-pg@disk"), core.get("kit-pg-3@disk")
    if not (one and three):
        return []
    cores = results["machine"]["cores"]
    rows: list[tuple[str, str, str, str]] = []

    def add(what: str, a: float | None, b: float | None, digits: int = 0) -> None:
        ratio = f"{b / a:.2f}x" if a and b is not None else "-"
        rows.append((what, _n(a, digits), _n(b, digits), ratio))

    add("enqueue, jobs/s (a loop in one node's web worker)", one["enqueue_per_s"],
        three["enqueue_per_s"])  # fmt: skip
    add("drain, jobs/s", one["drain_per_s"], three["drain_per_s"])
    add("idle pickup p50, ms", one["pickup"]["p50_ms"], three["pickup"]["p50_ms"], 2)
    add("idle pickup p99, ms", one["pickup"]["p99_ms"], three["pickup"]["p99_ms"], 2)
    add("CPU ms/job, spoolers", one["cpu_ms_consumers"], three["cpu_ms_consumers"], 3)
    add("CPU ms/job, masters and mules (the mules claim the jobs)", one.get("cpu_ms_other"),
        three.get("cpu_ms_other"), 3)  # fmt: skip
    add("CPU ms/job, PostgreSQL server", one.get("cpu_ms_server"), three.get("cpu_ms_server"), 3)
    add("CPU ms/job in all (+ web workers)", _total_cpu(one), _total_cpu(three), 3)
    one_ext, three_ext = ext.get("kit-pg@disk", {}), ext.get("kit-pg-3@disk", {})
    if one_ext.get("http") and three_ext.get("http"):
        add("HTTP POST /jobs -> 202 to one node, req/s", one_ext["http"]["requests_per_s"],
            three_ext["http"]["requests_per_s"])  # fmt: skip
    for size, data in three_ext.get("backlog", {}).items():
        if "drain_per_s" in data and "drain_per_s" in one_ext.get("backlog", {}).get(size, {}):
            add(f"drain of a {int(size):,} backlog, jobs/s",
                one_ext["backlog"][size]["drain_per_s"], data["drain_per_s"])  # fmt: skip

    drain = three["drain_per_s"] / one["drain_per_s"]
    cpu = _total_cpu(three) / _total_cpu(one)
    shapes = results.get("shapes", {})
    shape_one = shapes.get("kit-pg", {"nodes": 1, "spoolers_per_node": 2})
    shape = shapes.get("kit-pg-3", {"nodes": 3, "spoolers_per_node": 2})
    per_node, total = shape["spoolers_per_node"], shape["nodes"] * shape["spoolers_per_node"]
    said = [
        f"Three spooler nodes (three uWSGI instances of {per_node} spoolers each, {total} "
        f"spoolers in all against {shape_one['nodes'] * shape_one['spoolers_per_node']}) on "
        f"one PostgreSQL drain at {drain:.2f}x the rate of one node "
        f"({_n(three['drain_per_s'])} against {_n(one['drain_per_s'])} jobs/s) and spend "
        f"{cpu:.2f}x the CPU per job ({_n(_total_cpu(three), 3)} against "
        f"{_n(_total_cpu(one), 3)} ms).",
        f"All three nodes run on this one machine's {cores} cores, so the row shows what "
        "coordinating them costs (every job parked, then claimed by a node: by its mule when "
        "notified of a new job, which wakes each node's mule, or by a spooler that just "
        "finished one), not what nodes on machines of their own would add.",
    ]
    return [
        "",
        "## Three spooler nodes against one (PostgreSQL, one machine, disk)",
        "",
        "| | 1 node (kit-pg) | 3 nodes (kit-pg-3) | 3 / 1 |",
        "|---|---|---|---|",
        *[f"| {what} | {a} | {b} | {ratio} |" for what, a, b, ratio in rows],
        "",
        " ".join(said),
    ]


def bulk_vs_single(results: dict[str, Any]) -> list[str]:
    """The kit's bulk enqueue against one job at a time, per kit system, same instance."""
    rows = []
    for key, data in results["extended"].items():
        bulk = data.get("bulk")
        if not bulk:
            continue
        system, fs = key.split("@")
        rows.append(f"| {results['labels'].get(system, system)} | {fs} | "
                    f"{_n(bulk['single']['per_s'])} ({bulk['single']['cpu_ms_per_job']:.3f}) | "
                    f"{_n(bulk['batched']['per_s'])} ({bulk['batched']['cpu_ms_per_job']:.3f}) | "
                    f"{bulk['ratio']:.1f}x |")  # fmt: skip
    if not rows:
        return []
    n = next(d["bulk"]["n"] for d in results["extended"].values() if d.get("bulk"))
    batch = next(d["bulk"]["batch"] for d in results["extended"].values() if d.get("bulk"))
    return [
        "",
        f"## Bulk enqueue: {n:,} jobs one delay() at a time, then {batch} per task.map()",
        "",
        "| system | fs | one at a time, jobs/s (producer CPU ms/job) | batched, jobs/s "
        "(producer CPU ms/job) | batched / one |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Each batch is one transaction and one fsync (SQLite FULL, or PostgreSQL's WAL "
        "flush) and writes no spool file: its jobs are parked, and the housekeeping mule "
        "spools them (one host) or the nodes claim them (PostgreSQL), off the request. The "
        "loop runs in a web worker while the spoolers drain; each step is drained before the "
        "next.",
    ]


def markdown(results: dict[str, Any]) -> str:
    core, ext = results["core"], results["extended"]
    machine, fs = results["machine"], results["filesystems"]
    lines = [
        "# Benchmark: spoolkit against the raw spooler and the peers",
        "",
        f"Generated by `make bench{' --quick' if results['quick'] else ''}` "
        f"(`python -m bench.run`) on {results['started']}, one run, {results['seconds']} s in all"
        + (" (**--quick**: small N, figures are noisy)" if results["quick"] else "") + ".",
        "",
        f"Machine: {machine['cores']} cores ({machine['cpu']}), {machine['memory_gib']} GiB, kernel "
        f"{machine['kernel']}, Python {machine['python']}. Spool directories and stores: "
        f"`disk` = {fs.get('disk') or '?'}, `tmpfs` = {fs.get('tmpfs') or '?'}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
        "",
        *_postgres_setup(results),
        *_fsync_probe(results),
        "Every system: 2 consumer processes with concurrency 1, a no-op task whose first statement "
        "writes 16 bytes (job number, start time) to a record file, one producer (for uWSGI systems "
        "a loop in the single web worker, else a loop in the bench process). Method: bench/README.md.",
        "",
        "## Main table",
        "",
        "| system | fs | N | enqueue jobs/s | drain jobs/s | pickup p50 / p99 ms | CPU ms/job consumers + producer (+ other + store server) | promises |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row, data in core.items():
        key, place = row.split("@")
        lines.append(
            f"| {results['labels'].get(key, key)} | {place} | {data['n']:,} | {_n(data['enqueue_per_s'])} | "
            f"{_n(data['drain_per_s'])} | {data['pickup']['p50_ms']:.2f} / {data['pickup']['p99_ms']:.2f} | "
            f"{_cpu(data)} | {results['promises'].get(key, '')} |"
        )  # fmt: skip
    lines += ["", "enqueue and drain: median of the trials; drain = N / (last job start - first enqueue), "
              "consumers running while the producer enqueues. Other: the rest of the uWSGI "
              "instances (every node's master, the kit's housekeeping mule, which on PostgreSQL "
              "claims each job for its node's spoolers, and the idle spoolers of the kit's slow "
              "queue). Store server: the CPU of PostgreSQL's processes (kit-pg, kit-pg-3) or "
              "redis-server (the Redis peers) over the same trial.",
              *postgres_vs_sqlite(results), *nodes_vs_one(results), *bulk_vs_single(results),
              "", "## Targets (this run)", "",
              "| target | measured | |", "|---|---|---|"]  # fmt: skip
    lines += [
        f"| {target} | {measured} | {verdict} |" for target, measured, verdict in targets(results)
    ]
    lines += ["", "## Burst tail, HTTP enqueue, scale, memory (disk)", "",
              "| system | burst tails s | HTTP POST -> 202 req/s (p50, p99) | drain/s with backlog | "
              "100k for tomorrow: enqueue/s, pickup p50/p99 ms, drain/s of a backlog beside | consumer RSS MiB before -> after |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for row, data in ext.items():
        key = row.split("@")[0]
        http = data.get("http")
        http_text = f"{_n(http['requests_per_s'])} ({http['p50']}, {http['p99']})" if http else "-"
        backlog = ", ".join(
            f"{int(n):,}: " + (_n(v["drain_per_s"]) if "drain_per_s" in v else v["skipped"])
            for n, v in data.get("backlog", {}).items()
        )
        far = data.get("far", {})
        if "pickup" in far:
            far_text = (f"{_n(far['enqueue_per_s'])}/s, {far['pickup']['p50_ms']:.2f} / "
                        f"{far['pickup']['p99_ms']:.2f}, {_n(far['backlog']['drain_per_s'])}/s")  # fmt: skip
        else:
            far_text = far.get("skipped", "-")
        rss = data.get("consumer_rss_mib", {})
        rss_text = f"{rss.get('before')} -> {rss.get('after')}" if rss else "-"
        tails = ", ".join(f"{t:.3f}" for t in data.get("burst_tails_s", []))
        lines.append(
            f"| {results['labels'].get(key, key)} | {tails} | {http_text} | {backlog} | {far_text} | {rss_text} |"
        )
    lines += ["", "Burst tail: 200 jobs of 5 ms, 2.5 ms apart (both consumers busy); tail = last job start - "
              "last enqueue. Backlog: N jobs queued while the consumers are stopped (SIGSTOP), drain timed "
              "from their release. A step expected to take longer than its budget is skipped and says so."]  # fmt: skip
    if results.get("web_load"):
        lines += ["", "## Drain under web load (disk)", "",
                  "| system | spooler nice | drain/s, web idle | drain/s, web workers busy | busy / idle |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for row, data in results["web_load"].items():
            nice = ", ".join(str(v) for v in data["spooler_nice"])
            lines.append(
                f"| {row} | {nice} | {_n(data['idle']['drain_per_s'])} | "
                f"{_n(data['loaded']['drain_per_s'])} | {data['ratio']:.2f} |"
            )
        lines += ["", "2 web workers and 2 spoolers on 2 cores. A backlog of "
                  f"{next(iter(results['web_load'].values()))['idle']['of']:,} jobs is released once with "
                  "the web workers idle, once while wrk keeps them busy with requests that take 5 ms of "
                  "CPU each (4 connections); drain = jobs started in the window / the window."]  # fmt: skip
    if results.get("errors"):
        lines += ["", "## Steps that failed", "",
                  "A peer's failed step is recorded here and the run goes on; its figures are absent above.", ""]  # fmt: skip
        lines += [f"- {step}: `{error}`" for step, error in results["errors"].items()]
    lines += ["", "![drain and pickup](results.png)", "", MARKER]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(results["core"].items())
    names = [f"{results['labels'].get(r.split('@')[0], r)}\n({r.split('@')[1]})" for r, _ in rows]
    drains = [d["drain_per_s"] for _, d in rows]
    pickups = [d["pickup"]["p50_ms"] for _, d in rows]
    colors = ["#2b6cb0" if r.startswith("kit") else "#a0aec0" for r, _ in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 0.5 * len(rows) + 2))
    left.barh(names, drains, color=colors)
    left.set_xscale("log")
    left.set_xlabel("drain, jobs/s (log scale; more is better)")
    right.barh(names, pickups, color=colors)
    right.set_xscale("log")
    right.set_xlabel("idle pickup p50, ms (log scale; less is better)")
    right.set_yticklabels([])
    for axis in (left, right):
        axis.invert_yaxis()
        axis.grid(axis="x", alpha=0.3)
    fig.suptitle("spoolkit vs raw uWSGI spooler vs peers (one run, same machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(results: dict[str, Any], out_dir: Path) -> None:
    target = out_dir / "RESULTS.md"
    kept = ""
    if target.exists() and MARKER in target.read_text():
        kept = target.read_text().split(MARKER, 1)[1].lstrip("\n")
    target.write_text(markdown(results) + ("\n" + kept if kept else ""))
    plot(results, out_dir / "results.png")


if __name__ == "__main__":
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
    render(json.loads((directory / "results.json").read_text()), directory)
