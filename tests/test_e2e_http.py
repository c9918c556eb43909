"""The /jobs HTTP API's errors and its token, against a real uWSGI."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from .support import UwsgiServer, running_server

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"task": "tests.jobs.nope"}, 404, "no task named"),
        ({}, 422, "'task' must be"),
        ({"task": 5}, 422, "'task' must be"),
        ({"task": "tests.jobs.add", "args": {"a": 1}}, 422, "'args' must be a list"),
        (
            {"task": "tests.jobs.add", "args": [1, 2], "kwargs": [1]},
            422,
            "'kwargs' must be an object",
        ),
        ({"task": "tests.jobs.add", "args": [1]}, 422, "missing a required argument: 'b'"),
        ({"task": "tests.jobs.add", "args": [1, 2, 3]}, 422, "too many positional arguments"),
        ({"task": "tests.jobs.add", "args": [1, 2], "countdown": -1}, 422, "countdown"),
        ({"task": "tests.jobs.add", "args": [1, 2], "countdown": "soon"}, 422, "countdown"),
        ({"task": "tests.jobs.add", "args": [1, 2], "at": "tomorrow"}, 422, "ISO 8601"),
        ({"task": "tests.jobs.add", "args": [1, 2], "at": 10**12, "countdown": 1}, 422, "not both"),
        ({"task": "tests.jobs.add", "args": [1, 2], "priority": 100}, 422, "priority"),
        ({"task": "tests.jobs.add", "args": [1, 2], "priority": "../../etc"}, 422, "priority"),
        ({"task": "tests.jobs.add", "args": [1, 2], "max_attempts": 0}, 422, "max_attempts"),
        ({"task": "tests.jobs.add", "args": [1, 2], "max_attempts": "3"}, 422, "max_attempts"),
        (
            {"task": "tests.jobs.add", "args": [1, 2], "colour": "red"},
            422,
            "unknown fields: colour",
        ),
        ([1, 2], 422, "JSON object"),
    ],
)
def test_bad_job_requests_get_json_errors(
    server: UwsgiServer, body: object, status: int, fragment: str
) -> None:
    response = server.post("/jobs", body)
    assert response.status == status, response
    assert fragment in response.json()["error"]


def test_malformed_json_is_400(server: UwsgiServer) -> None:
    response = server.post("/jobs", raw=b'{"task": ')
    assert response.status == 400
    assert response.json() == {"error": "request body is not valid JSON"}


def test_chunked_body_is_not_read(server: UwsgiServer) -> None:
    body = b'{"task": "tests.jobs.add", "args": [1, 2]}'
    request = (
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + f"{len(body):x}".encode()
        + b"\r\n"
        + body
        + b"\r\n0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"not valid JSON" in answer


def test_query_string_uwsgi_could_not_fit_is_refused_not_dropped(tmp_path: Path) -> None:
    # Just over buffer-size, uWSGI drops QUERY_STRING and still calls the app
    # (further over, it drops the whole request and answers nothing).
    with UwsgiServer(tmp_path, extra_args=("--buffer-size", "4096")) as server:
        response = server.get("/jobs?state=failed&task=" + "x" * 3500)
        assert response.status == 414
        assert "buffer-size" in response.json()["error"]
        assert server.get("/jobs?state=failed&task=x").status == 200


def test_long_query_strings_fit_the_default_buffer(server: UwsgiServer) -> None:
    assert server.get("/jobs?state=failed&task=" + "x" * 30_000).status == 200


def test_unknown_job_is_404(server: UwsgiServer) -> None:
    for method, path in (("GET", "/jobs/unknown"), ("POST", "/jobs/unknown/retry")):
        response = server.request(method, path)
        assert response.status == 404
        assert "no job" in response.json()["error"]


def test_list_validates_its_query(server: UwsgiServer) -> None:
    assert server.get("/jobs?state=lost").status == 422
    assert server.get("/jobs?limit=0").status == 422
    assert server.get("/jobs?limit=abc").status == 422
    assert server.get("/jobs?limit=1001").status == 422
    assert server.get("/jobs?limit=5&limit=abc").status == 422
    assert server.get("/jobs?state=queued&state=lost").status == 422
    assert server.get("/jobs?limit=1").status == 200


def test_unrouted_paths_answer_json_too(server: UwsgiServer) -> None:
    response = server.request("PUT", "/jobs/x")
    assert response.status == 405
    assert "error" in response.json()
    assert server.get("/nothing-here").json()["error"]


def test_oversized_body_is_refused_from_its_headers(tmp_path: Path) -> None:
    with running_server(tmp_path, SPOOLKIT_MAX_REQUEST_BYTES="2000") as server:
        body = {"task": "tests.jobs.echo", "args": ["x" * 3000]}
        response = server.post("/jobs", body)
        assert response.status == 413
        assert "2000 bytes" in response.json()["error"]
        assert server.get("/jobs").json()["jobs"] == []
        assert server.post("/jobs", {"task": "tests.jobs.echo", "args": ["ok"]}).status == 202


def test_token_guards_every_jobs_route_but_not_healthz(tmp_path: Path) -> None:
    with running_server(tmp_path, SPOOLKIT_API_TOKEN="s3cret-token") as server:
        good = {"Authorization": "Bearer s3cret-token"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            for method, path in (("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/x"),
                                 ("DELETE", "/jobs/x"), ("POST", "/jobs/x/retry")):  # fmt: skip
                response = server.request(method, path, headers=headers)
                assert response.status == 401, (method, path, headers)
                assert response.headers["WWW-Authenticate"] == "Bearer"
                assert response.json()["error"] == "missing or wrong bearer token"
        assert server.get("/healthz").status == 200
        created = server.post("/jobs", {"task": "tests.jobs.add", "args": [2, 3]}, headers=good)
        assert created.status == 202
        job_id = created.json()["id"]
        assert server.get(f"/jobs/{job_id}", headers=good).status in (200, 202)
        assert server.get("/jobs", headers=good).status == 200
