"""Pure logic: backoff, schedules, encoding, the spool file format, states, the claim decision."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from spoolkit.encoding import (
    PACKET_PAYLOAD_LIMIT,
    decode_arguments,
    encode_arguments,
    encode_result,
    from_spool_dict,
    to_spool_entries,
)
from spoolkit.errors import DecodeError, EncodeError, InvalidSchedule
from spoolkit.job import Job
from spoolkit.lifecycle import ClaimAction, decide_claim
from spoolkit.postgres import redact
from spoolkit.retry import Retry, RetryPolicy, compute_backoff
from spoolkit.schedule import (
    isoformat,
    resolve_run_at,
    spool_mtime,
    to_timestamp,
    validate_priority,
)
from spoolkit.spoolfile import SpoolDirectory, decode_file, encode_file, pack_vars, unpack_vars
from spoolkit.states import JobState

# -- retry -----------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "expected"), [(1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)])
def test_backoff_doubles_and_is_capped(n: int, expected: float) -> None:
    assert compute_backoff(n, base=2.0, cap=60.0, rand=lambda: 0.5) == expected


def test_backoff_jitter_stays_within_bounds_and_cap() -> None:
    assert compute_backoff(1, base=10, cap=100, jitter=0.2, rand=lambda: 0.0) == 8.0
    assert compute_backoff(1, base=10, cap=100, jitter=0.2, rand=lambda: 1.0) == pytest.approx(12.0)
    assert compute_backoff(9, base=10, cap=100, jitter=0.2, rand=lambda: 1.0) == 100.0
    assert compute_backoff(10_000, base=1, cap=5) == pytest.approx(5, rel=0.2)
    assert compute_backoff(3, base=0) == 0.0
    with pytest.raises(ValueError):
        compute_backoff(0, base=1)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"max_attempts": 0}, ValueError), ({"max_attempts": "3"}, TypeError),
     ({"max_attempts": True}, TypeError), ({"backoff": -1}, ValueError),
     ({"backoff": float("nan")}, ValueError), ({"backoff": "1"}, TypeError)],
)  # fmt: skip
def test_retry_policy_is_validated(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retry_exception_validates_countdown() -> None:
    assert Retry(countdown=3).countdown == 3
    assert str(Retry()) == "retry requested"
    with pytest.raises(ValueError):
        Retry(countdown=-1)
    with pytest.raises(TypeError):
        Retry(countdown="1")  # type: ignore[arg-type]


# -- schedule --------------------------------------------------------------------------


def test_to_timestamp_accepts_numbers_iso_and_datetimes() -> None:
    moment = datetime(2030, 1, 31, 12, 0, tzinfo=UTC)
    expected = moment.timestamp()
    assert to_timestamp(expected) == expected
    assert to_timestamp(str(expected)) == expected
    assert to_timestamp("2030-01-31T12:00:00Z") == expected
    assert to_timestamp("2030-01-31T12:00:00") == expected  # no zone: UTC
    assert to_timestamp("2030-01-31T13:00:00+01:00") == expected
    assert to_timestamp(moment.replace(tzinfo=None)) == expected
    assert to_timestamp(moment.astimezone(timezone(timedelta(hours=-5)))) == expected


@pytest.mark.parametrize("bad", ["tomorrow", "", True, None, [], -1, float("inf"), 1e15])
def test_to_timestamp_rejects_junk(bad: object) -> None:
    with pytest.raises(InvalidSchedule):
        to_timestamp(bad)


def test_resolve_run_at() -> None:
    now = 1000.0
    assert resolve_run_at(None, None, now) is None
    assert resolve_run_at(None, 5, now) == 1005.0
    assert resolve_run_at(None, 0, now) is None
    assert resolve_run_at(900, None, now) is None  # past: now
    assert resolve_run_at(1500, None, now) == 1500.0
    for at, countdown in ((1500, 5), (None, -1), (None, "5"), (None, True)):
        with pytest.raises(InvalidSchedule):
            resolve_run_at(at, countdown, now)


def test_spool_mtime_rounds_up_so_no_job_starts_early() -> None:
    assert spool_mtime(1000.2, 990.0) == 1001
    assert spool_mtime(1000.0, 990.0) == 1000
    # Due now: a second in the past, never the current second (uWSGI's clock lags).
    assert spool_mtime(None, 990.7) == 989
    assert spool_mtime(980.0, 990.7) == 989
    assert spool_mtime(990.2, 990.7) == 989


def test_priority_validation() -> None:
    assert validate_priority(None) is None
    assert validate_priority(0) == 0
    assert validate_priority(99) == 99
    for bad in (-1, 100, "1", "../x", 1.0, True):
        with pytest.raises(InvalidSchedule):
            validate_priority(bad)


def test_isoformat_is_utc_with_z() -> None:
    assert isoformat(0.0) == "1970-01-01T00:00:00.000000Z"
    assert isoformat(None) is None


# -- encoding --------------------------------------------------------------------------


def test_arguments_round_trip() -> None:
    payload = encode_arguments("t", [1, "é", [None]], {"k": {"x": 1.5}})
    assert decode_arguments(payload) == ([1, "é", [None]], {"k": {"x": 1.5}})


def test_non_json_argument_is_named() -> None:
    with pytest.raises(EncodeError, match="argument 'when' of task 't'"):
        encode_arguments("t", ["ok", datetime.now()], {}, names=["name", "when"])
    with pytest.raises(EncodeError, match="argument 'opt'"):
        encode_arguments("t", [], {"opt": {1, 2}})
    with pytest.raises(TypeError, match=r"argument #1"):  # EncodeError is a TypeError
        encode_arguments("t", [float("nan")], {})


def test_non_json_result_names_the_task() -> None:
    assert encode_result("t", -1) == "-1"
    with pytest.raises(EncodeError, match="task 't' returned a set"):
        encode_result("t", {1})


def test_small_payload_in_packet_large_in_body() -> None:
    small = encode_arguments("t", ["x"], {})
    packet, body = to_spool_entries("j" * 22, "t", small)
    assert packet[b"payload"] == small.encode() and body == b""
    large = encode_arguments("t", ["x" * (PACKET_PAYLOAD_LIMIT + 1)], {})
    packet, body = to_spool_entries("j" * 22, "t", large)
    assert b"payload" not in packet and body == large.encode()
    assert from_spool_dict({**packet, "body": body}).args == ["x" * (PACKET_PAYLOAD_LIMIT + 1)]


@pytest.mark.parametrize(
    ("spool", "message"),
    [
        ({}, "not a spoolkit"),
        ({b"spoolkit": b"2"}, "version"),
        ({b"spoolkit": b"1", b"job": b"short", b"task": b"t", b"payload": b"{}"}, "job id"),
        ({b"spoolkit": b"1", b"job": b"a" * 22, b"task": b"../x", b"payload": b"{}"}, "task name"),
        ({b"spoolkit": b"1", b"job": b"a" * 22, b"task": b"t"}, "missing"),
        ({b"spoolkit": b"1", b"job": b"a" * 22, b"task": b"t", b"payload": b"[1]"}, "exactly"),
        ({b"spoolkit": b"1", b"job": b"\xff" * 22, b"task": b"t", b"payload": b"{}"}, "UTF-8"),
        ({b"spoolkit": b"1", b"job": b"a" * 22, b"task": b"t",
          b"payload": b'{"args":{},"kwargs":{}}'}, "must be a list"),
    ],
)  # fmt: skip
def test_bad_envelopes_are_decode_errors(spool: dict[object, bytes], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        from_spool_dict(spool)


# -- spool file format -----------------------------------------------------------------


def test_packet_round_trip_and_limits() -> None:
    entries = {b"a": b"1", b"key": b"x" * 300, b"": b""}
    assert unpack_vars(pack_vars(entries)) == entries
    with pytest.raises(ValueError, match="truncated"):
        unpack_vars(pack_vars(entries)[:-1])
    with pytest.raises(ValueError):
        pack_vars({b"k": b"x" * 70_000})
    data = encode_file({b"a": b"b"}, b"BODY")
    assert data[0] == 17 and data[3] == 0
    assert decode_file(data) == ({b"a": b"b"}, b"BODY")


def test_spool_directory_writes_atomically_with_mtime(tmp_path: Path) -> None:
    woken: list[int] = []
    directory = SpoolDirectory(str(tmp_path / "jobs"), wake=lambda: woken.append(1))
    directory.prepare()
    assert (tmp_path / "jobs").stat().st_mode & 0o777 == 0o700
    at = int(time.time()) + 100
    directory.write("uwsgi_spoolfile_on_x", {b"k": b"v"}, b"B", at)
    target = tmp_path / "jobs" / "uwsgi_spoolfile_on_x"
    assert decode_file(target.read_bytes()) == ({b"k": b"v"}, b"B")
    assert int(target.stat().st_mtime) == at
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(tmp_path / "jobs")) == ["quarantine", "uwsgi_spoolfile_on_x"]
    # An existing file is never clobbered (a concurrent respool of the same job).
    directory.write("uwsgi_spoolfile_on_x", {b"k": b"other"}, b"", at)
    assert decode_file(target.read_bytes())[0] == {b"k": b"v"}
    directory.write("07/uwsgi_spoolfile_on_y", {b"k": b"v"}, b"", at)
    assert directory.names() == {"07/uwsgi_spoolfile_on_y", "uwsgi_spoolfile_on_x"}
    info = os.lstat(target)
    assert not directory.is_torn("uwsgi_spoolfile_on_x", info)
    assert len(woken) == 2  # the second write of x found it there: no new file, no wake
    assert directory.quarantine(str(tmp_path / "jobs"), "uwsgi_spoolfile_on_x") is not None
    assert (tmp_path / "jobs" / "quarantine" / "uwsgi_spoolfile_on_x").exists()
    assert target.exists()  # the original is uWSGI's to unlink
    torn = tmp_path / "jobs" / "07" / "uwsgi_spoolfile_on_y"
    torn.write_bytes(b"\x11\x00")
    assert directory.is_torn("07/uwsgi_spoolfile_on_y", os.lstat(torn))
    # Short because its writer (another process) is still writing it, under its lock: not torn.
    with subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'r+b'); "
         "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(torn)],
        stdout=subprocess.PIPE, text=True,
    ) as locker:  # fmt: skip
        try:
            assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
            assert not directory.is_torn("07/uwsgi_spoolfile_on_y", os.lstat(torn))
        finally:
            locker.kill()
    assert directory.is_torn("07/uwsgi_spoolfile_on_y", os.lstat(torn))
    short_packet = tmp_path / "jobs" / "uwsgi_spoolfile_on_short"
    short_packet.write_bytes(encode_file({b"k": b"v" * 50})[:30])
    assert directory.is_torn("uwsgi_spoolfile_on_short", os.lstat(short_packet))
    assert directory.set_aside_torn("07/uwsgi_spoolfile_on_y") is not None
    assert not torn.exists()
    assert (tmp_path / "jobs" / "quarantine" / "uwsgi_spoolfile_on_y").read_bytes() == b"\x11\x00"


# -- states and the claim decision -----------------------------------------------------


def test_final_states() -> None:
    assert JobState.CANCELLED.is_finished and not JobState.SCHEDULED.is_finished


BASE = Job(
    id="j" * 22, task="t", state=JobState.QUEUED, attempts=0, max_attempts=3, backoff=1.0,
    priority=None, created_at=0.0, scheduled_for=None, started_at=None, finished_at=None,
    updated_at=0.0, progress=None, result=None, error=None, spool_file="05/file", runner=None,
    runner_pid=None,
)  # fmt: skip


def _decide(
    job: Job | None, name: str = "05/file", alive: bool = False, now: float = 100.0
) -> ClaimAction:
    return decide_claim(job, name, "host:1:50:0", now, lambda pid: alive)


def test_claim_decisions() -> None:
    running = replace(BASE, state=JobState.RUNNING, runner="host:1:50:0", runner_pid=424242)
    assert _decide(None) is ClaimAction.UNKNOWN
    assert _decide(BASE) is ClaimAction.RUN
    assert _decide(BASE, name="other") is ClaimAction.DISCARD
    assert _decide(BASE, name="file") is ClaimAction.DISCARD  # same name, other directory
    assert _decide(replace(BASE, spool_file=None)) is ClaimAction.DISCARD
    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        assert _decide(replace(BASE, state=state)) is ClaimAction.DISCARD
    assert (
        _decide(replace(BASE, state=JobState.SCHEDULED, scheduled_for=101.0)) is ClaimAction.EARLY
    )
    assert _decide(replace(BASE, state=JobState.SCHEDULED, scheduled_for=99.0)) is ClaimAction.RUN
    assert _decide(running) is ClaimAction.CRASHED
    assert _decide(running, alive=True) is ClaimAction.BUSY
    assert _decide(replace(running, runner_pid=os.getpid()), alive=True) is ClaimAction.CRASHED
    assert _decide(replace(running, runner="host:1:49:0"), alive=True) is ClaimAction.RERUN
    assert _decide(replace(running, runner="host:1:50:1")) is ClaimAction.RERUN


def test_a_postgresql_address_is_shown_without_its_secrets() -> None:
    assert redact("postgresql://kit:s3cret@db:5432/kit?sslmode=verify-full") == (
        "postgresql://kit:***@db:5432/kit?sslmode=verify-full"
    )
    assert redact("postgresql:///kit?host=/run/pg&password=s3cret&sslpassword=k") == (
        "postgresql:///kit?host=/run/pg&password=***&sslpassword=***"
    )
    assert redact("postgresql://db/kit?PassWord=x") == "postgresql://db/kit?PassWord=***"
    assert redact("postgresql://db/kit") == "postgresql://db/kit"
