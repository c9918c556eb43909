"""A job's round trip through a real uWSGI: HTTP in, spooler, store, HTTP out."""

from __future__ import annotations

import time
import wave

import pytest

from spoolkit.spoolfile import decode_file
from spoolkit.states import FINISHED

from .support import UwsgiServer

pytestmark = pytest.mark.e2e


def test_render_demo_round_trip(server: UwsgiServer) -> None:
    response = server.post("/render/demo-1", {"text_list": ["hello", "world", "again"]})
    assert response.status == 202
    job = response.json()
    assert job["state"] == "queued"
    assert job["task"] == "tasks.render_audio"
    assert response.headers["Location"] == f"/jobs/{job['id']}"

    # Poll as a client would: 202 and Retry-After while the job is unfinished, then 200.
    deadline = time.monotonic() + 30
    final = {state.value for state in FINISHED}
    while (polled := server.get(response.headers["Location"])).json()["state"] not in final:
        assert polled.status == 202, polled
        assert polled.headers["Retry-After"] == "1"
        assert time.monotonic() < deadline, f"job {job['id']} still unfinished: {polled}"
        time.sleep(0.05)
    assert polled.status == 200, polled
    done = polled.json()
    assert done["state"] == "succeeded"
    assert done["attempts"] == 1
    assert done["progress"] == {"done": 3, "total": 3, "message": "rendered text 3 of 3"}
    assert server.get(f"/jobs/{job['id']}").status == 200
    with wave.open(done["result"]) as audio:
        assert audio.getframerate() == 8000
        assert audio.getnframes() == 3 * int(8000 * 0.4)
    for field in ("created_at", "started_at", "finished_at"):
        assert done[field].endswith("Z")


@pytest.mark.parametrize(
    "body",
    [None, {"text_list": []}, {"text_list": "hello"}, {"text_list": [1, 2]}, ["hello"]],
)
def test_render_demo_rejects_bad_input(server: UwsgiServer, body: object) -> None:
    response = server.post("/render/demo-2", body)
    assert response.status == 422
    assert "error" in response.json()


def test_result_round_trip_keeps_values_the_spooler_would_misread(server: UwsgiServer) -> None:
    # Raw uWSGI reads a task's return value as a spooler code: -1 means "retry".
    for value in (0, -1, -2, None, {"nested": [1, 2.5, "x"]}):
        job = server.wait_job(server.enqueue("echo", value))
        assert job["state"] == "succeeded", job
        assert job["result"] == value
        assert job["attempts"] == 1


def test_large_argument_travels_in_the_spool_file_body(server: UwsgiServer) -> None:
    blob = "x" * 200_000
    job_id = server.enqueue("payload_size", blob, countdown=8)  # within SPOOLKIT_SPOOL_AHEAD
    spool_file = server.spool_file_of(job_id)
    assert spool_file is not None
    packet, body = decode_file(spool_file.read_bytes())
    assert b"payload" not in packet
    assert packet[b"job"] == job_id.encode()
    assert blob.encode() in body
    assert server.request("DELETE", f"/jobs/{job_id}").status == 200

    job = server.wait_job(server.enqueue("payload_size", blob))
    assert job["state"] == "succeeded"
    assert job["result"] == 200_000


def test_task_runs_in_the_app_context_and_sees_its_job(server: UwsgiServer) -> None:
    job = server.wait_job(server.enqueue("config_value", "RENDER_OUTPUT_DIR"))
    assert job["result"] == str(server.output)
    info = server.wait_job(server.enqueue("job_info"))
    assert info["result"] == {"id": info["id"], "attempt": 1, "max": 3}


def test_progress_is_recorded(server: UwsgiServer) -> None:
    job = server.wait_job(server.enqueue("progress_steps", 5))
    assert job["progress"] == {"done": 5, "total": 5, "message": "step 5"}


def test_task_can_queue_another_task_from_a_spooler(server: UwsgiServer) -> None:
    parent = server.wait_job(server.enqueue("enqueue_child", 21))
    assert parent["state"] == "succeeded"
    child = server.wait_job(parent["result"])
    assert child["task"] == "tests.jobs.add"
    assert child["result"] == 42


def test_non_json_result_fails_without_retry(server: UwsgiServer) -> None:
    job = server.wait_job(server.enqueue("bad_result"))
    assert job["state"] == "failed"
    assert job["attempts"] == 1
    assert job["error"]["type"] == "spoolkit.errors.EncodeError"
    assert "set" in job["error"]["message"]


def test_healthz_reports_spoolers_and_store(server: UwsgiServer) -> None:
    response = server.get("/healthz")
    assert response.status == 200
    report = response.json()
    assert report["status"] == "ok"
    assert report["mode"] == "spooler"
    # uwsgi.ini's two queues, default and slow, with spooler-processes = 2 each.
    assert report["spoolers"] == {"configured": 4, "alive": 4}
    assert {name: q["spoolers_alive"] for name, q in report["queues"].items()} == {
        "default": 2,
        "slow": 2,
    }
    assert report["store"] == "ok"


def test_list_filters_by_state_and_task(server: UwsgiServer) -> None:
    ids = [server.enqueue("add", i, i) for i in range(3)]
    for job_id in ids:
        server.wait_job(job_id)
    listed = server.get("/jobs?task=tests.jobs.add&state=succeeded&limit=2").json()["jobs"]
    assert [job["id"] for job in listed] == ids[::-1][:2]
    assert all(job["task"] == "tests.jobs.add" for job in listed)
