"""What a hostile tester and an unlucky operator broke, each kept broken-proof.

Either a job is durably accepted (``202``, and it runs) or it is not recorded
(``507``/``503``, and it never runs), whatever fills up first; every outcome
can be recorded; the API never fails on a stored row; ``/healthz`` tells the
truth and the kit recovers what it can.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from spoolkit.spoolfile import encode_file

from .support import UwsgiServer, fill, wait_for

pytestmark = pytest.mark.e2e


def _jobs(server: UwsgiServer) -> dict[str, dict[str, object]]:
    return {job["id"]: job for job in server.get("/jobs?limit=1000").json()["jobs"]}


def _housekeeper_passes(server: UwsgiServer, passes: int = 2) -> None:
    """Wait until the housekeeper has finished ``passes`` more passes (it would have
    spooled again anything recorded but missing its file)."""
    for _ in range(passes):
        start = time.time()

        def passed(start: float = start) -> bool:
            age = server.get("/healthz").json().get("housekeeper", {}).get("last_run_age")
            return age is not None and time.time() - age > start

        wait_for(passed, 30, "a housekeeping pass")


def _refused_never_run(server: UwsgiServer, refused: list[str], accepted: list[str]) -> None:
    """After space is back and the housekeeper looked twice: no refused job exists or
    ran, every accepted one succeeded."""
    for job_id in accepted:
        assert server.wait_job(job_id, timeout=30)["state"] == "succeeded"
    _housekeeper_passes(server)
    ran = [tag for tag in refused if server.records_of(tag)]
    assert ran == []
    assert set(_jobs(server)) == set(accepted)


def _post_marks(server: UwsgiServer, prefix: str, count: int, blob: int) -> dict[int, list[str]]:
    """POST ``count`` mark jobs (each tagged, with ``blob`` bytes of padding); tags by status."""
    by_status: dict[int, list[str]] = {}
    for i in range(count):
        tag = f"{prefix}-{i}"
        answer = server.post("/jobs", {"task": "tests.jobs.mark_padded", "args": [tag, "x" * blob]})
        assert answer.status in (202, 503, 507), answer
        if answer.status != 202:
            assert answer.headers["Retry-After"] in ("5", "30")
            assert str(server.base) not in answer.json()["error"]
        by_status.setdefault(answer.status, []).append(
            answer.json()["id"] if answer.status == 202 else tag
        )
    return by_status


# -- disk full, whichever filesystem fills ---------------------------------------------------


def test_disk_full_with_store_and_spool_on_one_filesystem(tmp_path: Path, small_disk: Path) -> None:
    """The default layout: a refused job (507) is not recorded and never runs."""
    with UwsgiServer(
        tmp_path / "srv",
        SPOOLKIT_SPOOL_DIR=str(small_disk / "jobs"),
        SPOOLKIT_DATABASE=str(small_disk / "spoolkit.db"),
    ) as server:
        before = server.enqueue("mark", "shared-before", countdown=1)
        filler = fill(small_disk)
        answers = _post_marks(server, "shared-full", 20, blob=20_000)
        assert answers.get(507), f"the full disk refused nothing: {answers}"
        assert set(answers) <= {202, 507}
        filler.unlink()
        _refused_never_run(server, answers[507], [before, *answers.get(202, [])])


def test_disk_full_under_the_store_while_the_spool_has_room(
    tmp_path: Path, small_disk: Path
) -> None:
    """The store's disk fills (its WAL grows with every try), then space comes back:
    refused jobs never run and the kit accepts jobs again by itself."""
    with UwsgiServer(tmp_path / "srv", SPOOLKIT_DATABASE=str(small_disk / "spoolkit.db")) as server:
        before = server.enqueue("mark", "store-before", countdown=1)
        filler = fill(small_disk)
        answers = _post_marks(server, "store-full", 60, blob=4_000)
        refused = answers.get(507, []) + answers.get(503, [])
        assert refused, f"the full store refused nothing: {answers}"
        health = server.get("/healthz")
        assert health.status == 503 and health.json()["store"].startswith("unavailable")
        filler.unlink()
        after = wait_for(
            lambda: (
                (r := server.post("/jobs", {"task": "tests.jobs.mark", "args": ["back"]}))
                and r.status == 202
                and r.json()["id"]
            ),
            30,
            "a job accepted after space came back",
        )
        wait_for(lambda: server.get("/healthz").status == 200, 30, "/healthz to recover")
        _refused_never_run(server, refused, [before, *answers.get(202, []), after])


def test_a_manual_retry_refused_for_want_of_space_never_runs(
    tmp_path: Path, small_disk: Path
) -> None:
    with UwsgiServer(tmp_path / "srv", SPOOLKIT_SPOOL_DIR=str(small_disk / "jobs")) as server:
        failed = server.wait_job(server.enqueue("always_fails", "retry-full"))
        assert failed["state"] == "failed" and failed["attempts"] == 3
        filler = fill(small_disk)
        answer = server.post(f"/jobs/{failed['id']}/retry")
        assert answer.status == 507, answer
        filler.unlink()
        _housekeeper_passes(server)
        job = server.job(failed["id"])
        assert (job["state"], job["attempts"]) == ("failed", 3)
        assert len(server.records_of("retry-full")) == 3


# -- outcomes a store cannot hold as they are -------------------------------------------------


def test_a_lone_surrogate_in_a_result_is_stored_once(server: UwsgiServer) -> None:
    job = server.wait_job(server.enqueue("surrogate_result", "surrogate-result"))
    assert (job["state"], job["attempts"]) == ("succeeded", 1)
    assert job["result"] == os.fsdecode(b"report-\xff.wav")
    assert len(server.records_of("surrogate-result")) == 1


def test_a_lone_surrogate_in_an_error_is_stored_escaped(server: UwsgiServer) -> None:
    job = server.wait_job(server.enqueue("surrogate_error", "surrogate-error"))
    assert (job["state"], job["attempts"]) == ("failed", 3)
    assert job["error"]["type"] == "FileNotFoundError"
    assert job["error"]["message"] == "no such file: input-\\udcfe.txt"


def test_a_result_nested_too_deeply_fails_the_job_once(server: UwsgiServer) -> None:
    job = server.wait_job(server.enqueue("deep_result", "deep-result", 3000))
    assert (job["state"], job["attempts"]) == ("failed", 1)
    assert job["error"]["type"] == "spoolkit.errors.EncodeError"
    assert "nested too deeply" in job["error"]["message"]
    assert len(server.records_of("deep-result")) == 1


def test_a_result_over_the_limit_fails_the_job_once(server: UwsgiServer) -> None:
    job = server.wait_job(server.enqueue("huge_result", "huge-result", 2 * 1024 * 1024))
    assert (job["state"], job["attempts"]) == ("failed", 1)
    assert job["error"]["type"] == "spoolkit.errors.ResultTooLarge"
    assert "SPOOLKIT_MAX_RESULT_BYTES" in job["error"]["message"]


def test_a_huge_retry_countdown_is_capped_and_the_api_keeps_answering(
    server: UwsgiServer,
) -> None:
    job_id = server.enqueue("retry_after", "retry-after", 1e15)
    job = server.wait_job(job_id, states={"scheduled"})
    assert job["error"]["type"] == "Retry"
    due = time.mktime(time.strptime(job["scheduled_for"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert due - time.mktime(time.gmtime()) <= 3600 + 60  # SPOOLKIT_MAX_BACKOFF
    assert server.get("/jobs?state=scheduled").status == 200
    cancelled = server.request("DELETE", f"/jobs/{job_id}")
    assert cancelled.status == 200 and cancelled.json()["state"] == "cancelled"


def test_a_task_that_forks_is_run_and_recorded_by_the_spooler_alone(
    server: UwsgiServer,
) -> None:
    job = server.wait_job(server.enqueue("forks", "forks"))
    assert (job["state"], job["attempts"], job["result"]) == ("succeeded", 1, "parent")
    roles = [record["role"] for record in server.records_of("forks")]
    assert roles == ["task", "child-exit"]
    deaths = server.spooler_deaths()
    assert server.wait_job(server.enqueue("add", 2, 3))["result"] == 5
    assert server.spooler_deaths() == deaths


# -- hostile input: a clear 4xx and no row ------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b'{"task": "tests.jobs.echo", "args": [' + b"[" * depth + b"]" * depth + b"]}"


@pytest.mark.parametrize(
    ("path", "raw", "status"),
    [
        ("/jobs", _nested(5000), 400),
        ("/render/deep", b'{"text_list": ' + b"[" * 5000 + b"]" * 5000 + b"}", 422),
        (
            "/jobs",
            b'{"task": "tests.jobs.add", "args": [1, 2], "countdown": 1' + b"0" * 400 + b"}",
            422,
        ),
        ("/jobs", b'{"task": "tests.jobs.add", "args": [1, 2], "at": 1' + b"0" * 400 + b"}", 422),
        (
            "/jobs",
            b'{"task": "tests.jobs.add", "args": [1, 2], "max_attempts": 9223372036854775808}',
            422,
        ),
        ("/jobs", b'{"task": "tests.jobs.add", "args": [1, 2], "max_attempts": 10001}', 422),
    ],
)
def test_hostile_bodies_get_a_clear_4xx_and_leave_no_row(
    server: UwsgiServer, path: str, raw: bytes, status: int
) -> None:
    before = set(_jobs(server))
    answer = server.request("POST", path, raw=raw)
    assert answer.status == status, answer
    assert isinstance(answer.json()["error"], str)
    assert set(_jobs(server)) == before


@pytest.mark.parametrize("limit", ["\u00b2", "\u0661", "9" * 5000, "0", "-1", "1001", ""])
def test_list_limits_only_ascii_digits_in_range(server: UwsgiServer, limit: str) -> None:
    answer = server.get(f"/jobs?limit={quote(limit)}")
    assert answer.status == 422, answer
    assert "limit" in answer.json()["error"]


def test_the_apps_own_route_has_the_body_limit(server: UwsgiServer) -> None:
    """Refused from the Content-Length alone: the 2 MB body is never read (so the
    client sends only its start, and reads the answer)."""
    head = (
        "POST /render/big HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {2 * 1024 * 1024}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode() + b'{"text_list": ["' + b"x" * 4096)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line + b" ", answer[:300]
    assert b'"error"' in rest


def test_the_list_leaves_results_out(server: UwsgiServer) -> None:
    job = server.wait_job(server.enqueue("echo", "x" * 1000))
    listed = _jobs(server)[job["id"]]
    assert "result" not in listed
    assert server.job(job["id"])["result"] == "x" * 1000


# -- what /healthz says, and what the kit recovers ------------------------------------------


def test_healthz_shows_paths_only_to_a_caller_with_the_token(tmp_path: Path) -> None:
    with UwsgiServer(tmp_path, SPOOLKIT_API_TOKEN="t0ken-for-health") as server:
        anonymous = server.get("/healthz")
        assert anonymous.status == 200
        assert str(tmp_path) not in anonymous.body.decode()
        assert "spool_dir" not in anonymous.json()
        with_token = server.get("/healthz", headers={"Authorization": "Bearer t0ken-for-health"})
        assert with_token.json()["spool_dir"] == str(server.spool_dir.resolve())


def test_a_removed_spool_directory_is_recreated_and_its_jobs_run(tmp_path: Path) -> None:
    with UwsgiServer(tmp_path) as server:
        waiting = [server.enqueue("mark", f"removed-{i}", countdown=3) for i in range(3)]
        shutil.rmtree(server.spool_dir)
        wait_for(server.spool_dir.is_dir, 10, "the housekeeper to recreate the spool directory")
        for job_id in waiting:
            assert server.wait_job(job_id, timeout=60)["state"] == "succeeded"
        wait_for(lambda: server.get("/healthz").status == 200, 30, "/healthz to recover")
        assert server.wait_job(server.enqueue("add", 1, 1))["result"] == 2


def test_healthz_fails_when_the_store_file_is_removed(tmp_path: Path) -> None:
    with UwsgiServer(tmp_path) as server:
        assert server.get("/healthz").status == 200
        for suffix in ("", "-wal", "-shm"):
            Path(f"{server.database}{suffix}").unlink(missing_ok=True)
        answer = server.get("/healthz")
        assert answer.status == 503
        # Gone, or (once a process's next connection made a new, empty file there)
        # replaced: either way the kit refuses jobs and says why.
        store = answer.json()["store"]
        assert "spoolkit.db is gone" in store or "spoolkit.db was replaced" in store, store
        assert str(tmp_path) not in answer.body.decode()


def test_quarantine_is_counted_and_purged_with_the_finished_jobs(tmp_path: Path) -> None:
    with UwsgiServer(tmp_path, SPOOLKIT_RESULT_TTL="5") as server:
        foreign = encode_file({b"ud_spool_func": b"someone_elses_task"})
        server.drop_spool_file("uwsgi_spoolfile_on_foreign", foreign)
        wait_for(lambda: server.get("/healthz").json().get("quarantined") == 1, 30,
                 "the foreign file to be quarantined")  # fmt: skip
        wait_for(lambda: server.get("/healthz").json().get("quarantined") == 0, 30,
                 "the quarantine to be purged after SPOOLKIT_RESULT_TTL")  # fmt: skip
