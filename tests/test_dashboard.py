"""The dashboard over Flask's test client and a real SQLite store (local mode): access,
anti-forgery, escaping, actions, filters. The real browser test is
tests/test_dashboard_browser.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from spoolkit import SpoolKit
from spoolkit.dashboard import PAGE_SIZE
from spoolkit.errors import ConfigurationError

from .support import make_app, wait_for

SCRIPT = "<script>window.__xss=1</script>"
TOKEN = "dash-token"


def _client(tmp_path: Path, **config: Any) -> tuple[Flask, FlaskClient]:
    app = make_app(tmp_path, **config)
    return app, app.test_client()


def _csrf(client: FlaskClient, path: str = "/dashboard") -> str:
    page = client.get(path)
    found = re.search(r'name="spoolkit-csrf" content="([^"]+)"', page.get_data(as_text=True))
    assert found, f"no anti-forgery token on {path}"
    return found.group(1)


def _enqueue(client: FlaskClient, task: str, *args: Any, **options: Any) -> str:
    answer = client.post("/jobs", json={"task": f"tests.jobs.{task}", "args": list(args),
                                        **options})  # fmt: skip
    assert answer.status_code == 202, answer.get_data(as_text=True)
    return str(answer.get_json()["id"])


def _state(client: FlaskClient, job_id: str) -> str:
    return str(client.get(f"/jobs/{job_id}").get_json()["state"])


def _finished(client: FlaskClient, job_id: str) -> str:
    return wait_for(lambda: (s := _state(client, job_id)) in {"succeeded", "failed"} and s,
                    10, f"job {job_id} to finish")  # fmt: skip


# -- access ----------------------------------------------------------------------------------


def test_open_dashboard_says_so_and_guards_its_pages(tmp_path: Path) -> None:
    _, client = _client(tmp_path)
    page = client.get("/dashboard")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert 'id="open-banner"' in text and 'id="count-queued"' in text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    cookie = page.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie


def test_a_token_needs_a_sign_in_kept_in_a_signed_cookie(tmp_path: Path) -> None:
    _, client = _client(tmp_path, SPOOLKIT_API_TOKEN=TOKEN)
    first = client.get("/dashboard/jobs?state=failed")
    assert first.status_code == 303
    assert first.headers["Location"].startswith("/dashboard/sign-in?next=")
    csrf = _csrf(client, "/dashboard/sign-in")
    wrong = client.post("/dashboard/sign-in", data={"token": "nope", "csrf": csrf})
    assert wrong.status_code == 401 and "wrong token" in wrong.get_data(as_text=True)
    assert client.get("/dashboard").status_code == 303
    right = client.post("/dashboard/sign-in", data={
        "token": TOKEN, "csrf": csrf, "next": "/dashboard/jobs?state=failed"})  # fmt: skip
    assert right.status_code == 303 and right.headers["Location"] == "/dashboard/jobs?state=failed"
    page = client.get("/dashboard")
    assert page.status_code == 200 and 'id="open-banner"' not in page.get_data(as_text=True)
    assert client.post("/dashboard/sign-out", data={"csrf": _csrf(client)}).status_code == 303
    assert client.get("/dashboard").status_code == 303


def test_a_forged_cookie_or_a_bearer_header(tmp_path: Path) -> None:
    app, client = _client(tmp_path, SPOOLKIT_API_TOKEN=TOKEN)
    client.set_cookie("spoolkit_dashboard", "e30.forged.signature", path="/dashboard")
    assert client.get("/dashboard").status_code == 303
    with_header = app.test_client().get("/dashboard", headers={"Authorization": f"Bearer {TOKEN}"})
    assert with_header.status_code == 200


def test_sign_in_never_redirects_off_the_dashboard(tmp_path: Path) -> None:
    _, client = _client(tmp_path, SPOOLKIT_API_TOKEN=TOKEN)
    csrf = _csrf(client, "/dashboard/sign-in")
    for target in ("https://evil.example/", "//evil.example/x", "/elsewhere", "/\\evil.example"):
        answer = client.post("/dashboard/sign-in", data={"token": TOKEN, "csrf": csrf,
                                                         "next": target})  # fmt: skip
        assert answer.headers["Location"] == "/dashboard", target
        csrf = _csrf(client)


def test_a_token_without_a_secret_key_refuses_to_start(tmp_path: Path) -> None:
    app = Flask("nosecret")
    app.config.update(SPOOLKIT_DATABASE=str(tmp_path / "j.db"), SPOOLKIT_API_TOKEN=TOKEN)
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        SpoolKit(app)
    app = Flask("nodashboard")
    app.config.update(SPOOLKIT_DATABASE=str(tmp_path / "k.db"), SPOOLKIT_API_TOKEN=TOKEN,
                      SPOOLKIT_DASHBOARD=False)  # fmt: skip
    SpoolKit(app)
    assert app.test_client().get("/dashboard").status_code == 404


# -- anti-forgery ----------------------------------------------------------------------------


def test_an_action_without_the_form_token_changes_nothing(tmp_path: Path) -> None:
    _, client = _client(tmp_path)
    job_id = _enqueue(client, "mark", "csrf", countdown=3600)
    assert client.post(f"/dashboard/jobs/{job_id}/cancel").status_code == 403
    assert client.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf": "guess"}).status_code == 403
    csrf = _csrf(client)
    cross = client.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf": csrf},
                        headers={"Origin": "https://evil.example"})  # fmt: skip
    assert cross.status_code == 403
    assert _state(client, job_id) == "scheduled"
    done = client.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf": csrf},
                       headers={"Origin": "http://localhost"})  # fmt: skip
    assert done.status_code == 303 and _state(client, job_id) == "cancelled"


# -- job data is escaped ---------------------------------------------------------------------


def test_arguments_results_and_errors_are_escaped(tmp_path: Path) -> None:
    _, client = _client(tmp_path)
    echoed = _enqueue(client, "echo", SCRIPT)
    assert _finished(client, echoed) == "succeeded"
    failed = _enqueue(client, "always_fails", SCRIPT, max_attempts=1)
    assert _finished(client, failed) == "failed"
    pages = [client.get(f"/dashboard/jobs/{echoed}"), client.get(f"/dashboard/jobs/{failed}"),
             client.get("/dashboard/jobs")]  # fmt: skip
    for page in pages:
        text = page.get_data(as_text=True)
        assert SCRIPT not in text
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in pages[0].get_data(as_text=True)
    assert 'id="job-error"' in pages[1].get_data(as_text=True)


# -- actions ---------------------------------------------------------------------------------


def test_cancel_retry_and_stop_say_what_happened(tmp_path: Path) -> None:
    _, client = _client(tmp_path)
    job_id = _enqueue(client, "mark", "acts", countdown=3600)
    csrf = _csrf(client)
    page = client.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf": csrf},
                       follow_redirects=True)  # fmt: skip
    assert 'id="notice"' in page.get_data(as_text=True) and "cancelled" in page.get_data(as_text=True)
    again = client.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf": csrf},
                        follow_redirects=True).get_data(as_text=True)  # fmt: skip
    assert 'class="notice bad"' in again and "only queued or scheduled" in again
    client.post(f"/dashboard/jobs/{job_id}/retry", data={"csrf": csrf})
    assert _finished(client, job_id) == "succeeded"
    waiting = _enqueue(client, "mark", "stop", countdown=3600)
    client.post(f"/dashboard/jobs/{waiting}/stop", data={"csrf": csrf})
    assert _state(client, waiting) == "cancelled"
    assert client.post(f"/dashboard/jobs/{waiting}/explode", data={"csrf": csrf}).status_code == 404
    assert client.post("/dashboard/jobs/nope/retry", data={"csrf": csrf}).status_code == 404


def test_every_failed_job_of_a_task_is_retried_at_once(tmp_path: Path) -> None:
    _, client = _client(tmp_path)
    failed = [_enqueue(client, "flaky", f"bulk-{i}", 1, max_attempts=1) for i in range(3)]
    other = _enqueue(client, "always_fails", "other", max_attempts=1)
    for job_id in [*failed, other]:
        assert _finished(client, job_id) == "failed"
    listing = client.get("/dashboard/jobs?state=failed&task=tests.jobs.flaky").get_data(as_text=True)
    assert "Retry every failed job of tests.jobs.flaky" in listing
    answer = client.post("/dashboard/tasks/tests.jobs.flaky/retry-failed",
                         data={"csrf": _csrf(client)}, follow_redirects=True)  # fmt: skip
    assert "3 failed job(s) of tests.jobs.flaky queued again" in answer.get_data(as_text=True)
    assert [_finished(client, job_id) for job_id in failed] == ["succeeded"] * 3
    assert _state(client, other) == "failed"


# -- the list --------------------------------------------------------------------------------


def test_filters_search_and_pages(tmp_path: Path) -> None:
    _, client = _client(tmp_path)
    ids = [_enqueue(client, "mark", f"page-{i}", countdown=3600) for i in range(PAGE_SIZE + 5)]
    slow = _enqueue(client, "mark", "slow", countdown=3600, queue="slow")
    first = client.get("/dashboard/jobs?state=scheduled").get_data(as_text=True)
    assert first.count("data-job-id=") == PAGE_SIZE and 'rel="next"' in first
    second = client.get("/dashboard/jobs?state=scheduled&page=2").get_data(as_text=True)
    assert second.count("data-job-id=") == 6 and 'rel="next"' not in second
    assert "state=scheduled" in re.search(r'rel="prev" href="([^"]+)"', second).group(1)  # type: ignore[union-attr]
    found = client.get(f"/dashboard/jobs?q={ids[7][:10]}").get_data(as_text=True)
    assert f'data-job-id="{ids[7]}"' in found
    queue = client.get("/dashboard/jobs?queue=slow").get_data(as_text=True)
    assert re.findall(r'data-job-id="([^"]+)"', queue) == [slow]
    assert client.get("/dashboard/jobs?state=lost").status_code == 400
    assert client.get("/dashboard/jobs?page=0").status_code == 400
    assert client.get("/dashboard/jobs?page=%C2%B2").status_code == 400


def test_progress_and_a_large_result(tmp_path: Path) -> None:
    _, client = _client(tmp_path)
    stepped = _enqueue(client, "progress_steps", 4)
    assert _finished(client, stepped) == "succeeded"
    text = client.get("/dashboard/jobs").get_data(as_text=True)
    assert re.search(r'<progress class="job-progress" value="4" max="4">', text)
    assert "4/4 step 4" in text
    big = _enqueue(client, "huge_result", "big", 100_000)
    assert _finished(client, big) == "succeeded"
    page = client.get(f"/dashboard/jobs/{big}").get_data(as_text=True)
    assert f"/dashboard/jobs/{big}/result" in page and "x" * 1000 not in page
    whole = client.get(f"/dashboard/jobs/{big}/result")
    assert whole.content_type == "application/json" and len(whole.get_json()) == 100_000


def test_overview_queues_and_periodic_pages(tmp_path: Path) -> None:
    _, client = _client(tmp_path)
    done = _enqueue(client, "mark", "overview")
    assert _finished(client, done) == "succeeded"
    overview = client.get("/dashboard").get_data(as_text=True)
    assert re.search(r'id="count-succeeded">1<', overview)
    assert re.search(r'class="finished-5m-succeeded">1<', overview)
    assert client.get("/dashboard/queues").status_code == 200
    assert client.get("/dashboard/periodic").status_code == 200

