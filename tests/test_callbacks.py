"""Callbacks, signed webhooks, idempotent enqueue, per-job timeouts, abort and the
attempt history, end to end on a real uWSGI.

Four servers: ``server`` (webhook secret set, private addresses refused; short
grace periods and backoff cap), ``receiving`` (private addresses allowed, for a
receiver on 127.0.0.1), ``restarting`` (no secret; stopped and started by its
tests; the spoolers pause after an outcome that queued jobs, see
``tests.jobs.PAUSE_AFTER_OUTCOME``) and a kill storm's own.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from spoolkit.states import FINISHED

from .jobs import PAUSE_AFTER_OUTCOME
from .support import Response, UwsgiServer, wait_for

pytestmark = pytest.mark.e2e

SECRET = "test-webhook-secret"
FINAL = {state.value for state in FINISHED}
SUCCESS_SINK = "tests.jobs.on_success_sink"
FAILURE_SINK = "tests.jobs.on_failure_sink"
WEBHOOK = "spoolkit.webhook"


def _server(base: Path, **env: str) -> Iterator[UwsgiServer]:
    instance = UwsgiServer(base, **env)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UwsgiServer]:
    yield from _server(
        tmp_path_factory.mktemp("callbacks"),
        SPOOLKIT_WEBHOOK_SECRET=SECRET,
        SPOOLKIT_MAX_BACKOFF="1",
        SPOOLKIT_TIMEOUT_GRACE="1",
        SPOOLKIT_ABORT_GRACE="1.5",
    )


@pytest.fixture(scope="module")
def receiving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UwsgiServer]:
    yield from _server(
        tmp_path_factory.mktemp("webhooks"),
        SPOOLKIT_WEBHOOK_SECRET=SECRET,
        SPOOLKIT_WEBHOOK_ALLOW_PRIVATE="1",
        SPOOLKIT_MAX_BACKOFF="1",  # the webhook's 30 s backoff base, capped
    )


@pytest.fixture(scope="module")
def restarting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UwsgiServer]:
    base = tmp_path_factory.mktemp("restarts")
    yield from _server(
        base, SPOOLKIT_ABORT_GRACE="2", **{PAUSE_AFTER_OUTCOME: str(base / "paused.json")}
    )


# -- helpers ------------------------------------------------------------------------------------


def _header(response: Response, name: str) -> str | None:
    found = [value for key, value in response.headers.items() if key.lower() == name.lower()]
    return found[0] if found else None


def _children(server: UwsgiServer, parent_id: str, task: str) -> list[dict[str, Any]]:
    """The jobs of ``task`` that ``parent_id``'s outcome queued."""
    jobs = server.get(f"/jobs?task={task}&limit=1000").json()["jobs"]
    return [job for job in jobs if job["parent_id"] == parent_id]


def _outcomes(job: dict[str, Any]) -> list[str]:
    return [attempt["outcome"] for attempt in job["history"]]


def _runs(server: UwsgiServer, tag: str, parent_id: str) -> list[dict[str, Any]]:
    """The runs of a callback sink (``tag``: on_success, on_failure) for ``parent_id``."""
    return [run for run in server.records_of(tag) if run["parent"] == parent_id]


def _events(server: UwsgiServer, tag: str) -> list[str]:
    return [run["event"] for run in server.records_of(tag)]


def _started(server: UwsgiServer, job_id: str, tag: str) -> None:
    """Wait until the job is running and its task has begun (recorded its start)."""
    server.wait_job(job_id, states={"running"})
    wait_for(lambda: server.records_of(tag), 10, f"{tag} to start")


# -- callbacks ----------------------------------------------------------------------------------


def test_on_success_runs_once_with_the_finished_job(server: UwsgiServer) -> None:
    parent_id = server.enqueue("succeeds_with_callback", "cb-success")
    parent = server.wait_job(parent_id)
    assert parent["state"] == "succeeded"
    assert parent["on_success"] == SUCCESS_SINK
    [callback_id] = parent["callbacks"]
    callback = server.wait_job(callback_id)
    assert (callback["state"], callback["task"]) == ("succeeded", SUCCESS_SINK)
    assert callback["parent_id"] == parent_id
    assert callback["result"] == parent_id
    [run] = _runs(server, "on_success", parent_id)
    received = run["received"]
    assert received["id"] == parent_id
    assert received["state"] == "succeeded"
    assert received["result"] == "cb-success"
    assert received["callbacks"] == [callback_id]
    assert _children(server, parent_id, SUCCESS_SINK) == [
        {key: value for key, value in callback.items() if key not in ("result", "history")}
    ]
    assert _runs(server, "on_failure", parent_id) == []


def test_on_failure_runs_only_when_the_job_fails_for_good(server: UwsgiServer) -> None:
    retried = server.enqueue("fails_with_callbacks", "cb-retried", 1)
    failed = server.enqueue("fails_with_callbacks", "cb-failed", 5)
    waiting = server.enqueue("fails_with_callbacks", "cb-cancelled", 5, countdown=60)
    cancelled = server.request("DELETE", f"/jobs/{waiting}")
    assert cancelled.status == 200 and cancelled.json()["state"] == "cancelled"

    # Failed once, retried, succeeded: on_success only, no on_failure for the retry.
    job = server.wait_job(retried)
    assert (job["state"], job["attempts"], _outcomes(job)) == (
        "succeeded", 2, ["retry", "succeeded"],
    )  # fmt: skip
    [callback_id] = job["callbacks"]
    assert server.wait_job(callback_id)["task"] == SUCCESS_SINK
    assert len(_runs(server, "on_success", retried)) == 1
    # Failed for good: on_failure once, with the failed job.
    job = server.wait_job(failed)
    assert (job["state"], job["attempts"], _outcomes(job)) == ("failed", 2, ["retry", "failed"])
    [callback_id] = job["callbacks"]
    callback = server.wait_job(callback_id)
    assert (callback["state"], callback["task"]) == ("succeeded", FAILURE_SINK)
    [run] = _runs(server, "on_failure", failed)
    assert run["received"]["state"] == "failed"
    assert run["received"]["error"]["message"] == "failure 2 of 5"
    # Cancelled: neither.
    assert server.job(waiting)["callbacks"] == []
    for parent_id in (retried, failed, waiting):
        assert len(_children(server, parent_id, SUCCESS_SINK)) == int(parent_id == retried)
        assert len(_children(server, parent_id, FAILURE_SINK)) == int(parent_id == failed)
    assert _runs(server, "on_failure", retried) == []
    assert _runs(server, "on_success", failed) == []
    assert server.records_of("cb-cancelled") == []


def test_a_callback_named_in_post_jobs_runs_and_an_unknown_name_is_422(
    server: UwsgiServer,
) -> None:
    parent_id = server.enqueue("mark", "cb-by-name", on_success=SUCCESS_SINK)
    parent = server.wait_job(parent_id)
    assert (parent["state"], parent["on_success"]) == ("succeeded", SUCCESS_SINK)
    [callback_id] = parent["callbacks"]
    assert server.wait_job(callback_id)["parent_id"] == parent_id
    assert len(_runs(server, "on_success", parent_id)) == 1
    for option in ("on_success", "on_failure"):
        body = {"task": "tests.jobs.mark", "args": ["cb-unknown"], option: "tests.jobs.nope"}
        answer = server.post("/jobs", body)
        assert answer.status == 422, answer
        assert "tests.jobs.nope" in answer.json()["error"]
    assert server.records_of("cb-unknown") == []


# -- webhooks: refused addresses ----------------------------------------------------------------


def test_a_webhook_to_a_private_address_fails_at_once_and_connects_nowhere(
    server: UwsgiServer,
) -> None:
    """Without SPOOLKIT_WEBHOOK_ALLOW_PRIVATE: one attempt, failed, the refusal named, and
    no connection reaches the listeners on the port every URL names."""
    with contextlib.ExitStack() as stack:
        v4 = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        port = v4.getsockname()[1]
        v6 = stack.enter_context(
            socket.create_server(("::1", port), family=socket.AF_INET6, dualstack_ipv6=False)
        )
        refusals = {
            f"http://127.0.0.1:{port}/hook": ("127.0.0.1", {"loopback"}),
            f"http://10.0.0.1:{port}/hook": ("10.0.0.1", {"private"}),
            f"http://169.254.169.254:{port}/hook": ("169.254.169.254", {"link-local", "private"}),
            f"http://[::1]:{port}/hook": ("::1", {"loopback"}),
            f"http://[::ffff:127.0.0.1]:{port}/hook": ("::ffff:127.0.0.1", {"loopback"}),
            f"http://0.0.0.0:{port}/hook": ("0.0.0.0", {"unspecified", "private"}),
            f"https://224.0.0.1:{port}/hook": ("224.0.0.1", {"multicast"}),
            f"http://localhost:{port}/hook": ("localhost", {"loopback"}),
        }
        parents = {url: server.enqueue("add", 1, 2, callback_url=url) for url in refusals}
        for url, parent_id in parents.items():
            parent = server.wait_job(parent_id)
            assert (parent["state"], parent["callback_url"]) == ("succeeded", url)
            [webhook_id] = parent["callbacks"]
            webhook = server.wait_job(webhook_id)
            assert (webhook["task"], webhook["parent_id"]) == (WEBHOOK, parent_id)
            assert (webhook["state"], webhook["attempts"], _outcomes(webhook)) == (
                "failed", 1, ["failed"],
            ), url  # fmt: skip
            assert webhook["error"]["type"] == "spoolkit.retry.GiveUp"
            message = webhook["error"]["message"]
            host, kinds = refusals[url]
            assert f"webhook to {host!r} refused" in message, message
            assert any(f"is a {kind} address" in message for kind in kinds), message
        for listener in (v4, v6):
            listener.setblocking(False)
            with pytest.raises(BlockingIOError):
                listener.accept()


# -- webhooks: delivered, signed, retried --------------------------------------------------------


@dataclass
class Delivery:
    path: str
    signed: bool
    job_header: str | None
    body: dict[str, Any]


@dataclass
class Receiver:
    """Records each POST; ``/flaky`` answers 500 twice, then 200; other paths 200."""

    port: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def take(self, delivery: Delivery) -> int:
        with self.lock:
            self.deliveries.append(delivery)
            seen = sum(1 for d in self.deliveries if d.path == delivery.path)
        if not delivery.signed:
            return 401
        return 500 if delivery.path == "/flaky" and seen <= 2 else 200

    def to(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.path == path]


def _signed(header: str, body: bytes) -> bool:
    """``Spoolkit-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">``, recent."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    stamp, given = parts.get("t", ""), parts.get("v1", "")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
        return False
    expected = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), given)


@contextlib.contextmanager
def receiving_webhooks() -> Iterator[Receiver]:
    """An HTTP receiver on 127.0.0.1 in a thread, stopped on the way out."""
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            delivery = Delivery(
                path=self.path,
                signed=_signed(self.headers.get("Spoolkit-Signature", ""), body),
                job_header=self.headers.get("Spoolkit-Job-Id"),
                body=json.loads(body),
            )
            status = receiver.take(delivery)
            answer = json.dumps({"status": status}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def test_a_webhook_is_signed_and_retried_until_the_receiver_takes_it(
    receiving: UwsgiServer,
) -> None:
    server = receiving
    with receiving_webhooks() as receiver:
        parent_id = server.enqueue("add", 2, 3, callback_url=receiver.url("/flaky"))
        parent = server.wait_job(parent_id)
        [webhook_id] = parent["callbacks"]
        webhook = server.wait_job(webhook_id, timeout=30)
        deliveries = receiver.to("/flaky")
    assert (webhook["task"], webhook["parent_id"]) == (WEBHOOK, parent_id)
    assert (webhook["state"], webhook["attempts"]) == ("succeeded", 3), webhook
    assert _outcomes(webhook) == ["retry", "retry", "succeeded"]
    assert [a["error"]["message"][:30] for a in webhook["history"][:2]] == [
        "the receiver answered HTTP 500"
    ] * 2
    assert webhook["result"]["status"] == 200
    assert len(deliveries) == 3
    for delivery in deliveries:
        assert delivery.signed, delivery
        assert delivery.job_header == parent_id
        assert delivery.body["id"] == parent_id
        assert delivery.body["state"] == "succeeded"
        assert delivery.body["result"] == 5
        assert delivery.body["callbacks"] == [webhook_id]


def test_a_webhook_is_sent_when_a_job_is_cancelled(receiving: UwsgiServer) -> None:
    server = receiving
    with receiving_webhooks() as receiver:
        parent_id = server.enqueue("add", 1, 1, countdown=60, callback_url=receiver.url("/cancel"))
        answer = server.request("DELETE", f"/jobs/{parent_id}")
        assert answer.status == 200 and answer.json()["state"] == "cancelled"
        [webhook_id] = server.job(parent_id)["callbacks"]
        webhook = server.wait_job(webhook_id)
        deliveries = receiver.to("/cancel")
    assert (webhook["state"], webhook["attempts"]) == ("succeeded", 1), webhook
    [delivery] = deliveries
    assert delivery.signed and delivery.job_header == parent_id
    assert delivery.body["state"] == "cancelled"
    assert delivery.body["callbacks"] == [webhook_id]


def test_a_callback_url_without_a_webhook_secret_is_422(restarting: UwsgiServer) -> None:
    body = {"task": "tests.jobs.mark", "args": ["no-secret"], "callback_url": "https://x.test/"}
    answer = restarting.post("/jobs", body)
    assert answer.status == 422, answer
    assert "SPOOLKIT_WEBHOOK_SECRET" in answer.json()["error"]
    assert restarting.get("/jobs?task=tests.jobs.mark").json()["jobs"] == []


# -- idempotent enqueue -------------------------------------------------------------------------


def test_concurrent_posts_with_one_idempotency_key_make_one_job(server: UwsgiServer) -> None:
    body = {"task": "tests.jobs.keyed", "args": ["idem-once"]}
    barrier = threading.Barrier(20)

    def post(_: int) -> Response:
        barrier.wait(10)
        return server.post("/jobs", body, headers={"Idempotency-Key": "order-1234"})

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, range(20)))
    assert {answer.status for answer in answers} <= {200, 202}, answers
    [job_id] = {answer.json()["id"] for answer in answers}
    assert {answer.headers["Location"] for answer in answers} == {f"/jobs/{job_id}"}
    replayed = [_header(answer, "Idempotent-Replayed") for answer in answers]
    assert sorted(replayed, key=str) == [None] + ["true"] * 19
    assert server.wait_job(job_id)["state"] == "succeeded"
    again = server.post("/jobs", body, headers={"Idempotency-Key": "order-1234"})
    assert again.status == 200 and again.json()["id"] == job_id
    assert _header(again, "Idempotent-Replayed") == "true"
    listed = server.get("/jobs?task=tests.jobs.keyed&limit=1000").json()["jobs"]
    assert [job["id"] for job in listed] == [job_id]
    assert len(server.records_of("idem-once")) == 1
    # The replays' staged spool files went with them.
    wait_for(lambda: not server.spool_files(), 10, "the spool directory to empty")


def test_an_idempotency_key_with_other_arguments_is_422(server: UwsgiServer) -> None:
    headers = {"Idempotency-Key": "order-5678"}
    first = server.post("/jobs", {"task": "tests.jobs.keyed", "args": ["idem-a"]}, headers=headers)
    assert first.status == 202, first
    other = server.post("/jobs", {"task": "tests.jobs.keyed", "args": ["idem-b"]}, headers=headers)
    assert other.status == 422, other
    assert first.json()["id"] in other.json()["error"]
    server.wait_job(first.json()["id"])
    assert server.records_of("idem-b") == []


def test_the_render_route_honours_the_idempotency_key(server: UwsgiServer) -> None:
    """The example app's own route: a client retrying POST /render gets the first job."""
    headers = {"Idempotency-Key": "render-script-7"}
    body = {"text_list": ["hello"]}
    first = server.post("/render/script-7", body, headers=headers)
    assert first.status == 202, first
    second = server.post("/render/script-7", body, headers=headers)
    assert second.status in (200, 202), second
    assert second.json()["id"] == first.json()["id"], "app.py does not pass Idempotency-Key on"
    assert _header(second, "Idempotent-Replayed") == "true"
    other = server.post("/render/script-7", {"text_list": ["bye"]}, headers=headers)
    assert other.status == 422, other


# -- timeouts -----------------------------------------------------------------------------------


def test_a_timeout_raises_jobtimeout_runs_finally_and_is_retried(server: UwsgiServer) -> None:
    job = server.wait_job(server.enqueue("overruns", "timeout-caught", 30))
    assert (job["state"], job["attempts"], job["timeout"]) == ("failed", 2, 0.5)
    assert job["error"]["type"] == "Timeout"
    assert "timeout of 0.5 s" in job["error"]["message"]
    assert _outcomes(job) == ["timeout", "timeout"]
    assert _events(server, "timeout-caught") == ["start", "finally"] * 2


def test_a_task_that_ignores_jobtimeout_is_killed_after_the_grace(server: UwsgiServer) -> None:
    deaths = server.spooler_deaths()
    started = time.monotonic()
    job = server.wait_job(server.enqueue("ignores_timeout", "timeout-ignored", 30), timeout=20)
    assert time.monotonic() - started < 15
    assert (job["state"], job["attempts"]) == ("failed", 1)
    assert job["error"]["type"] == "Timeout"
    assert "ignored JobTimeout" in job["error"]["message"]
    assert _outcomes(job) == ["timeout"]
    assert _events(server, "timeout-ignored") == ["start", "ignored"]
    assert server.spooler_deaths() == deaths + 1


def test_a_timeout_given_in_post_jobs(server: UwsgiServer) -> None:
    job_id = server.enqueue("sleeper", "timeout-posted", 30, timeout=0.5, max_attempts=1)
    job = server.wait_job(job_id)
    assert (job["state"], job["attempts"], job["timeout"]) == ("failed", 1, 0.5)
    assert job["error"]["type"] == "Timeout"
    assert _outcomes(job) == ["timeout"]
    assert _events(server, "timeout-posted") == ["start"]
    bad = server.post("/jobs", {"task": "tests.jobs.add", "args": [1, 2], "timeout": -1})
    assert bad.status == 422, bad


# -- abort --------------------------------------------------------------------------------------


def test_abort_of_a_task_that_checks_the_flag(server: UwsgiServer) -> None:
    job_id = server.enqueue("stops_on_abort", "abort-checked", 30)
    _started(server, job_id, "abort-checked")
    answer = server.post(f"/jobs/{job_id}/abort")
    assert answer.status == 202, answer
    assert answer.json()["abort_requested"] is True
    assert answer.json()["state"] == "running"
    job = server.wait_job(job_id, timeout=10)
    assert (job["state"], job["attempts"], _outcomes(job)) == ("cancelled", 1, ["aborted"])
    assert job["callbacks"] == []
    time.sleep(1.5)  # no retry, no callback, later either
    job = server.job(job_id)
    assert (job["state"], job["attempts"], job["callbacks"]) == ("cancelled", 1, [])
    assert _events(server, "abort-checked") == ["start", "aborted"]
    assert _children(server, job_id, SUCCESS_SINK) == _children(server, job_id, FAILURE_SINK) == []


def test_abort_of_a_task_that_ignores_the_flag_kills_it(server: UwsgiServer) -> None:
    deaths = server.spooler_deaths()
    job_id = server.enqueue("ignores_abort", "abort-ignored", 30)
    _started(server, job_id, "abort-ignored")
    asked = time.monotonic()
    answer = server.post(f"/jobs/{job_id}/abort")
    assert answer.status == 202 and answer.json()["abort_requested"] is True
    job = server.wait_job(job_id, timeout=20)
    assert time.monotonic() - asked >= 1.5  # SPOOLKIT_ABORT_GRACE
    assert (job["state"], job["attempts"], _outcomes(job)) == ("cancelled", 1, ["aborted"])
    assert job["callbacks"] == []
    time.sleep(1.5)
    assert server.job(job_id)["attempts"] == 1
    assert _events(server, "abort-ignored") == ["start"]
    assert server.spooler_deaths() == deaths + 1
    assert f"job {job_id}: abort asked" in server.log_text()


def test_abort_of_waiting_finished_and_unknown_jobs(server: UwsgiServer) -> None:
    scheduled = server.enqueue("mark", "abort-scheduled", countdown=60)
    answer = server.post(f"/jobs/{scheduled}/abort")
    assert answer.status == 200 and answer.json()["state"] == "cancelled"
    # Both spoolers busy: the next job stays queued.
    busy = [server.enqueue("sleeper", f"abort-busy-{i}", 2) for i in range(2)]
    for i, job_id in enumerate(busy):
        _started(server, job_id, f"abort-busy-{i}")
    queued = server.enqueue("mark", "abort-queued")
    assert server.job(queued)["state"] == "queued"
    answer = server.post(f"/jobs/{queued}/abort")
    assert answer.status == 200 and answer.json()["state"] == "cancelled"
    for job_id in busy:
        assert server.wait_job(job_id)["state"] == "succeeded"
    finished = server.post(f"/jobs/{busy[0]}/abort")
    assert finished.status == 409, finished
    assert server.post("/jobs/no-such-job/abort").status == 404
    wait_for(lambda: not server.spool_files(), 10, "the cancelled jobs' files to be dropped")
    assert server.records_of("abort-scheduled") == server.records_of("abort-queued") == []
    assert server.job(scheduled)["state"] == server.job(queued)["state"] == "cancelled"


# -- history ------------------------------------------------------------------------------------


def test_a_spooler_killed_by_its_task_is_worker_lost_in_the_history(server: UwsgiServer) -> None:
    job = server.wait_job(server.enqueue("kills_itself", "history-lost"), timeout=30)
    assert (job["state"], job["attempts"]) == ("failed", 3)
    assert job["error"]["type"] == "WorkerLost"
    assert _outcomes(job) == ["worker_lost"] * 3
    assert [attempt["attempt"] for attempt in job["history"]] == [1, 2, 3]
    assert len(server.records_of("history-lost")) == 3


# -- a callback and a crash right after the outcome ---------------------------------------------


def test_a_callback_is_queued_once_when_the_spooler_dies_after_the_outcome(
    restarting: UwsgiServer,
) -> None:
    """The spooler is held between the outcome's commit and handing the callback over
    (tests.jobs.PAUSE_AFTER_OUTCOME), then killed: the callback runs, once, from the row
    recorded with the outcome."""
    server = restarting
    marker = server.base / "paused.json"
    parent_id = server.enqueue("succeeds_with_callback", "paused-parent")
    wait_for(marker.exists, 30, "a spooler to pause after recording an outcome")
    paused = json.loads(marker.read_text())
    parent = server.job(parent_id)
    assert (parent["state"], parent["attempts"]) == ("succeeded", 1)
    [callback_id] = parent["callbacks"]
    assert paused["jobs"] == [callback_id]
    assert server.job(callback_id)["state"] == "queued"
    assert server.spool_file_of(callback_id) is None  # recorded, not handed over
    os.kill(paused["pid"], signal.SIGKILL)
    callback = server.wait_job(callback_id, timeout=30)
    assert (callback["state"], callback["parent_id"]) == ("succeeded", parent_id)
    assert [job["id"] for job in _children(server, parent_id, SUCCESS_SINK)] == [callback_id]
    assert len(_runs(server, "on_success", parent_id)) == 1
    wait_for(lambda: server.spool_file_of(parent_id) is None, 10, "the parent's file to go")
    parent = server.job(parent_id)
    assert (parent["state"], parent["attempts"], _outcomes(parent)) == (
        "succeeded", 1, ["succeeded"],
    )  # fmt: skip
    assert parent["callbacks"] == [callback_id]
    assert len(server.records_of("paused-parent")) == 1


def test_kill_storm_queues_each_callback_exactly_once(tmp_path: Path) -> None:
    with UwsgiServer(tmp_path, SPOOLKIT_MAX_BACKOFF="1") as server:
        stop, killed = threading.Event(), []

        def storm() -> None:
            while not stop.wait(0.2):
                pids = server.spooler_pids()
                if pids:
                    victim = pids[len(killed) % len(pids)]
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
                        killed.append(victim)

        thread = threading.Thread(target=storm, daemon=True)
        thread.start()
        try:
            parents = [
                server.enqueue("storm", "storm-parent", 0.1, on_success=SUCCESS_SINK)
                for _ in range(30)
            ] + [
                server.enqueue("always_fails", "storm-failing", on_failure=FAILURE_SINK)
                for _ in range(10)
            ]
            wait_for(
                lambda: all(server.job(job_id)["state"] in FINAL for job_id in parents),
                90, "every parent to finish", interval=0.5,
            )  # fmt: skip
        finally:
            stop.set()
            thread.join()
        # A spooler killed while handing callbacks over can leave one staged, not due
        # until its hold ends (SPOOLKIT_STORE_TIMEOUT + 30 s): allow for that.
        children = {SUCCESS_SINK: [], FAILURE_SINK: []}

        def callbacks_done() -> bool:
            for task in children:
                children[task] = server.get(f"/jobs?task={task}&limit=1000").json()["jobs"]
            return all(job["state"] in FINAL for jobs in children.values() for job in jobs)

        wait_for(callbacks_done, 60, "every callback to finish", interval=0.5)
        jobs = {job_id: server.job(job_id) for job_id in parents}
        made = {
            task: collections.Counter(job["parent_id"] for job in found)
            for task, found in children.items()
        }
        assert killed, "the storm killed no spooler"
        for job_id, job in jobs.items():
            assert job["state"] in FINAL, job
            wants_success = job["on_success"] is not None and job["state"] == "succeeded"
            wants_failure = job["on_failure"] is not None and job["state"] == "failed"
            assert made[SUCCESS_SINK][job_id] == int(wants_success), job
            assert made[FAILURE_SINK][job_id] == int(wants_failure), job
            assert len(job["callbacks"]) == int(wants_success) + int(wants_failure)
        orphans = {parent for counts in made.values() for parent in counts} - set(parents)
        assert not orphans
        assert sum(made[FAILURE_SINK].values()) == 10  # always_fails always fails


# -- restarts -----------------------------------------------------------------------------------


def test_abort_then_a_full_restart_never_runs_the_job_again(restarting: UwsgiServer) -> None:
    server = restarting
    job_id = server.enqueue("ignores_abort", "abort-restart", 30)
    _started(server, job_id, "abort-restart")
    answer = server.post(f"/jobs/{job_id}/abort")
    assert answer.status == 202 and answer.json()["abort_requested"] is True
    server.stop()  # at once, well inside SPOOLKIT_ABORT_GRACE
    server.start()
    job = server.wait_job(job_id, timeout=20)
    assert (job["state"], job["attempts"]) == ("cancelled", 1)
    assert _outcomes(job) == ["interrupted", "aborted"]
    assert job["callbacks"] == []
    time.sleep(2)
    assert server.job(job_id)["state"] == "cancelled"
    assert _events(server, "abort-restart") == ["start"]


def test_an_attempt_cut_short_by_a_restart_is_interrupted_in_the_history(
    restarting: UwsgiServer,
) -> None:
    server = restarting
    job_id = server.enqueue("blocks_first_run", "history-restart", 30)
    _started(server, job_id, "history-restart")
    server.stop()
    server.start()
    job = server.wait_job(job_id, timeout=20)
    assert (job["state"], job["attempts"], job["result"]) == ("succeeded", 1, 2)
    assert _outcomes(job) == ["interrupted", "succeeded"]
    assert [attempt["attempt"] for attempt in job["history"]] == [1, 1]
    assert len(server.records_of("history-restart")) == 2


# -- an outcome that is hard to read back -------------------------------------------------------


def test_a_deeply_nested_result_is_recorded_once_with_its_callback(tmp_path: Path) -> None:
    """A result the spooler can encode, nested nearly as deep as JSON allows here:
    recording the outcome reads the row back (and encodes it again for the callback)
    several frames deeper. Whatever the outcome, it is recorded after one run, and a
    succeeded job with on_success gets exactly one callback. (Read through the list,
    which leaves results out: this test's own stack is too deep to parse them.)"""
    with UwsgiServer(tmp_path) as server:
        jobs = {}
        for slack in range(1, 13):
            for callback in (False, True):
                options = {"on_success": SUCCESS_SINK} if callback else {}
                tag = f"deep-{slack}-{callback}"
                jobs[tag] = server.enqueue("deepest_result", tag, slack, **options)

        def listed() -> dict[str, dict[str, Any]]:
            found = server.get("/jobs?task=tests.jobs.deepest_result&limit=100").json()["jobs"]
            return {job["id"]: job for job in found}

        with contextlib.suppress(TimeoutError):
            wait_for(
                lambda: all(job["state"] in FINAL for job in listed().values()),
                25, "every job to finish", interval=0.5,
            )  # fmt: skip
        shown, wrong = listed(), {}
        for tag, job_id in jobs.items():
            job = shown[job_id]
            runs = len(server.records_of(tag))
            callbacks = len(_children(server, job_id, SUCCESS_SINK))
            seen = (job["state"], job["attempts"], runs, (job["error"] or {}).get("type"))
            wants_callback = int(job["on_success"] is not None and job["state"] == "succeeded")
            if job["state"] not in FINAL or seen[1:3] != (1, 1) or callbacks != wants_callback:
                wrong[tag] = (*seen, callbacks)
        assert not wrong, f"(state, attempts, runs, error, callbacks) by tag: {wrong}"
