"""Tasks used by the tests. Importable, because the spoolers import them too
(``SPOOLKIT_IMPORTS=tests.jobs``). Each records its runs as JSON lines under
``$SPOOLKIT_TEST_DIR`` so a test can see what ran, where and when.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

from flask import current_app

from spoolkit import JobTimeout, Retry, current_job, spool
from spoolkit import spooler as spooler_module
from spoolkit.runner import Runner
from spoolkit.store import NewJob


def record(tag: str, **data: Any) -> int:
    """Append one line for this run; return how many runs ``tag`` has had."""
    path = os.path.join(os.environ["SPOOLKIT_TEST_DIR"], f"{tag}.jsonl")
    line = {"time": time.time(), "pid": os.getpid(), **data}
    if current_job:
        line.update(job=current_job.id, attempt=current_job.attempt)
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
    with open(path, encoding="utf-8") as back:
        return sum(1 for _ in back)


@spool
def add(a: int, b: int) -> int:
    return a + b


@spool
def echo(value: Any) -> Any:
    return value


@spool
def payload_size(blob: str) -> int:
    return len(blob)


@spool
def mark(tag: str) -> float:
    record(tag)
    return time.time()


@spool
def mark_padded(tag: str, padding: str) -> int:
    """``mark`` with arguments of a chosen size (to fill a disk faster)."""
    record(tag)
    return len(padding)


@spool(max_attempts=5, backoff=0)
def flaky(tag: str, failures: int) -> int:
    runs = record(tag)
    if runs <= failures:
        raise RuntimeError(f"failure {runs} of {failures}")
    return runs


@spool(max_attempts=3, backoff=0)
def always_fails(tag: str) -> None:
    record(tag)
    raise ValueError("boom")


@spool(max_attempts=3, backoff=0)
def asks_retry(tag: str, countdown: float) -> int:
    runs = record(tag)
    if runs == 1:
        raise Retry(countdown=countdown, reason="not ready yet")
    return runs


@spool(max_attempts=3, backoff=0)
def kills_itself(tag: str) -> None:
    record(tag)
    os.kill(os.getpid(), signal.SIGKILL)


@spool(max_attempts=3, backoff=0)
def blocks_first(tag: str, seconds: float) -> int:
    """Blocks on its first attempt (the test kills it there); quick afterwards."""
    record(tag)
    if current_job.attempt == 1:
        time.sleep(seconds)
    return current_job.attempt


@spool
def sleeper(tag: str, seconds: float) -> str:
    record(tag, event="start")
    time.sleep(seconds)
    record(tag, event="end")
    return tag


@spool
def where(tag: str) -> str:
    """Records its run and returns the spooler's working directory: its queue's."""
    record(tag, cwd=os.getcwd())
    return os.getcwd()


@spool(queue="slow")
def slow_sleeper(tag: str, seconds: float) -> str:
    """``sleeper`` on the slow queue; records the directory its spooler serves."""
    record(tag, event="start", cwd=os.getcwd())
    time.sleep(seconds)
    record(tag, event="end", cwd=os.getcwd())
    return tag


@spool(queue="slow", max_attempts=2, backoff=0)
def flaky_on_slow(tag: str, failures: int) -> int:
    """Fails its first ``failures`` runs (counted over restarts too), on the slow queue."""
    runs = record(tag, cwd=os.getcwd())
    if runs <= failures:
        raise RuntimeError(f"failure {runs} of {failures}")
    return runs


@spool
def progress_steps(steps: int) -> int:
    for done in range(1, steps + 1):
        current_job.progress(done, steps, f"step {done}")
    return steps


@spool
def progress_slow(steps: int, seconds_per_step: float) -> int:
    """Progress a watcher can see move: one step every ``seconds_per_step``."""
    for done in range(1, steps + 1):
        time.sleep(seconds_per_step)
        current_job.progress(done, steps, f"step {done}")
    return steps


@spool
def config_value(key: str) -> Any:
    return current_app.config[key]


@spool
def niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


@spool
def job_info() -> dict[str, Any]:
    return {"id": current_job.id, "attempt": current_job.attempt, "max": current_job.max_attempts}


@spool
def bad_result() -> object:
    return {1, 2}


@spool
def enqueue_child(value: int) -> str:
    """A task that queues another one from inside a spooler."""
    return add.delay(value, value).id


@spool(max_attempts=3, backoff=2.0)
def slow_flaky(tag: str, failures: int) -> int:
    runs = record(tag)
    if runs <= failures:
        raise RuntimeError(f"failure {runs} of {failures}")
    return runs


@spool(max_attempts=10, backoff=0)
def storm(tag: str, seconds: float) -> str:
    """One line per run (O_APPEND, no re-read), then a short nap: the kill storm's job."""
    line = json.dumps({"job": current_job.id, "pid": os.getpid(), "time": time.time()}) + "\n"
    fd = os.open(os.path.join(os.environ["SPOOLKIT_TEST_DIR"], f"{tag}.jsonl"),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # fmt: skip
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    time.sleep(seconds)
    return tag


# -- outcomes a store cannot hold as they are (issue: reliability II) --------------------


@spool(max_attempts=3, backoff=0)
def surrogate_result(tag: str) -> str:
    """What os.fsdecode() gives for a non-UTF-8 file name: a lone surrogate."""
    record(tag)
    return os.fsdecode(b"report-\xff.wav")


@spool(max_attempts=3, backoff=0)
def surrogate_error(tag: str) -> None:
    record(tag)
    name = os.fsdecode(b"input-\xfe.txt")
    raise FileNotFoundError(f"no such file: {name}")


@spool(max_attempts=3, backoff=0)
def deep_result(tag: str, depth: int) -> Any:
    record(tag)
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


@spool(max_attempts=3, backoff=0)
def huge_result(tag: str, size: int) -> str:
    record(tag)
    return "x" * size


@spool(max_attempts=3, backoff=0)
def retry_after(tag: str, countdown: float) -> int:
    """Asks for a retry as an upstream Retry-After header could: any number of seconds."""
    runs = record(tag)
    if runs == 1:
        raise Retry(countdown=countdown, reason="upstream says later")
    return runs


@spool(max_attempts=3, backoff=0)
def forks(tag: str) -> str:
    """Forks; the child returns from the task (it must never act as the spooler)."""
    record(tag, role="task")
    child = os.fork()
    if child == 0:
        return "child"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            record(tag, role="child-exit", status=status)
            return "parent"
        time.sleep(0.01)
    return "parent (child still running)"


# -- callbacks, webhooks, timeouts, abort, history (issue: follow-ups) -------------------


@spool(max_attempts=3, backoff=0)
def on_success_sink(job: dict[str, Any]) -> str:
    """An ``on_success`` callback: records the finished job it was given (its one argument)."""
    record("on_success", parent=job["id"], received=job)
    return str(job["id"])


@spool(max_attempts=3, backoff=0)
def on_failure_sink(job: dict[str, Any]) -> str:
    """An ``on_failure`` callback: records the finished job it was given (its one argument)."""
    record("on_failure", parent=job["id"], received=job)
    return str(job["id"])


@spool(on_success=on_success_sink)
def succeeds_with_callback(tag: str) -> str:
    record(tag)
    return tag


@spool(max_attempts=2, backoff=0, on_success=on_success_sink, on_failure=on_failure_sink)
def fails_with_callbacks(tag: str, failures: int) -> int:
    runs = record(tag)
    if runs <= failures:
        raise RuntimeError(f"failure {runs} of {failures}")
    return runs


@spool
def keyed(tag: str) -> str:
    """Queued under an idempotency key: each run is recorded, to count them."""
    record(tag)
    return tag


@spool(max_attempts=2, backoff=0, timeout=0.5)
def overruns(tag: str, seconds: float) -> None:
    """Catches nothing: JobTimeout ends it; its ``finally`` block still runs."""
    record(tag, event="start")
    try:
        time.sleep(seconds)
        record(tag, event="end")
    finally:
        record(tag, event="finally")


@spool(max_attempts=1, timeout=0.5)
def ignores_timeout(tag: str, seconds: float) -> None:
    """Catches JobTimeout and sleeps on: its spooler is killed after the grace."""
    record(tag, event="start")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            time.sleep(left)
        except JobTimeout:
            record(tag, event="ignored")
    record(tag, event="end")


@spool(max_attempts=3, backoff=0, on_success=on_success_sink, on_failure=on_failure_sink)
def stops_on_abort(tag: str, seconds: float) -> str:
    """Looks at ``current_job.abort_requested`` and returns when it is set."""
    record(tag, event="start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if current_job.abort_requested:
            record(tag, event="aborted")
            return "stopped"
        time.sleep(0.05)
    record(tag, event="end")
    return "finished"


@spool(max_attempts=3, backoff=0, on_success=on_success_sink, on_failure=on_failure_sink)
def ignores_abort(tag: str, seconds: float) -> str:
    """Never looks at ``abort_requested``: the housekeeper has to kill it."""
    record(tag, event="start")
    time.sleep(seconds)
    record(tag, event="end")
    return "finished"


@spool(max_attempts=3, backoff=0)
def blocks_first_run(tag: str, seconds: float) -> int:
    """Blocks on its first run only (counted by records, not attempts: a run cut short
    by a restart keeps its attempt number)."""
    runs = record(tag)
    if runs == 1:
        time.sleep(seconds)
    return runs


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


@spool(max_attempts=3, backoff=0)
def deepest_result(tag: str, slack: int) -> Any:
    """Returns a list nested ``slack`` levels less than the deepest json.dumps accepts
    here: JSON the spooler can encode (its stack is shallower than this task's), which
    a reader some frames deeper cannot decode."""
    record(tag)
    low, high = 1, 100_000  # json.dumps accepts ``low`` levels here, not ``high``
    while high - low > 1:
        middle = (low + high) // 2
        try:
            json.dumps(_nested(middle))
        except RecursionError:
            high = middle
        else:
            low = middle
    return _nested(low - slack)


#: Test hook. With this set to a file path, the first spooler whose recorded outcome
#: queued jobs (callbacks, webhook deliveries) writes that file ({"pid", "jobs"}) and
#: waits there to be killed, before it hands the jobs over: the moment between the
#: outcome's commit and the hand-over, which followups.py promises a crash cannot
#: lose or double a callback in. It wraps the name spooler.py calls (the kit's code is
#: not changed); a test using it fails if the file never appears.
PAUSE_AFTER_OUTCOME = "SPOOLKIT_TEST_PAUSE_AFTER_OUTCOME"


def _pause_after_outcome(marker: str) -> None:
    original = spooler_module.hand_over

    def hand_over(runner: Runner, jobs: Sequence[NewJob]) -> None:
        if jobs:
            staging = f"{marker}.{os.getpid()}"
            with open(staging, "w", encoding="utf-8") as out:
                json.dump({"pid": os.getpid(), "jobs": [new.id for new in jobs]}, out)
            try:
                os.link(staging, marker)  # the first spooler only
            except FileExistsError:
                pass
            else:
                while True:  # until the test kills this spooler
                    time.sleep(1)
            finally:
                os.unlink(staging)
        original(runner, jobs)

    spooler_module.hand_over = hand_over


if os.environ.get(PAUSE_AFTER_OUTCOME):
    _pause_after_outcome(os.environ[PAUSE_AFTER_OUTCOME])
