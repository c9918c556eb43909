"""Tasks used by the tests. Importable, because the spoolers import them too
(``SPOOLKIT_IMPORTS=tests.jobs``). Each records its runs as JSON lines under
``$SPOOLKIT_TEST_DIR`` so a test can see what ran, where and when.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

from flask import current_app

from spoolkit import Retry, current_job, spool


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
def progress_steps(steps: int) -> int:
    for done in range(1, steps + 1):
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
