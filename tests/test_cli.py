"""``flask spoolkit ...``: the duration parser, each command against a real SQLite store
(the app outside uWSGI, as the CLI runs), and ``tail``/``stats`` beside a real server."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import Result
from flask import Flask

from bench.common import wait_for
from spoolkit import cli, periodic
from spoolkit.cli import ChangeFeed, change_line, parse_duration
from spoolkit.encoding import encode_arguments
from spoolkit.job import Job, JobError, Progress, new_job_id
from spoolkit.recurrence import Schedules
from spoolkit.registry import default_registry
from spoolkit.service import JobService
from spoolkit.sqlite import SQLiteStore
from spoolkit.states import JobState
from spoolkit.store import HOUSEKEEPER_BEAT, NewJob

from .standin import insert_job
from .support import REPO, UwsgiServer, make_app

RUNNER = "host:1:50:0"
PID = 77
DAY = 86400.0


# -- parse_duration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0), ("45", 45.0), ("2.5", 2.5), ("45s", 45.0), ("90m", 5400.0),
        ("12h", 43200.0), ("30d", 30 * DAY), ("2w", 14 * DAY), ("1h30m", 5400.0),
        ("1d12h", 1.5 * DAY), ("1w2d3h4m5s", 9 * DAY + 3 * 3600 + 4 * 60 + 5),
        (" 1.5h ", 5400.0), ("0s", 0.0),
    ],
)  # fmt: skip
def test_parse_duration_reads_seconds_and_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", " ", "h", "-5", "-1h", "5x", "30m1h", "1h1h", "1 h", "1h 30m", "1.h", ".5h", "1e3",
     "inf", "nan", "5M", "1h30", "d1"],
)  # fmt: skip
def test_parse_duration_refuses_what_it_cannot_read_and_says_what_it_can(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration: use seconds \(600\) or .* 1h30m"):
        parse_duration(text)


def test_parse_duration_refuses_a_duration_past_any_float() -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_duration("9" * 400)


# -- helpers ----------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    """The app as the CLI sees it outside uWSGI: local mode, on a store in ``tmp_path``."""
    return make_app(tmp_path)


def _service(app: Flask) -> JobService:
    service = app.extensions["spoolkit"]
    assert isinstance(service, JobService)
    return service


def _store(app: Flask) -> SQLiteStore:
    store = _service(app).store
    assert isinstance(store, SQLiteStore)
    return store


def _run(app: Flask, *args: str, stdin: str | None = None) -> Result:
    return app.test_cli_runner().invoke(args=["spoolkit", *args], input=stdin)


def _job(
    store: SQLiteStore,
    state: JobState,
    at: float,
    task: str = "tests.jobs.add",
    args: tuple[Any, ...] = (2, 3),
) -> str:
    """A job brought to ``state`` at time ``at`` through the store, as a runner would;
    its delivery is no file, so nothing here picks it up."""
    job = insert_job(store, task, args, created_at=at - 1, max_attempts=1)
    if state is JobState.QUEUED:
        return job.id
    if state is JobState.CANCELLED:
        store.cancel(job.id, at)
        return job.id
    store.claim(job.id, "delivery-1", RUNNER, PID, at - 0.5, lambda pid: True)
    if state is JobState.SUCCEEDED:
        assert store.finish(job.id, PID, at, result="5")
    elif state is JobState.FAILED:
        assert store.finish(job.id, PID, at, error=JobError("ValueError", "boom"))
    return job.id


def _finished(store: SQLiteStore, job_id: str) -> Job | None:
    job = store.get(job_id)
    return job if job is not None and job.is_finished else None


def _state(store: SQLiteStore, job_id: str) -> JobState | None:
    job = store.get(job_id)
    return None if job is None else job.state


# -- retry, abort -------------------------------------------------------------------


def test_retry_queues_a_failed_job_again_for_the_server(app: Flask) -> None:
    store = _store(app)
    job_id = _job(store, JobState.FAILED, time.time())
    result = _run(app, "retry", job_id)
    assert result.exit_code == 0, result.output
    assert result.output == f"{job_id} queued\n"
    # Queued with a fresh budget, for the server: the command's own process (about to
    # exit) runs nothing; its delivery names it, so the housekeeper spools it once gone.
    job = store.get(job_id)
    assert job is not None and (job.state, job.attempts) == (JobState.QUEUED, 0)
    assert job.spool_file is not None and job.spool_file.startswith("local:")
    runner = app.extensions["spoolkit"].runner
    assert not runner._threads, "the command's process started a thread to run jobs"


def test_retry_refuses_an_unknown_or_unfinished_job_with_the_reason(app: Flask) -> None:
    missing = _run(app, "retry", "no-such-job")
    assert missing.exit_code == 1
    assert "Error: no job 'no-such-job'" in missing.output
    queued = _job(_store(app), JobState.QUEUED, time.time())
    refused = _run(app, "retry", queued)
    assert refused.exit_code == 1
    assert f"Error: job {queued} is queued" in refused.output
    assert _state(_store(app), queued) is JobState.QUEUED


def test_abort_cancels_a_waiting_job_and_asks_a_running_one_to_stop(app: Flask) -> None:
    store, now = _store(app), time.time()
    waiting, running = _job(store, JobState.QUEUED, now), _job(store, JobState.RUNNING, now)
    cancelled = _run(app, "abort", waiting)
    assert (cancelled.exit_code, cancelled.output) == (0, f"{waiting} cancelled\n")
    assert _state(store, waiting) is JobState.CANCELLED
    stopping = _run(app, "abort", running)
    assert stopping.exit_code == 0, stopping.output
    assert stopping.output == f"{running} running: stop requested (ends cancelled)\n"
    row = store.get(running)
    assert row is not None and row.state is JobState.RUNNING and row.abort_requested


def test_abort_refuses_a_finished_or_unknown_job(app: Flask) -> None:
    done = _job(_store(app), JobState.SUCCEEDED, time.time())
    refused = _run(app, "abort", done)
    assert refused.exit_code == 1
    assert "only queued, scheduled or running jobs can be aborted" in refused.output
    assert _run(app, "abort", "nope").exit_code == 1


@pytest.mark.parametrize("prefix", ["-", "--", "-h"])
def test_commands_taking_an_id_accept_one_that_looks_like_an_option(
    app: Flask, prefix: str
) -> None:
    # One job id in 64 starts with "-" (secrets.token_urlsafe).
    store, now = _store(app), time.time()
    job_id = insert_job(store, "tests.jobs.add", (2, 3), created_at=now,
                        job_id=prefix + "x" * (22 - len(prefix))).id  # fmt: skip
    shown = _run(app, "show", job_id)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["id"] == job_id
    assert _run(app, "cancel", job_id).output == f"{job_id} cancelled\n"
    retried = _run(app, "retry", job_id)
    assert retried.output == f"{job_id} queued\n", retried.output
    aborted = _run(app, "abort", job_id)  # queued again, for the server: cancelled
    assert aborted.exit_code == 0 and aborted.output == f"{job_id} cancelled\n", aborted.output
    refused = _run(app, "abort", job_id)
    assert refused.exit_code == 1 and "can be aborted" in refused.output
    assert _run(app, "show", "--help").output.startswith("Usage:")


# -- purge ------------------------------------------------------------------------------


@pytest.fixture
def aged(app: Flask) -> dict[str, str]:
    """Jobs finished 40 days ago, finished just now, and one still waiting."""
    store, now = _store(app), time.time()
    return {
        "old_ok": _job(store, JobState.SUCCEEDED, now - 40 * DAY),
        "old_failed": _job(store, JobState.FAILED, now - 40 * DAY),
        "old_cancelled": _job(store, JobState.CANCELLED, now - 40 * DAY),
        "new_ok": _job(store, JobState.SUCCEEDED, now - 60),
        "new_failed": _job(store, JobState.FAILED, now - 60),
        "waiting": _job(store, JobState.QUEUED, now - 40 * DAY),
    }


def _left(app: Flask, jobs: dict[str, str]) -> set[str]:
    return {name for name, job_id in jobs.items() if _store(app).get(job_id) is not None}


def test_purge_older_than_deletes_only_jobs_finished_before_then(
    app: Flask, aged: dict[str, str]
) -> None:
    result = _run(app, "purge", "--older-than", "30d", "--yes")
    assert (result.exit_code, result.output) == (0, "deleted 3 jobs\n")
    assert _left(app, aged) == {"new_ok", "new_failed", "waiting"}


def test_purge_by_state_and_by_default_every_finished_job(
    app: Flask, aged: dict[str, str]
) -> None:
    result = _run(app, "purge", "--state", "failed", "--yes")
    assert (result.exit_code, result.output) == (0, "deleted 2 jobs\n")
    assert _left(app, aged) == {"old_ok", "old_cancelled", "new_ok", "waiting"}
    everything = _run(app, "purge", "--yes")
    assert everything.output == "deleted 3 jobs\n"
    assert _left(app, aged) == {"waiting"}


def test_purge_asks_first_showing_what_it_would_delete(app: Flask, aged: dict[str, str]) -> None:
    declined = _run(app, "purge", "--older-than", "1h30m", "--state", "succeeded",
                    "--state", "cancelled", stdin="n\n")  # fmt: skip
    assert declined.exit_code == 1
    assert "Delete 2 jobs (1 succeeded, 1 cancelled) finished before 20" in declined.output
    assert "Aborted" in declined.output
    assert len(_left(app, aged)) == 6
    accepted = _run(app, "purge", "--older-than", "1h30m", stdin="y\n")
    assert "Delete 3 jobs (1 succeeded, 1 failed, 1 cancelled)" in accepted.output
    assert accepted.output.endswith("deleted 3 jobs\n")
    assert _left(app, aged) == {"new_ok", "new_failed", "waiting"}
    nothing = _run(app, "purge", "--older-than", "2w")  # no prompt: nothing to ask about
    assert nothing.exit_code == 0
    assert nothing.output.startswith("nothing to purge: no succeeded/failed/cancelled job")


def test_purge_refuses_a_bad_duration_or_state_as_a_usage_error(
    app: Flask, aged: dict[str, str]
) -> None:
    bad = _run(app, "purge", "--older-than", "30 days", "--yes")
    assert bad.exit_code == 2
    assert "Invalid value for '--older-than'" in bad.output
    assert "'30 days' is not a duration" in bad.output
    assert _run(app, "purge", "--state", "queued", "--yes").exit_code == 2
    assert len(_left(app, aged)) == 6


# -- stats and the --json listings --------------------------------------------------------


def test_stats_shows_states_queues_finished_and_what_the_housekeeper_recorded(
    app: Flask,
) -> None:
    store, now = _store(app), time.time()
    _job(store, JobState.SUCCEEDED, now - 60)
    _job(store, JobState.FAILED, now - 600)
    _job(store, JobState.FAILED, now - 2 * 3600)
    _job(store, JobState.QUEUED, now - 30)
    store.insert(NewJob(id=new_job_id(), task="tests.jobs.slow_sleeper", queue="slow",
                        payload=encode_arguments("tests.jobs.slow_sleeper", ("x", 0), {}),
                        max_attempts=1, backoff=0, priority=None, created_at=now, run_at=None,
                        spool_file="delivery-1"))  # fmt: skip
    before = json.loads(_run(app, "stats", "--json").output)
    assert before["spoolers"] == {"alive": None, "configured": None}
    assert before["housekeeper"] is None
    # What a server's housekeeper on the same store records each pass.
    store.set_meta(HOUSEKEEPER_BEAT, str(now - 2))
    store.beat("server", "host-1", json.dumps({"queues": {"default": 2, "slow": 1},
               "spoolers": {"alive": 3, "configured": 4}}), now - 2)  # fmt: skip
    result = _run(app, "stats", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["states"] == {"queued": 2, "scheduled": 0, "running": 0, "succeeded": 1,
                               "failed": 2, "cancelled": 0}  # fmt: skip
    assert shown["finished"]["5m"] == {"succeeded": 1, "failed": 0, "cancelled": 0}
    assert shown["finished"]["60m"] == {"succeeded": 1, "failed": 1, "cancelled": 0}
    assert shown["spoolers"] == {"alive": 3, "configured": 4}
    assert 2 <= shown["housekeeper"]["last_run_age"] < 10
    default, slow = shown["queues"]["default"], shown["queues"]["slow"]
    assert default["states"]["failed"] == 2 and default["ready"] == 1
    assert 30 <= default["oldest_ready_age"] < 40
    assert (slow["ready"], slow["spoolers_alive"], slow["states"]["queued"]) == (1, 1, 1)

    text = _run(app, "stats").output.splitlines()
    assert text[0].split() == ["jobs", "queued", "2", "scheduled", "0", "running", "0",
                               "succeeded", "1", "failed", "2", "cancelled", "0"]  # fmt: skip
    assert text[1] == "spoolers     3 alive of 4 configured"
    assert "last 5 min: succeeded 1  failed 0  cancelled 0" in text[2]
    assert text[4].startswith("housekeeper  last pass ")
    assert text[6].split()[:4] == ["queue", "queued", "scheduled", "running"]
    row = text[7].split()
    assert row[:8] == ["default", "1", "0", "0", "1", "2", "0", "1"]
    # Ages from two runs a moment apart: the same within a second.
    assert abs(float(row[8].removesuffix("s")) - default["oldest_ready_age"]) < 1
    assert row[9] == "2"
    assert text[8].split()[0] == "slow" and text[8].split()[-1] == "1"


def test_jobs_json_lists_jobs_newest_first_without_results(app: Flask) -> None:
    store, now = _store(app), time.time()
    first = _job(store, JobState.SUCCEEDED, now - 10)
    second = _job(store, JobState.FAILED, now)
    listed = json.loads(_run(app, "jobs", "--json").output)
    assert [job["id"] for job in listed] == [second, first]
    assert listed[1]["state"] == "succeeded" and "result" not in listed[1]
    assert listed[0]["error"]["message"] == "boom"
    only = json.loads(_run(app, "jobs", "--json", "--state", "failed").output)
    assert [job["id"] for job in only] == [second]
    assert json.loads(_run(app, "jobs", "--json", "--task", "tests.jobs.echo").output) == []


def test_tasks_and_queues_json(app: Flask) -> None:
    tasks = {task["name"]: task for task in json.loads(_run(app, "tasks", "--json").output)}
    assert tasks["tests.jobs.add"] == {"name": "tests.jobs.add", "queue": None,
                                       "max_attempts": 3, "timeout": None}  # fmt: skip
    assert tasks["tests.jobs.slow_sleeper"]["queue"] == "slow"
    assert tasks["tests.jobs.overruns"]["timeout"] == 0.5
    assert _run(app, "tasks").output.splitlines() == sorted(tasks)
    insert_job(_store(app), "tests.jobs.add", (1, 1), created_at=time.time())
    queues = json.loads(_run(app, "queues", "--json").output)
    assert queues["default"]["ready"] == 1 and queues["default"]["spoolers_alive"] is None


def test_periodic_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default_registry, "schedules", Schedules())
    periodic("tests.jobs.add", every=30, args=[1, 2], name="adder")
    app = make_app(tmp_path)
    result = _run(app, "periodic", "--json")
    assert result.exit_code == 0, result.output
    (adder,) = json.loads(result.output)
    assert adder["name"] == "adder" and adder["task"] == "tests.jobs.add"
    assert adder["expression"] == "every 30 s" and adder["last_job"] is None
    assert adder["next_run"].endswith("Z")


# -- tail ----------------------------------------------------------------------------------


def _claim_at(store: SQLiteStore, job_id: str, at: float) -> None:
    store.claim(job_id, "delivery-1", RUNNER, PID, at, lambda pid: True)


def test_change_feed_shows_each_change_once_even_when_committed_late(app: Flask) -> None:
    store = _store(app)
    early = insert_job(store, "tests.jobs.add", (1, 1), created_at=100.0).id
    a = insert_job(store, "tests.jobs.add", (1, 1), created_at=200.0).id
    b = insert_job(store, "tests.jobs.add", (1, 1), created_at=200.0).id
    feed = ChangeFeed(store, start=150.0, margin=5.0)
    assert [(j.id, j.updated_at) for j in feed.poll()] == [(x, 200.0) for x in sorted([a, b])]
    assert list(feed.poll()) == []  # nothing new, nothing twice
    # Stamped at the same second as the last change shown, but committed only now.
    c = insert_job(store, "tests.jobs.add", (1, 1), created_at=200.0).id
    # Stamped before it (the writer waited for the lock), committed after.
    d = insert_job(store, "tests.jobs.add", (1, 1), created_at=197.0).id
    _claim_at(store, a, 201.0)
    assert [(j.id, j.state) for j in feed.poll()] == [
        (d, JobState.QUEUED), (c, JobState.QUEUED), (a, JobState.RUNNING)
    ]  # fmt: skip
    store.set_progress(a, Progress(1, 2, "half"), 202.0)
    assert [(j.id, j.progress) for j in feed.poll()] == [(a, Progress(1, 2, "half"))]
    assert early not in {j.id for j in store.changed_since(150.0, 100)}  # never shown: too old


def test_change_feed_leaves_out_changes_from_before_it_started(app: Flask) -> None:
    store = _store(app)
    insert_job(store, "tests.jobs.add", (1, 1), created_at=99.0)
    at_start = insert_job(store, "tests.jobs.add", (1, 1), created_at=100.0).id
    feed = ChangeFeed(store, start=100.0, margin=5.0)
    assert list(feed.poll()) == []
    _claim_at(store, at_start, 100.5)
    assert [j.id for j in feed.poll()] == [at_start]


def test_change_feed_reads_more_than_one_batch_per_poll(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "BATCH", 3)
    store = _store(app)
    ids = [insert_job(store, "tests.jobs.add", (i, i), created_at=100.0 + i).id for i in range(8)]
    feed = ChangeFeed(store, start=0.0, margin=5.0)
    assert [j.id for j in feed.poll()] == ids
    assert list(feed.poll()) == []


def test_change_line_shows_time_id_state_task_attempts_and_progress(app: Flask) -> None:
    store = _store(app)
    job_id = _job(store, JobState.RUNNING, 1_700_000_000.25)
    store.set_progress(job_id, Progress(2, 5, "rendering"), 1_700_000_001.5)
    job = store.get(job_id)
    assert job is not None
    assert change_line(job) == (
        f"2023-11-14T22:13:21.500000Z  {job_id}  running    tests.jobs.add  1/1  2/5 rendering"
    )


def _stop_after_first_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C right after the first poll: ``tail`` returns instead of following."""
    real = ChangeFeed.poll
    polls: list[int] = []

    def poll(self: ChangeFeed) -> Iterator[Job]:
        if polls:
            raise KeyboardInterrupt
        polls.append(1)
        return real(self)

    monkeypatch.setattr(ChangeFeed, "poll", poll)


def test_tail_since_shows_recent_changes_and_ctrl_c_ends_it_cleanly(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, now = _store(app), time.time()
    _job(store, JobState.SUCCEEDED, now - 3600)
    recent = _job(store, JobState.FAILED, now - 5)
    _stop_after_first_poll(monkeypatch)
    result = _run(app, "tail", "--since", "60", "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["id"], line["state"]) for line in lines] == [(recent, "failed")]
    assert lines[0]["updated_at"].endswith("Z") and lines[0]["attempts"] == 1
    assert "following job changes" in result.stderr


# -- beside a real server ---------------------------------------------------------------


class Lines:
    """The lines a child process writes, read in a thread so a test can wait for one
    with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._stream = stream
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._reader.start()

    def close(self) -> None:
        """After the child exited: the reader sees the end, then the pipe is closed."""
        self._reader.join(10)
        self._stream.close()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, wanted: Callable[[str], bool], timeout: float, what: str) -> str:
        """The first line for which ``wanted(line)`` is true; every line read is kept."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line {what} in {timeout}s; saw {self.seen}") from None
            if line is None:
                raise AssertionError(f"the output ended before a line {what}; saw {self.seen}")
            self.seen.append(line)
            if wanted(line):
                return line


def _flask(server: UwsgiServer, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """``flask --app app spoolkit ...`` in the repository, on the server's store."""
    return subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "flask"), "--app", "app", "spoolkit", *args],
        cwd=str(REPO), env=server.env(), text=True, stdin=subprocess.DEVNULL, **popen,
    )  # fmt: skip


def _reap(process: subprocess.Popen[str], timeout: float = 10) -> int | None:
    """Its exit code once it exited (after the signal the caller sent it); ``None`` if
    it had to be killed (by its pid) because it did not exit within ``timeout``."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
        return None


@pytest.mark.e2e
def test_tail_follows_a_job_run_by_the_server_until_sigterm(server: UwsgiServer) -> None:
    before = server.wait_job(server.enqueue("add", 1, 2))["id"]
    tail = _flask(server, "tail", "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert tail.stdout is not None and tail.stderr is not None
    out, err = Lines(tail.stdout), Lines(tail.stderr)
    try:
        err.until(lambda line: "following job changes" in line, 30, "saying tail started")
        job_id = server.enqueue("progress_steps", 3)

        def done(line: str) -> bool:
            shown = json.loads(line)
            return bool(shown["id"] == job_id and shown["state"] == "succeeded")

        out.until(done, 30, f"with {job_id} succeeded")
    finally:
        tail.terminate()
        code = _reap(tail)
        out.close()
        err.close()
    assert code == 0, err.seen
    changes = [json.loads(line) for line in out.seen]
    assert before not in {change["id"] for change in changes}  # only changes after the start
    keys = [(change["id"], change["updated_at"]) for change in changes]
    assert len(keys) == len(set(keys)), "a change shown twice"
    ours = [change for change in changes if change["id"] == job_id]
    assert ours[-1]["progress"] == {"done": 3, "total": 3, "message": "step 3"}
    assert ours[-1]["attempts"] == 1 and ours[-1]["task"] == "tests.jobs.progress_steps"
    order = ["queued", "running", "succeeded"]
    assert [order.index(change["state"]) for change in ours] == sorted(
        order.index(change["state"]) for change in ours
    )


@pytest.mark.e2e
def test_a_retry_from_a_shell_runs_on_a_spooler(server: UwsgiServer) -> None:
    failed = server.wait_job(server.enqueue("flaky", "cli-retry", 1, max_attempts=1))
    assert failed["state"] == "failed"
    run = _flask(server, "retry", failed["id"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    output, errors = run.communicate(timeout=60)
    assert run.returncode == 0, errors
    assert output == f"{failed['id']} queued\n"
    job = server.wait_job(failed["id"], timeout=30)
    assert (job["state"], job["attempts"]) == ("succeeded", 1)
    runs = server.records_of("cli-retry")
    assert len(runs) == 2 and run.pid not in {r["pid"] for r in runs}
    assert runs[-1]["pid"] in server.spooler_pids()
    assert job["history"][-1]["runner_pid"] == runs[-1]["pid"]


@pytest.mark.e2e
def test_stats_from_a_shell_sees_the_servers_spoolers_and_housekeeper(
    server: UwsgiServer,
) -> None:
    def stats() -> dict[str, Any] | None:
        run = _flask(server, "stats", "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            output, errors = run.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
            run.communicate()
            raise
        assert run.returncode == 0, errors
        shown: dict[str, Any] = json.loads(output)
        return shown if shown["spoolers"]["alive"] is not None else None

    shown = wait_for(stats, 30, "the housekeeper to record the spoolers")
    # uwsgi.ini: queues default and slow, two spoolers each.
    assert shown["spoolers"] == {"alive": 4, "configured": 4}
    assert {name: q["spoolers_alive"] for name, q in shown["queues"].items()} == {
        "default": 2, "slow": 2,
    }  # fmt: skip
    assert shown["housekeeper"]["last_run_age"] < 30
