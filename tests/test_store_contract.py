"""The store contract (spoolkit.store.Store), run against every store implementation.

A new store is one more entry in ``IMPLEMENTATIONS``: each test gets a fresh,
empty store from it. SQLite runs on a real file in a temp directory; PostgreSQL
on a real server the test set-up starts (tests/pg.py), a fresh database per test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spoolkit.errors import InvalidJobState, JobNotFound
from spoolkit.job import JobError, Progress
from spoolkit.lifecycle import ClaimAction
from spoolkit.postgres import PostgresStore
from spoolkit.sqlite import SQLiteStore
from spoolkit.states import JobState
from spoolkit.store import HOUSEKEEPER_BEAT, NewJob, Store

ME = "host:1:50:0"


#: Every store implementation, by name: a factory of an empty store, given the test's
#: temp directory and its fixtures (PostgreSQL: a fresh database on the test server).
IMPLEMENTATIONS: dict[str, Callable[[Path, pytest.FixtureRequest], Store]] = {
    "sqlite": lambda tmp_path, request: SQLiteStore(str(tmp_path / "sub" / "jobs.db")),
    "postgres": lambda tmp_path, request: PostgresStore(request.getfixturevalue("pg_dsn")),
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    store = IMPLEMENTATIONS[request.param](tmp_path, request)
    store.setup()
    yield store
    store.close()


def _new(store: Store, job_id: str = "a" * 22, run_at: float | None = None, **kw: object) -> None:
    fields: dict[str, object] = dict(
        id=job_id, task="t", payload='{"args":[],"kwargs":{}}', max_attempts=2, backoff=1.0,
        priority=None, created_at=100.0, run_at=run_at, spool_file=f"file-{job_id}",
    )  # fmt: skip
    fields.update(kw)
    store.insert(NewJob(**fields))  # type: ignore[arg-type]


def _claim(store: Store, job_id: str = "a" * 22, now: float = 200.0) -> ClaimAction:
    return store.claim(job_id, f"file-{job_id}", ME, 77, now, lambda pid: False)[0]


def test_setup_is_idempotent(store: Store) -> None:
    _new(store)
    store.setup()
    assert store.get("a" * 22) is not None


def test_insert_states(store: Store) -> None:
    _new(store, "q" * 22)
    _new(store, "s" * 22, run_at=500.0)
    assert store.get("q" * 22).state is JobState.QUEUED  # type: ignore[union-attr]
    scheduled = store.get("s" * 22)
    assert scheduled is not None and scheduled.state is JobState.SCHEDULED
    assert scheduled.scheduled_for == 500.0
    assert store.counts()["queued"] == 1 and store.counts()["scheduled"] == 1


def _batch(ids: list[str], **kw: object) -> list[NewJob]:
    return [NewJob(id=job_id, task="t", payload='{"args":[],"kwargs":{}}', max_attempts=2,
                   backoff=1.0, priority=None, created_at=100.0, run_at=None,
                   spool_file=f"file-{job_id}", **kw)  # type: ignore[arg-type]
            for job_id in ids]  # fmt: skip


def test_insert_many_records_all_or_nothing(store: Store) -> None:
    made = store.insert_many(_batch(["b1", "b2", "b3"]))
    assert [job.id for job in made] == ["b1", "b2", "b3"]
    assert all(store.get(job_id).state is JobState.QUEUED for job_id in ("b1", "b2", "b3"))
    assert store.insert_many([]) == []
    # A batch whose third row cannot be recorded (an id taken) records none of its rows.
    with pytest.raises(Exception):  # noqa: B017 - each store names the constraint its own way
        store.insert_many(_batch(["c1", "c2", "b2", "c4"]))
    assert [store.get(job_id) for job_id in ("c1", "c2", "c4")] == [None, None, None]
    with pytest.raises(ValueError, match="idempotency keys"):
        store.insert_many(_batch(["d1"], idempotency_key="k", idempotency_hash="h"))
    assert store.get("d1") is None


def test_claim_run_and_succeed(store: Store) -> None:
    _new(store)
    assert _claim(store) is ClaimAction.RUN
    job = store.get("a" * 22)
    assert job is not None
    assert (job.state, job.attempts, job.runner, job.runner_pid) == (JobState.RUNNING, 1, ME, 77)
    store.set_progress(job.id, Progress(1, 2, "half"), 201.0)
    assert store.finish(job.id, 77, 202.0, result="5")
    done = store.get(job.id)
    assert done is not None
    assert (done.state, done.result, done.finished_at) == (JobState.SUCCEEDED, 5, 202.0)
    assert done.progress == Progress(1, 2, "half")
    assert _claim(store) is ClaimAction.DISCARD  # its file, seen again, is stale


def test_finish_is_refused_to_a_runner_that_does_not_hold_the_job(store: Store) -> None:
    _new(store)
    _claim(store)
    assert not store.finish("a" * 22, 78, 201.0, result="1")
    assert store.get("a" * 22).state is JobState.RUNNING  # type: ignore[union-attr]


def test_retry_then_fail(store: Store) -> None:
    _new(store)
    _claim(store)
    boom = JobError("ValueError", "boom", "tb")
    assert store.finish("a" * 22, 77, 201.0, error=boom, retry_at=260.0)
    job = store.get("a" * 22)
    assert job is not None
    assert (job.state, job.scheduled_for, job.error) == (JobState.SCHEDULED, 260.0, boom)
    assert _claim(store, now=250.0) is ClaimAction.EARLY
    assert _claim(store, now=261.0) is ClaimAction.RUN
    assert store.finish("a" * 22, 77, 262.0, error=boom)
    failed = store.get("a" * 22)
    assert failed is not None
    assert (failed.state, failed.attempts, failed.finished_at) == (JobState.FAILED, 2, 262.0)


def test_restart_interruption_is_not_counted(store: Store) -> None:
    _new(store)
    _claim(store)
    action, job = store.claim(
        "a" * 22, "file-" + "a" * 22, "host:1:99:1", 88, 300.0, lambda p: False
    )
    assert action is ClaimAction.RERUN
    assert job is not None and job.attempts == 1 and job.runner_pid == 88


def test_cancel_and_restart(store: Store) -> None:
    _new(store, run_at=500.0)
    job = store.cancel("a" * 22, 150.0)
    assert job.state is JobState.CANCELLED and job.finished_at == 150.0
    with pytest.raises(InvalidJobState) as raised:
        store.cancel("a" * 22, 151.0)
    assert raised.value.state == "cancelled"
    with pytest.raises(JobNotFound):
        store.cancel("z" * 22, 151.0)
    again = store.restart("a" * 22, "new-file", 160.0)
    assert (again.state, again.attempts, again.spool_file) == (JobState.QUEUED, 0, "new-file")
    # Due from the retry: its wait, and its queue's oldest-ready age, count from then.
    assert again.scheduled_for == 160.0 and again.finished_at is None
    with pytest.raises(InvalidJobState):
        store.restart("a" * 22, "x", 170.0)


def test_cancel_races_a_claim_and_exactly_one_wins(store: Store) -> None:
    for i in range(40):
        job_id = f"{i:022d}"
        _new(store, job_id)
        outcomes: dict[str, object] = {}

        def cancel(job_id: str = job_id, outcomes: dict[str, object] = outcomes) -> None:
            try:
                outcomes["cancel"] = store.cancel(job_id, 150.0).state
            except InvalidJobState as exc:
                outcomes["cancel"] = exc.state

        def claim(job_id: str = job_id, outcomes: dict[str, object] = outcomes) -> None:
            outcomes["claim"] = _claim(store, job_id)

        threads = [threading.Thread(target=cancel), threading.Thread(target=claim)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        final = store.get(job_id)
        assert final is not None
        if outcomes["claim"] is ClaimAction.RUN:
            assert outcomes["cancel"] == "running" and final.state is JobState.RUNNING
        else:
            assert outcomes["claim"] is ClaimAction.DISCARD and final.state is JobState.CANCELLED


def test_reassign_is_conditional(store: Store) -> None:
    _new(store)
    seen = store.get("a" * 22)
    assert seen is not None
    assert store.reassign(seen, "second", 300.0, requeue=False)
    assert not store.reassign(seen, "third", 301.0, requeue=False)  # stale view
    assert store.get("a" * 22).spool_file == "second"  # type: ignore[union-attr]


def test_list_unfinished_and_purge(store: Store) -> None:
    for i in range(5):
        _new(store, f"{i:022d}", created_at=100.0 + i)
    assert [job.id[-1] for job in store.list_jobs(limit=3)] == ["4", "3", "2"]
    _claim(store, f"{0:022d}")
    store.finish(f"{0:022d}", 77, 150.0, result="1")
    assert [job.id[-1] for job in store.unfinished("", 10, updated_before=1e12)] == list("1234")
    assert [job.id[-1] for job in store.unfinished(f"{2:022d}", 10, updated_before=1e12)] == [
        "3",
        "4",
    ]
    assert store.purge(finished_before=149.0) == 0
    assert store.purge(finished_before=151.0) == 1
    assert store.get(f"{0:022d}") is None


def test_a_running_job_cannot_be_cancelled_and_a_succeeded_one_not_retried(store: Store) -> None:
    _new(store)
    _claim(store)
    with pytest.raises(InvalidJobState) as raised:
        store.cancel("a" * 22, 201.0)
    assert raised.value.state == "running"
    assert store.finish("a" * 22, 77, 202.0, result="1")
    with pytest.raises(InvalidJobState) as raised:
        store.restart("a" * 22, "again", 203.0)
    assert raised.value.state == "succeeded"
    with pytest.raises(InvalidJobState):
        store.cancel("a" * 22, 204.0)
    job = store.get("a" * 22)
    assert job is not None and job.state is JobState.SUCCEEDED and job.result == 1


def test_outcomes_and_progress_need_a_running_job(store: Store) -> None:
    _new(store)
    assert not store.finish("a" * 22, 77, 201.0, result="1")  # never claimed
    store.set_progress("a" * 22, Progress(1), 201.0)
    job = store.get("a" * 22)
    assert job is not None and job.state is JobState.QUEUED and job.progress is None


def test_a_cancelled_job_is_never_claimed(store: Store) -> None:
    _new(store)
    store.cancel("a" * 22, 150.0)
    assert _claim(store) is ClaimAction.DISCARD
    assert store.get("a" * 22).state is JobState.CANCELLED  # type: ignore[union-attr]


def test_a_delivery_the_row_does_not_name_is_stale(store: Store) -> None:
    _new(store)
    action, _ = store.claim("a" * 22, "another-file", ME, 77, 200.0, lambda pid: False)
    assert action is ClaimAction.DISCARD
    assert store.claim("b" * 22, "file", ME, 77, 200.0, lambda pid: False) == (
        ClaimAction.UNKNOWN,
        None,
    )


def test_a_crash_in_this_instance_is_told_from_a_live_runner(store: Store) -> None:
    _new(store)
    _claim(store)
    delivery = "file-" + "a" * 22
    assert store.claim("a" * 22, delivery, ME, 78, 300.0, lambda pid: pid == 77)[0] is (
        ClaimAction.BUSY
    )
    assert store.claim("a" * 22, delivery, ME, 78, 300.0, lambda pid: False)[0] is (
        ClaimAction.CRASHED
    )


def test_payload_delete_meta_and_parked_jobs(store: Store) -> None:
    _new(store, payload='{"args":[1],"kwargs":{}}')
    assert store.payload("a" * 22) == '{"args":[1],"kwargs":{}}'
    with pytest.raises(JobNotFound):
        store.payload("z" * 22)
    store.delete("a" * 22)
    assert store.get("a" * 22) is None
    assert store.get_meta(HOUSEKEEPER_BEAT) is None
    store.set_meta(HOUSEKEEPER_BEAT, "12.5")
    store.set_meta(HOUSEKEEPER_BEAT, "13.5")
    assert store.get_meta(HOUSEKEEPER_BEAT) == "13.5"
    _new(store, "p" * 22, run_at=1000.0, spool_file=None)
    _new(store, "r" * 22, run_at=900.0, spool_file=None)
    _new(store, "s" * 22, run_at=800.0)  # spooled already: not parked
    _new(store, "q" * 22, spool_file=None)  # queued, parked (a batch's): due since created
    assert [job.id for job in store.due_parked(950.0, 10)] == ["q" * 22, "r" * 22]
    assert [job.id for job in store.due_parked(2000.0, 10)] == ["q" * 22, "r" * 22, "p" * 22]
    assert store.due_parked(50.0, 10) == []
    assert {job.id for job in store.unfinished("", 10, updated_before=1e12)} == {"s" * 22}
    store.checkpoint()


def test_the_filters_of_the_list(store: Store) -> None:
    _new(store, "a" * 22)
    _new(store, "b" * 22, task="other")
    store.cancel("b" * 22, 150.0)
    assert [job.id for job in store.list_jobs(task="other")] == ["b" * 22]
    assert [job.id for job in store.list_jobs(state=JobState.QUEUED)] == ["a" * 22]
    assert store.list_jobs(state=JobState.QUEUED, task="other") == []
    assert store.counts() == {
        "queued": 1, "scheduled": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 1,
    }  # fmt: skip


# -- what the dashboard, /metrics and the CLI read ----------------------------------------


def test_list_filters_by_queue_and_id_prefix_and_pages(store: Store) -> None:
    for i in range(5):
        _new(store, f"{'ab' if i < 3 else 'cd'}{i:020d}", created_at=100.0 + i,
             queue="slow" if i % 2 else "default")  # fmt: skip
    newest_first = [job.id for job in store.list_jobs(limit=10)]
    assert newest_first == [f"{p}{i:020d}" for p, i in (("cd", 4), ("cd", 3), ("ab", 2),
                                                         ("ab", 1), ("ab", 0))]  # fmt: skip
    assert [job.id for job in store.list_jobs(limit=2, offset=2)] == newest_first[2:4]
    assert {job.id[:2] for job in store.list_jobs(id_prefix="ab")} == {"ab"}
    assert len(store.list_jobs(id_prefix="ab")) == 3
    assert store.list_jobs(id_prefix="ab_") == []  # no LIKE wildcards
    assert {job.queue for job in store.list_jobs(queue="slow")} == {"slow"}
    assert len(store.list_jobs(queue="slow", id_prefix="cd")) == 1


def test_state_counts_and_finished_since(store: Store) -> None:
    _new(store, "a" * 22)
    _new(store, "b" * 22, queue="slow")
    _new(store, "c" * 22, run_at=900.0)
    store.cancel("c" * 22, 150.0)
    assert store.state_counts() == {("default", "queued"): 1, ("slow", "queued"): 1,
                                    ("default", "cancelled"): 1}  # fmt: skip
    assert store.finished_since(150.0) == {"succeeded": 0, "failed": 0, "cancelled": 1}
    assert store.finished_since(150.5)["cancelled"] == 0
    assert _claim(store, "a" * 22, now=200.0) is ClaimAction.RUN
    assert store.finish("a" * 22, 77, 210.0, result="1")
    assert store.finished_since(200.0) == {"succeeded": 1, "failed": 0, "cancelled": 0}


def test_changed_since_follows_updates_in_order(store: Store) -> None:
    _new(store, "a" * 22, created_at=100.0)
    _new(store, "b" * 22, created_at=101.0)
    assert [job.id for job in store.changed_since(0.0, 10)] == ["a" * 22, "b" * 22]
    _claim(store, "a" * 22, now=200.0)
    changed = store.changed_since(101.0, 10)
    assert [(job.id, job.state) for job in changed] == [("a" * 22, JobState.RUNNING)]
    assert changed[0].result is None
    assert store.changed_since(200.0, 10) == []
    assert len(store.changed_since(0.0, 1)) == 1


def test_totals_count_attempts_runs_waits_and_final_states(store: Store) -> None:
    _new(store, "a" * 22, created_at=100.0)
    _new(store, "b" * 22, created_at=100.0, run_at=150.0)
    _new(store, "c" * 22, created_at=100.0, run_at=900.0)
    assert _claim(store, "a" * 22, now=100.2) is ClaimAction.RUN
    assert store.finish("a" * 22, 77, 100.5, result="1")  # waited 0.2 s, ran 0.3 s
    assert _claim(store, "b" * 22, now=160.0) is ClaimAction.RUN
    error = JobError("ValueError", "bad")
    assert store.finish("b" * 22, 77, 165.0, error=error, retry_at=170.0, outcome="retry")
    assert _claim(store, "b" * 22, now=170.0) is ClaimAction.RUN
    assert store.finish("b" * 22, 77, 171.0, error=error)  # no wait after its backoff
    store.cancel("c" * 22, 172.0)
    totals = store.totals()["t"]
    assert totals["attempt:succeeded"] == 1 and totals["attempt:retry"] == 1
    assert totals["attempt:failed"] == 1
    assert (totals["finished:succeeded"], totals["finished:failed"],
            totals["finished:cancelled"]) == (1, 1, 1)  # fmt: skip
    assert totals["duration:0.5"] == 1 and totals["duration:5.0"] == 1
    assert totals["duration:1.0"] == 1
    assert totals["duration:sum"] == pytest.approx(0.3 + 5.0 + 1.0)
    assert totals["wait:0.25"] == 1 and totals["wait:10.0"] == 1 and totals["wait:0.005"] == 1
    assert totals["wait:sum"] == pytest.approx(0.2 + 10.0)
    store.purge(1000.0)
    assert store.get("a" * 22) is None
    assert store.totals()["t"] == totals  # purging never lowers a counter


def test_purge_by_state(store: Store) -> None:
    _new(store, "a" * 22, run_at=900.0)
    _new(store, "b" * 22)
    store.cancel("a" * 22, 150.0)
    _claim(store, "b" * 22)
    store.finish("b" * 22, 77, 210.0, error=JobError("E", "x"), retry_at=None)
    with pytest.raises(ValueError, match="finished"):
        store.purge(1000.0, states=[JobState.QUEUED])
    assert store.purge(1000.0, states=[JobState.CANCELLED]) == 1
    assert store.get("a" * 22) is None and store.get("b" * 22) is not None


def test_nodes_beat_and_go_stale(store: Store) -> None:
    now = time.time()
    store.beat("node-a", "host-1", '{"spoolers": null}', now)
    store.beat("node-b", "host-2", "{}", now)
    store.beat("node-a", "host-1", '{"spoolers": {"alive": 2}}', now)  # again: one row
    nodes = store.nodes(now, 30)
    assert [(node.id, node.host, node.figures) for node in nodes] == [
        ("node-a", "host-1", '{"spoolers": {"alive": 2}}'), ("node-b", "host-2", "{}")]
    assert all(0 <= node.age < 5 for node in nodes)  # by the store's clock
    assert store.nodes(now, 0.0) == []
