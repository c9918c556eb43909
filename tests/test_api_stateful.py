"""A stateful property-based test of the job API against one live uWSGI.

Hypothesis's ``RuleBasedStateMachine`` drives random sequences of enqueue, get,
list, cancel, retry and bad input over HTTP, and checks after every step: no
``5xx``; ``/healthz`` counts as many jobs as were accepted; the list's states
agree with ``/healthz``. At the end of each run every accepted job must reach a
final state (the one its task leads to, or ``cancelled`` when a cancel was
answered ``200``), and a job cancelled with a ``200`` must not run afterwards.
"""

from __future__ import annotations

import itertools
import json
import string
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from spoolkit.states import FINISHED, JobState

from .reporting import SOAK, report
from .support import Response, UwsgiServer, wait_for

pytestmark = pytest.mark.e2e

STATES = [state.value for state in JobState]
FINAL = {state.value for state in FINISHED}
#: GET /jobs?limit= takes at most this many: past it the list cannot be compared whole.
LIST_MAX = 1000
#: A run's jobs: countdown <= 3 s, <= 5 attempts a second apart, sleepers <= 0.5 s.
SETTLE_TIMEOUT = 90.0
#: How long the list and /healthz may disagree while jobs change state between reads.
RACE_TIMEOUT = 10.0

SETTINGS = settings(
    max_examples=100 if SOAK else 15,
    stateful_step_count=50 if SOAK else 25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- what the machine sends ---------------------------------------------------------------

#: Each test task's parameter names; a tagged task takes a per-job tag first.
PARAMS = {
    "add": ("a", "b"),
    "echo": ("value",),
    "mark": ("tag",),
    "always_fails": ("tag",),
    "sleeper": ("tag", "seconds"),
    "flaky": ("tag", "failures"),
}
TAGGED = {"mark", "always_fails", "sleeper", "flaky"}
#: Attempts when the request does not say (the tasks' own @spool budgets).
DEFAULT_ATTEMPTS = {"always_fails": 3, "flaky": 5}

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
#: (task, its arguments after the tag).
CALLS = st.one_of(
    st.tuples(
        st.just("add"), st.tuples(st.integers(-(10**6), 10**6), st.integers(-(10**6), 10**6))
    ),
    st.tuples(st.just("echo"), st.tuples(JSON_VALUES)),
    st.tuples(st.just("mark"), st.just(())),
    st.tuples(st.just("always_fails"), st.just(())),
    st.tuples(st.just("sleeper"), st.tuples(st.floats(0, 0.5))),
    st.tuples(st.just("flaky"), st.tuples(st.integers(0, 4))),
)

VALID = {"task": "tests.jobs.add", "args": [1, 2]}


def changed(**fields: Any) -> bytes:
    """A valid create request with ``fields`` changed (``...`` drops one)."""
    data = {**VALID, **fields}
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def deep(depth: int, opening: bytes, leaf: bytes, closing: bytes) -> bytes:
    return opening * depth + leaf + closing * depth


HUGE = 10**400


class BadCreate(NamedTuple):
    """A create request that must be refused, leaving the store as it was."""

    what: str
    body: bytes
    statuses: set[int]
    headers: dict[str, str] | None = None


FIXED_BAD_CREATES = [
    BadCreate("not JSON", b"{not json", {400}),
    BadCreate("empty body", b"", {400}),
    BadCreate("truncated JSON", b'{"task": "tests.jobs.add", "args": [1, 2]', {400}),
    BadCreate("not UTF-8", b'{"task": "\xff\xfe"}', {400}),
    BadCreate("a list", b"[1, 2]", {422}),
    BadCreate("a string", b'"tests.jobs.add"', {422}),
    BadCreate("a number", b"3", {422}),
    BadCreate("null", b"null", {422}),
    BadCreate("lists 2000 deep", deep(2000, b"[", b"", b"]"), {400}),
    BadCreate("objects 2000 deep", deep(2000, b'{"a": ', b"1", b"}"), {400}),
    BadCreate(
        "args 2000 deep",
        b'{"task": "tests.jobs.echo", "args": [' + deep(2000, b"[", b"", b"]") + b"]}",
        {400},
    ),
    BadCreate("unknown field", changed(queue="high"), {422}),
    BadCreate("unknown task", changed(task="tests.jobs.nope"), {404}),
    BadCreate("unregistered callable", changed(task="os.system", args=["true"]), {404}),
    BadCreate("empty task", changed(task=""), {422}),
    BadCreate("task not a string", changed(task=["tests.jobs.add"]), {422}),
    BadCreate("no task", changed(task=...), {422}),
    BadCreate("args an object", changed(args={"a": 1, "b": 2}), {422}),
    BadCreate("args a string", changed(args="1, 2"), {422}),
    BadCreate("kwargs a list", changed(kwargs=[1]), {422}),
    BadCreate("too few args", changed(args=[1]), {422}),
    BadCreate("too many args", changed(args=[1, 2, 3]), {422}),
    BadCreate("unknown kwarg", changed(kwargs={"c": 1}), {422}),
    BadCreate("both at and countdown", changed(at="2030-01-01T00:00:00Z", countdown=1), {422}),
    BadCreate("countdown 10**400", changed(countdown=HUGE), {422}),
    BadCreate("countdown NaN", changed(countdown=float("nan")), {422}),
    BadCreate("at 10**400", changed(at=HUGE), {422}),
    BadCreate("priority 10**400", changed(priority=HUGE), {422}),
    BadCreate("max_attempts 10**400", changed(max_attempts=HUGE), {422}),
    # The size is judged from Content-Length before the body is read; a real 1 MiB body
    # would meet a reset while still being sent, as uWSGI closes without reading it.
    BadCreate(
        "declares a body over the size limit",
        changed(args=["x", 1]),
        {413},
        {"Content-Length": str((1 << 20) + 1)},
    ),
]
BAD_COUNTDOWNS = st.one_of(
    st.floats(max_value=-0.001),
    st.floats(min_value=1e12),  # past year 9999, infinity included
    st.integers(max_value=-1),
    st.just(-HUGE),
    st.booleans(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)
BAD_ATS = st.one_of(
    st.sampled_from(["soon", "", "2030-13-01", "nan", "inf", "-1", "99999-01-01T00:00:00"]),
    st.integers(max_value=-1),
    st.floats(min_value=3e11),
    st.booleans(),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
BAD_PRIORITIES = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=100),
    st.floats(),
    st.booleans(),
    st.text(max_size=3),
)
BAD_MAX_ATTEMPTS = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=10_001),
    st.floats(),
    st.booleans(),
    st.text(max_size=3),
)
BAD_OPTIONS = st.one_of(
    BAD_COUNTDOWNS.map(lambda v: BadCreate(f"countdown={v!r}", changed(countdown=v), {422})),
    BAD_ATS.map(lambda v: BadCreate(f"at={v!r}", changed(at=v), {422})),
    BAD_PRIORITIES.map(lambda v: BadCreate(f"priority={v!r}", changed(priority=v), {422})),
    BAD_MAX_ATTEMPTS.map(
        lambda v: BadCreate(f"max_attempts={v!r}", changed(max_attempts=v), {422})
    ),
)
BAD_LISTS = [
    "limit=0",
    "limit=abc",
    "limit=%C2%B2",  # "²": a digit to str.isdigit(), not to int()
    "limit=" + "9" * 30,
    "limit=1001",
    "limit=-1",
    "limit=",
    "state=nope",
    "state=",
    "state=QUEUED",
    "state=queued&state=failed",
    "limit=1&limit=2",
    "task=a&task=b",
]
TASK_FILTERS = [f"tests.jobs.{task}" for task in PARAMS] + ["tests.jobs.nope"]
#: Ids no job has; the odd ones are percent-encoded as they go into the path.
UNKNOWN_IDS = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=40) | (
    st.sampled_from(["..", "%00", "a%20b", "%C3%A9", "%FF", "a.b", "~", "x" * 3000])
)

# -- what the machine remembers -------------------------------------------------------------

_tags = itertools.count()
NO_RESULT = object()


@dataclass
class Tally:
    """Counted over the whole test: every step run, every response got, every 5xx among them."""

    steps: int = 0
    responses: int = 0
    server_errors: int = 0


@dataclass
class Tracked:
    task: str
    tag: str | None
    #: The final state the task leads to (None: unknown), unless cancelled.
    outcome: str | None
    result: Any = NO_RESULT
    #: A final state seen; only this machine's retry can move the job on from it.
    final: str | None = None
    #: The task's recorded runs when a cancel was answered 200 (None: not cancelled).
    runs_at_cancel: int | None = None


class ApiMachine(RuleBasedStateMachine):
    """Random API traffic against ``server``, a live uWSGI no one else uses."""

    server: ClassVar[UwsgiServer]
    tally: ClassVar[Tally]
    #: Every job id answered 202 to POST /jobs, over all runs on this server.
    created: ClassVar[set[str]]

    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.tracked: dict[str, Tracked] = {}

    # -- HTTP, counted -----------------------------------------------------------------

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        response = self.server.request(method, path, body, raw=raw, headers=headers)
        self.tally.responses += 1
        if response.status >= 500:
            self.tally.server_errors += 1
        assert response.status < 500, f"{method} {path} -> {response!r}"
        return response

    def counts(self) -> dict[str, int]:
        response = self.http("GET", "/healthz")
        assert response.status == 200, response
        counts = {state: int(n) for state, n in response.json()["jobs"].items()}
        assert sum(counts.values()) == len(self.created), (counts, len(self.created))
        return counts

    def runs(self, tracked: Tracked) -> int:
        assert tracked.tag is not None
        return len(self.server.records_of(tracked.tag))

    @staticmethod
    def assert_error(response: Response) -> None:
        content_type = {k.lower(): v for k, v in response.headers.items()}.get("content-type", "")
        assert content_type.startswith("application/json"), response
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), response

    def step(self) -> None:
        self.tally.steps += 1

    def seen(self, job_id: str, body: dict[str, Any]) -> None:
        """Check a job's JSON against what the machine knows of it."""
        tracked = self.tracked[job_id]
        state = body["state"]
        assert body["id"] == job_id and body["task"] == f"tests.jobs.{tracked.task}", body
        assert state in STATES, body
        if tracked.final is not None:
            assert state == tracked.final, f"{job_id} left {tracked.final} by itself: {body}"
        if state not in FINAL:
            return
        tracked.final = state
        if state == JobState.CANCELLED.value:
            assert tracked.runs_at_cancel is not None, f"{job_id} cancelled unasked: {body}"
        elif tracked.outcome is not None:
            assert state == tracked.outcome, f"{job_id} should have {tracked.outcome}: {body}"
        if state == JobState.SUCCEEDED.value and tracked.result is not NO_RESULT:
            assert body["result"] == tracked.result, body

    def read(self, job_id: str) -> dict[str, Any]:
        response = self.http("GET", f"/jobs/{job_id}")
        assert response.status in (200, 202), response
        body: dict[str, Any] = response.json()
        if body["state"] in FINAL:
            assert response.status == 200, response
        else:
            assert response.status == 202, response
            assert int(response.headers["Retry-After"]) >= 0, response.headers
        self.seen(job_id, body)
        return body

    # -- enqueue ---------------------------------------------------------------------------

    @rule(
        target=jobs,
        call=CALLS,
        split=st.integers(0, 2),
        countdown=st.none() | st.integers(0, 3) | st.floats(0, 3),
        priority=st.none() | st.integers(0, 99),
        max_attempts=st.none() | st.integers(1, 5),
    )
    def enqueue(
        self,
        call: tuple[str, tuple[Any, ...]],
        split: int,
        countdown: float | None,
        priority: int | None,
        max_attempts: int | None,
    ) -> str:
        self.step()
        task, rest = call
        tag = f"stateful-{next(_tags)}" if task in TAGGED else None
        values = [tag, *rest] if tag is not None else list(rest)
        split = min(split, len(values))
        body: dict[str, Any] = {
            "task": f"tests.jobs.{task}",
            "args": values[:split],
            "kwargs": dict(zip(PARAMS[task][split:], values[split:], strict=True)),
        }
        options = {"countdown": countdown, "priority": priority, "max_attempts": max_attempts}
        body.update({k: v for k, v in options.items() if v is not None})
        response = self.http("POST", "/jobs", body)
        assert response.status == 202, (body, response)
        job = response.json()
        job_id = str(job["id"])
        self.created.add(job_id)
        attempts = max_attempts or DEFAULT_ATTEMPTS.get(task, 3)
        outcome = JobState.SUCCEEDED.value
        if task == "always_fails" or (task == "flaky" and rest[0] >= attempts):
            outcome = JobState.FAILED.value
        result: Any = NO_RESULT
        if task == "add":
            result = rest[0] + rest[1]
        elif task == "echo":
            result = rest[0]
        elif task == "sleeper":
            result = tag
        self.tracked[job_id] = Tracked(task, tag, outcome, result)
        assert response.headers["Location"] == f"/jobs/{job_id}", response.headers
        assert job["state"] == ("scheduled" if countdown else "queued"), job
        assert job["priority"] == priority and job["max_attempts"] == attempts, job
        assert "result" in job and job["result"] is None, job
        self.seen(job_id, job)
        return job_id

    @rule(case=st.sampled_from(FIXED_BAD_CREATES))
    def enqueue_invalid(self, case: BadCreate) -> None:
        self.refused(case)

    @rule(case=BAD_OPTIONS)
    def enqueue_bad_option(self, case: BadCreate) -> None:
        self.refused(case)

    def refused(self, case: BadCreate) -> None:
        """The request is refused with a JSON error and no job is added."""
        self.step()
        before = sum(self.counts().values())
        response = self.http("POST", "/jobs", raw=case.body, headers=case.headers)
        if response.status == 202:
            self.created.add(str(response.json()["id"]))  # keep the count honest, then fail
        assert response.status in case.statuses, f"{case.what}: {case.body[:200]!r} -> {response!r}"
        self.assert_error(response)
        assert sum(self.counts().values()) == before, f"{case.what} added a job"

    # -- read ------------------------------------------------------------------------------

    @rule(job_id=jobs)
    def get_job(self, job_id: str) -> None:
        self.step()
        self.read(job_id)

    @rule(job_id=UNKNOWN_IDS)
    def get_unknown(self, job_id: str) -> None:
        self.step()
        response = self.http("GET", f"/jobs/{job_id}")
        if job_id not in self.created:
            assert response.status == 404, (job_id, response)
            self.assert_error(response)

    @rule(job_id=jobs)
    def wait_until_finished(self, job_id: str) -> None:
        self.step()
        wait_for(
            lambda: self.read(job_id)["state"] in FINAL,
            SETTLE_TIMEOUT,
            f"job {job_id} to finish",
            interval=0.1,
        )

    @rule(
        state=st.none() | st.sampled_from(STATES),
        task=st.none() | st.sampled_from(TASK_FILTERS),
        limit=st.none() | st.integers(1, LIST_MAX),
    )
    def list_jobs(self, state: str | None, task: str | None, limit: int | None) -> None:
        self.step()
        query = {"state": state, "task": task, "limit": limit}
        response = self.http(
            "GET", "/jobs?" + urlencode({k: v for k, v in query.items() if v is not None})
        )
        assert response.status == 200, (query, response)
        jobs = response.json()["jobs"]
        assert len(jobs) <= (limit or 50), (query, len(jobs))
        for job in jobs:
            assert "result" not in job, job
            assert job["id"] in self.created, f"a job no one created: {job}"
            assert state is None or job["state"] == state, (query, job)
            assert task is None or job["task"] == task, (query, job)
        created = [job["created_at"] for job in jobs]
        assert created == sorted(created, reverse=True), "not newest first"

    @rule(query=st.sampled_from(BAD_LISTS))
    def list_invalid(self, query: str) -> None:
        self.step()
        response = self.http("GET", f"/jobs?{query}")
        assert response.status == 422, (query, response)
        self.assert_error(response)

    # -- cancel and retry ------------------------------------------------------------------

    @rule(job_id=jobs)
    def cancel(self, job_id: str) -> None:
        self.step()
        tracked = self.tracked[job_id]
        was_final = tracked.final
        response = self.http("DELETE", f"/jobs/{job_id}")
        if response.status == 200:
            assert was_final is None, f"cancelled a {was_final} job: {response!r}"
            tracked.runs_at_cancel = self.runs(tracked) if tracked.tag else 0
            body = response.json()
            assert body["state"] == JobState.CANCELLED.value, body
            self.seen(job_id, body)
        else:
            assert response.status == 409, response
            self.assert_error(response)

    @rule(target=jobs, call=CALLS)
    def enqueue_then_cancel(self, call: tuple[str, tuple[Any, ...]]) -> str:
        """A job 3 s ahead cannot have started: its cancel is a 200, and it must never run."""
        job_id = self.enqueue(call, split=2, countdown=3, priority=None, max_attempts=None)
        response = self.http("DELETE", f"/jobs/{job_id}")
        assert response.status == 200, response
        tracked = self.tracked[job_id]
        tracked.runs_at_cancel = self.runs(tracked) if tracked.tag else 0
        self.seen(job_id, response.json())
        return job_id

    @rule(job_id=UNKNOWN_IDS, retry=st.booleans())
    def cancel_or_retry_unknown(self, job_id: str, retry: bool) -> None:
        self.step()
        if retry:
            response = self.http("POST", f"/jobs/{job_id}/retry")
        else:
            response = self.http("DELETE", f"/jobs/{job_id}")
        if job_id not in self.created:
            assert response.status == 404, (job_id, response)
            self.assert_error(response)

    @rule(job_id=jobs)
    def retry(self, job_id: str) -> None:
        self.step()
        tracked = self.tracked[job_id]
        was_final = tracked.final
        response = self.http("POST", f"/jobs/{job_id}/retry")
        if was_final in (JobState.FAILED.value, JobState.CANCELLED.value):
            assert response.status == 202, f"retry of a {was_final} job: {response!r}"
        if response.status == 202:
            assert was_final != JobState.SUCCEEDED.value, response
            assert response.headers["Location"] == f"/jobs/{job_id}", response.headers
            body = response.json()
            assert body["state"] == JobState.QUEUED.value and body["attempts"] == 0, body
            tracked.final = tracked.runs_at_cancel = None
            if tracked.task == "flaky":
                tracked.outcome = None  # its runs count on across the retry
            self.seen(job_id, body)
        else:
            assert response.status == 409, response
            self.assert_error(response)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def list_agrees_with_healthz(self) -> None:
        """Per state, the list shows as many jobs as /healthz counts.

        One GET /jobs?limit=1000 while every job fits in it, else one list per
        state that fits. Jobs move on between reads, so a comparison counts only
        when /healthz read the same before and after the lists."""
        deadline = time.monotonic() + RACE_TIMEOUT
        while True:
            before = self.counts()
            shown = self.listed_counts(before)
            after = self.counts()
            if before == after and all(after[state] == n for state, n in shown.items()):
                return
            assert time.monotonic() < deadline, f"list {shown} vs healthz {after}"
            time.sleep(0.05)

    def listed_counts(self, counts: dict[str, int]) -> dict[str, int]:
        if sum(counts.values()) <= LIST_MAX:
            listed = Counter(job["state"] for job in self.listed(f"limit={LIST_MAX}"))
            return {state: listed[state] for state in STATES}
        return {
            state: len(self.listed(f"state={state}&limit={LIST_MAX}"))
            for state in STATES
            if counts[state] <= LIST_MAX
        }

    def listed(self, query: str) -> list[dict[str, Any]]:
        response = self.http("GET", f"/jobs?{query}")
        assert response.status == 200, response
        jobs: list[dict[str, Any]] = response.json()["jobs"]
        return jobs

    def teardown(self) -> None:
        """Every accepted job ends final, as its task and the cancels say; none is left waiting."""
        pending = set(self.tracked)

        def settled() -> bool:
            for job_id in sorted(pending):
                if self.read(job_id)["state"] in FINAL:
                    pending.discard(job_id)
            return not pending

        wait_for(settled, SETTLE_TIMEOUT, "every accepted job to finish", interval=0.2)
        for job_id, tracked in self.tracked.items():
            if tracked.runs_at_cancel is not None and tracked.tag is not None:
                assert tracked.final == JobState.CANCELLED.value, (job_id, tracked)
                assert self.runs(tracked) == tracked.runs_at_cancel, f"{job_id} ran after cancel"
        unfinished = {s: n for s, n in self.counts().items() if s not in FINAL and n}
        assert not unfinished, f"left unfinished: {unfinished}"


def test_api_keeps_its_invariants_under_random_traffic(server: UwsgiServer) -> None:
    tally = Tally()
    ApiMachine.server, ApiMachine.tally, ApiMachine.created = server, tally, set()
    try:
        run_state_machine_as_test(ApiMachine, settings=SETTINGS)
    finally:
        report(
            "api-stateful",
            steps=tally.steps,
            responses=tally.responses,
            server_errors=tally.server_errors,
        )
    assert "Traceback" not in server.log_text(), server.log_tail()
