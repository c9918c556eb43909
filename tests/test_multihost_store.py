"""Several hosts on one PostgreSQL store (``store.SharedStore``), against a real server.

Each host is a :class:`~spoolkit.postgres.PostgresStore` of its own on the test's
database (its own connections), as each uWSGI node has. What is checked: a node's
registration and its epochs, how ``claim_parked`` picks and fences its claims, that
racing claimers never share a job (``SKIP LOCKED``), how ``take_back`` hands a silent
node's jobs over and fences its late writes, that a spooler runs only its own node's
claims, that ``wait`` wakes on the notifications, and what ``unfinished`` scopes to a node.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from spoolkit.errors import NodeFenced
from spoolkit.job import Job, JobError, Progress
from spoolkit.lifecycle import ClaimAction
from spoolkit.postgres import PostgresStore
from spoolkit.states import JobState
from spoolkit.store import NewJob

#: The uWSGI instances a node's spoolers run in (``Job.runner``): this run and the one
#: before a restart.
THIS_RUN = "host-a:1:50:1"
PREVIOUS_RUN = "host-a:1:40:0"
OTHER_RUN = "host-b:1:60:0"
PAYLOAD = '{{"args":["{}"],"kwargs":{{}}}}'
#: Far enough ahead that every job in these tests is due.
UNTIL = 1000.0
#: The tasks the test nodes can run (``claim_parked`` takes only jobs of these).
TASKS = ("t",)
#: Seconds without a beat after which a node counts as silent, here: short, yet long
#: enough that a node that has just beaten is never taken for silent on a slow machine.
SILENT = 0.5


@pytest.fixture
def host_a(pg_dsn: str) -> Iterator[PostgresStore]:
    store = PostgresStore(pg_dsn)
    yield store
    store.close()


@pytest.fixture
def host_b(pg_dsn: str) -> Iterator[PostgresStore]:
    store = PostgresStore(pg_dsn)
    yield store
    store.close()


@pytest.fixture
def host_c(pg_dsn: str) -> Iterator[PostgresStore]:
    store = PostgresStore(pg_dsn)
    yield store
    store.close()


def park(
    store: PostgresStore,
    job_id: str,
    *,
    priority: int | None = None,
    created_at: float = 100.0,
    run_at: float | None = None,
    queue: str = "default",
    spool_file: str | None = None,
) -> None:
    """Record a job waiting in the store for a node to claim it (or, with ``spool_file``,
    one already spooled, as the CLI does)."""
    store.insert(NewJob(
        id=job_id, task="t", payload=PAYLOAD.format(job_id), max_attempts=3, backoff=1.0,
        priority=priority, created_at=created_at, run_at=run_at, spool_file=spool_file,
        queue=queue,
    ))  # fmt: skip


def deliver(job: Job) -> str:
    return f"spool/{job.id}"


def claim(
    store: PostgresStore, node: str, epoch: int, capacity: dict[str, int], now: float = 200.0
) -> list[str]:
    """What ``node``'s housekeeper claims for its idle spoolers: the ids, in order."""
    return [
        job.id for job, _ in store.claim_parked(node, epoch, capacity, UNTIL, now, deliver, TASKS)
    ]


def start(
    store: PostgresStore,
    job_id: str,
    node: str | None,
    instance: str = THIS_RUN,
    pid: int = 77,
    now: float = 210.0,
) -> tuple[ClaimAction, Job | None]:
    """A spooler of ``node`` picks up the job's spool file."""
    return store.claim(job_id, f"spool/{job_id}", instance, pid, now, lambda pid: False, node)


def row(store: PostgresStore, job_id: str) -> Job:
    job = store.get(job_id)
    assert job is not None, f"job {job_id} is gone"
    return job


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {timeout} s"
        time.sleep(0.02)


# -- registering ------------------------------------------------------------------------


def test_each_registration_is_a_new_epoch_per_node(host_a: PostgresStore) -> None:
    assert [host_a.register("A", "host-a", THIS_RUN, 100.0) for _ in range(3)] == [1, 2, 3]
    assert host_a.register("B", "host-b", THIS_RUN, 100.0) == 1
    assert [node.id for node in host_a.nodes(0.0, 30.0)] == ["A", "B"]


def test_registering_again_takes_back_the_previous_runs_jobs(host_a: PostgresStore) -> None:
    epoch = host_a.register("A", "host-a", PREVIOUS_RUN, 100.0)
    for name in ("claimed", "cut", "mine", "waiting"):
        park(host_a, name)
    assert sorted(claim(host_a, "A", epoch, {"default": 4})) == ["claimed", "cut", "mine",
                                                                  "waiting"]  # fmt: skip
    assert start(host_a, "cut", "A", instance=PREVIOUS_RUN)[0] is ClaimAction.RUN
    assert start(host_a, "mine", "A", instance=THIS_RUN)[0] is ClaimAction.RUN

    assert host_a.register("A", "host-a", THIS_RUN, 300.0) == epoch + 1

    for name in ("claimed", "waiting"):  # claimed, never started: back in the pool
        job = row(host_a, name)
        assert (job.state, job.attempts, job.spool_file, job.node, job.node_epoch) == (
            JobState.QUEUED, 0, None, None, None), f"{name} was not taken back"  # fmt: skip
        assert job.history == ()
    cut = row(host_a, "cut")  # its runner was the previous run, stopped by the restart
    assert (cut.state, cut.attempts, cut.runner, cut.runner_pid, cut.spool_file, cut.node) == (
        JobState.QUEUED, 0, None, None, None, None)  # fmt: skip
    assert [(a.attempt, a.outcome) for a in cut.history] == [(1, "interrupted")]
    mine = row(host_a, "mine")  # this run's own spooler runs it: left alone
    assert (mine.state, mine.attempts, mine.runner, mine.node, mine.node_epoch) == (
        JobState.RUNNING, 1, THIS_RUN, "A", epoch)  # fmt: skip
    assert mine.history == ()

    # What came back is claimable again; the running one still takes a spooler.
    assert sorted(claim(host_a, "A", epoch + 1, {"default": 4})) == ["claimed", "cut", "waiting"]
    # The running job's outcome lands under the fence it was claimed with.
    assert host_a.finish("mine", 77, 310.0, result="1", node="A", epoch=epoch)
    assert row(host_a, "mine").state is JobState.SUCCEEDED


# -- claiming ---------------------------------------------------------------------------


def test_a_node_claims_only_due_parked_jobs_of_its_queues(
    host_a: PostgresStore, host_b: PostgresStore
) -> None:
    epoch_a = host_a.register("A", "host-a", THIS_RUN, 100.0)
    epoch_b = host_b.register("B", "host-b", THIS_RUN, 100.0)
    park(host_a, "queued")
    park(host_a, "due", run_at=500.0)
    park(host_a, "later", run_at=UNTIL + 1)
    park(host_a, "spooled", spool_file="spool/spooled")  # a CLI's: on a disk already
    park(host_a, "slow", queue="slow")
    park(host_a, "full", queue="full")
    park(host_a, "cancelled")
    host_a.cancel("cancelled", 150.0)
    park(host_a, "taken", created_at=50.0)
    assert claim(host_b, "B", epoch_b, {"default": 1}) == ["taken"]  # the oldest, by B

    claimed = host_a.claim_parked(
        "A", epoch_a, {"default": 10, "full": 0}, UNTIL, 200.0, deliver, TASKS
    )
    assert sorted(job.id for job, _ in claimed) == ["due", "queued"]
    for job, payload in claimed:
        assert payload == PAYLOAD.format(job.id)
        assert (job.spool_file, job.node, job.node_epoch, job.updated_at) == (
            f"spool/{job.id}", "A", epoch_a, 200.0)  # fmt: skip
        assert row(host_b, job.id) == job, "the claim returned is not what was recorded"
    for name in ("later", "slow", "full"):
        job = row(host_a, name)
        assert (job.spool_file, job.node) == (None, None), f"{name} should not be claimed"
    assert (row(host_a, "taken").node, row(host_a, "spooled").node) == ("B", None)
    assert row(host_a, "cancelled").state is JobState.CANCELLED

    assert claim(host_a, "A", epoch_a, {"slow": 1}) == ["slow"]


def test_claims_go_by_priority_then_due_time_up_to_the_spoolers_free(
    host_a: PostgresStore,
) -> None:
    epoch = host_a.register("A", "host-a", THIS_RUN, 100.0)
    park(host_a, "unprioritised", created_at=10.0)  # the oldest, but no priority: last
    park(host_a, "p5", priority=5, created_at=20.0)
    park(host_a, "p1-later", priority=1, created_at=30.0, run_at=300.0)
    park(host_a, "p1-sooner", priority=1, created_at=250.0)
    park(host_a, "p0", priority=0, created_at=400.0)
    park(host_a, "elsewhere", queue="slow", priority=0)

    # Held jobs (claimed, not yet run) fill the spoolers: one more spooler, one more job.
    order = [claim(host_a, "A", epoch, {"default": spoolers}) for spoolers in range(1, 6)]
    assert order == [["p0"], ["p1-sooner"], ["p1-later"], ["p5"], ["unprioritised"]]
    park(host_a, "one-more")
    assert claim(host_a, "A", epoch, {"default": 5}) == [], "claimed past its free spoolers"
    assert claim(host_a, "A", epoch, {"default": 3}) == []

    # A running job holds its spooler as a claimed one does; its end frees it.
    assert start(host_a, "p0", "A")[0] is ClaimAction.RUN
    assert claim(host_a, "A", epoch, {"default": 5}) == []
    assert host_a.finish("p0", 77, 220.0, result="1", node="A", epoch=epoch)
    assert claim(host_a, "A", epoch, {"default": 5, "slow": 1}) == ["one-more", "elsewhere"]

    # All of them at once come in the same order.
    for name, priority in (("x-none", None), ("x-9", 9), ("x-2", 2)):
        park(host_a, name, priority=priority)
    assert claim(host_a, "A", epoch, {"default": 8}) == ["x-2", "x-9", "x-none"]


def test_a_claim_with_an_epoch_that_is_not_the_nodes_is_fenced(host_a: PostgresStore) -> None:
    first = host_a.register("A", "host-a", THIS_RUN, 100.0)
    host_a.register("A", "host-a", THIS_RUN, 100.0)
    park(host_a, "job")
    with pytest.raises(NodeFenced):
        claim(host_a, "A", first, {"default": 1})
    with pytest.raises(NodeFenced):
        claim(host_a, "never-registered", 1, {"default": 1})
    job = row(host_a, "job")
    assert (job.spool_file, job.node) == (None, None)


def test_a_claim_skips_jobs_another_claimer_has_locked(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, timeout=2.0)  # a claim waiting on the lock fails fast
    try:
        epoch = store.register("A", "host-a", THIS_RUN, 100.0)
        park(store, "first", priority=0)
        park(store, "second", priority=1)
        with psycopg.connect(pg_dsn) as other:  # another node's claim, mid-transaction
            other.execute("SELECT id FROM spoolkit_jobs WHERE id = 'first' FOR UPDATE")
            began = time.monotonic()
            assert claim(store, "A", epoch, {"default": 1}) == ["second"]
            assert time.monotonic() - began < 1.5, "the claim waited for the locked row"
            other.rollback()
        assert claim(store, "A", epoch, {"default": 2}) == ["first"]
    finally:
        store.close()


def test_racing_claimers_on_two_connections_never_share_a_job(pg_dsn: str) -> None:
    stores = [PostgresStore(pg_dsn), PostgresStore(pg_dsn)]
    try:
        everything = {f"job-{i:03d}" for i in range(200)}
        for i, job_id in enumerate(sorted(everything)):
            park(stores[0], job_id, priority=[None, 1, 2][i % 3], created_at=100.0 + i)
        nodes = ["n0", "n1", "n2", "n3"]  # threads of two stores: two connections each
        epochs = {node: stores[0].register(node, "host", THIS_RUN, 100.0) for node in nodes}
        claimed: dict[str, list[str]] = {node: [] for node in nodes}
        failures: list[BaseException] = []
        barrier = threading.Barrier(len(nodes))
        deadline = time.monotonic() + 20.0

        def unclaimed(store: PostgresStore) -> bool:
            waiting = store.list_jobs(JobState.QUEUED, limit=500, with_results=False)
            return any(job.spool_file is None for job in waiting)

        def claimer(n: int) -> None:
            node, store, mine = nodes[n], stores[n % 2], claimed[nodes[n]]
            try:
                barrier.wait()
                while time.monotonic() < deadline:
                    # Three more spoolers free each round: what it holds, plus three.
                    got = claim(store, node, epochs[node], {"default": len(mine) + 3})
                    mine.extend(got)
                    if not got and not unclaimed(store):
                        return
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=claimer, args=(n,)) for n in range(len(nodes))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, f"a claimer failed: {failures!r}"
        every = [job_id for ids in claimed.values() for job_id in ids]
        shared = sorted({job_id for job_id in every if every.count(job_id) > 1})
        assert not shared, f"claimed by more than one node: {shared}"
        assert set(every) == everything, f"never claimed: {sorted(everything - set(every))}"
        assert sum(1 for ids in claimed.values() if ids) >= 2, f"no race happened: {claimed}"
        for node, ids in claimed.items():
            for job_id in ids:
                job = row(stores[1], job_id)
                assert (job.node, job.node_epoch, job.spool_file) == (
                    node, epochs[node], f"spool/{job_id}")  # fmt: skip
    finally:
        for store in stores:
            store.close()


def test_a_spooler_runs_only_what_its_own_node_claimed(
    host_a: PostgresStore, host_b: PostgresStore
) -> None:
    epoch = host_a.register("A", "host-a", THIS_RUN, 100.0)
    park(host_a, "waiting")
    park(host_a, "running")
    assert sorted(claim(host_a, "A", epoch, {"default": 2})) == ["running", "waiting"]
    assert start(host_a, "running", "A", pid=77)[0] is ClaimAction.RUN
    before = {name: row(host_a, name) for name in ("waiting", "running")}

    for name in ("waiting", "running"):
        for node in ("B", None):  # another node's spooler, or a single-host one
            action, _ = start(host_b, name, node, instance=OTHER_RUN, pid=88, now=230.0)
            assert action is ClaimAction.DISCARD, f"{name}: {node}'s spooler got {action}"
            assert row(host_b, name) == before[name], f"{name} changed by {node}'s claim"

    action, job = start(host_a, "waiting", "A", pid=78, now=240.0)
    assert action is ClaimAction.RUN and job is not None
    assert (job.runner_pid, job.node, job.node_epoch, job.attempts) == (78, "A", epoch, 1)


# -- taking back a silent node's jobs ---------------------------------------------------


def wait_until_silent(store: PostgresStore) -> None:
    """Until every node's last beat is ``SILENT`` seconds old, by the database's clock."""
    wait_until(lambda: not store.nodes(0.0, SILENT), f"every node silent for {SILENT} s")


def lose(store: PostgresStore, lost: Job, now: float) -> bool:
    """Record ``lost``'s attempt as lost with its node, as the taker's worker does
    (``Worker.lost``): through the fence the job was claimed with."""
    return store.finish(
        lost.id, lost.runner_pid or 0, now, error=JobError("WorkerLost", "node A went silent"),
        retry_at=300.0, park=True, outcome="worker_lost", node=lost.node, epoch=lost.node_epoch,
    )  # fmt: skip


def test_a_silent_nodes_jobs_are_taken_back_and_its_late_writes_fenced(
    host_a: PostgresStore, host_b: PostgresStore, host_c: PostgresStore
) -> None:
    epoch_a = host_a.register("A", "host-a", THIS_RUN, 100.0)
    epoch_b = host_b.register("B", "host-b", OTHER_RUN, 100.0)
    for i, name in enumerate(("a-running", "a-claimed", "b-claimed", "c-claimed")):
        park(host_a, name, created_at=100.0 + i)
    assert claim(host_a, "A", epoch_a, {"default": 2}) == ["a-running", "a-claimed"]
    assert claim(host_b, "B", epoch_b, {"default": 1}) == ["b-claimed"]
    assert start(host_a, "a-running", "A", pid=77)[0] is ClaimAction.RUN
    host_a.set_progress("a-running", Progress(1, 10), 211.0, "A", epoch_a)
    assert row(host_a, "a-running").progress == Progress(1, 10)
    host_a.register("idle", "host-i", THIS_RUN, 100.0)  # falls silent too, holding nothing
    # A and B fall silent (B is the one that looks: it never takes back its own jobs);
    # C beats after that, so it is alive.
    wait_until_silent(host_b)
    epoch_c = host_c.register("C", "host-c", THIS_RUN, 240.0)
    assert claim(host_c, "C", epoch_c, {"default": 1}) == ["c-claimed"]

    lost = host_b.take_back(SILENT, 250.0, exclude="B")

    # A's running job comes back for B to record as lost, as A's claim left it.
    assert [(job.id, job.state, job.node, job.node_epoch, job.runner_pid, job.attempts)
            for job in lost] == [("a-running", JobState.RUNNING, "A", epoch_a, 77, 1)]  # fmt: skip
    claimed = row(host_a, "a-claimed")  # claimed, never started: back in the pool
    assert (claimed.state, claimed.attempts, claimed.spool_file, claimed.node) == (
        JobState.QUEUED, 0, None, None)  # fmt: skip
    assert (row(host_a, "b-claimed").node, row(host_a, "b-claimed").node_epoch) == ("B", epoch_b)
    assert (row(host_a, "c-claimed").node, row(host_a, "c-claimed").node_epoch) == ("C", epoch_c)
    with pytest.raises(NodeFenced):  # A's epoch moved on: it must register again
        claim(host_a, "A", epoch_a, {"default": 3})
    assert claim(host_b, "B", epoch_b, {"default": 1}) == []  # the others' did not
    assert claim(host_c, "C", epoch_c, {"default": 1}) == []
    assert claim(host_a, "idle", 1, {"default": 0}) == []
    # A's spooler picks up the spool file of the job taken back: no longer its to run.
    assert start(host_a, "a-claimed", "A", pid=78, now=255.0)[0] is ClaimAction.DISCARD
    assert row(host_a, "a-claimed") == claimed

    assert lose(host_b, lost[0], 260.0)
    recorded = row(host_b, "a-running")
    assert (recorded.state, recorded.error, recorded.scheduled_for, recorded.spool_file,
            recorded.node) == (JobState.SCHEDULED, JobError("WorkerLost", "node A went silent"),
                               300.0, None, None)  # fmt: skip
    assert [attempt.outcome for attempt in recorded.history] == ["worker_lost"]

    # A wakes up and reports on its attempt: nothing it writes lands.
    assert not host_a.finish("a-running", 77, 270.0, result="1", node="A", epoch=epoch_a), (
        "a node taken for dead overwrote the outcome its taker recorded"
    )
    host_a.set_progress("a-running", Progress(9, 10), 271.0, "A", epoch_a)
    assert row(host_a, "a-running") == recorded

    # B runs it again, by chance in a process with A's pid: A is still fenced off.
    assert claim(host_b, "B", epoch_b, {"default": 3}) == ["a-claimed", "a-running"]
    assert start(host_b, "a-running", "B", instance=OTHER_RUN, pid=77, now=400.0)[0] is (
        ClaimAction.RUN
    )
    running = row(host_b, "a-running")
    assert not host_a.finish("a-running", 77, 410.0, result="1", node="A", epoch=epoch_a)
    host_a.set_progress("a-running", Progress(9, 10), 411.0, "A", epoch_a)
    assert row(host_a, "a-running") == running
    assert host_b.finish("a-running", 77, 420.0, result="2", node="B", epoch=epoch_b)
    done = row(host_a, "a-running")
    assert (done.state, done.result, done.attempts) == (JobState.SUCCEEDED, 2, 2)
    assert [attempt.outcome for attempt in done.history] == ["worker_lost", "succeeded"]


def test_the_outcome_a_silent_node_records_before_its_loss_is_recorded_stands(
    host_a: PostgresStore, host_b: PostgresStore
) -> None:
    # Worker.lost: "if the node came back and recorded one first, this records nothing".
    epoch_a = host_a.register("A", "host-a", THIS_RUN, 100.0)
    park(host_a, "job")
    assert claim(host_a, "A", epoch_a, {"default": 1}) == ["job"]
    assert start(host_a, "job", "A", pid=77)[0] is ClaimAction.RUN
    wait_until_silent(host_b)
    lost = host_b.take_back(SILENT, 250.0, exclude="B")
    assert [job.id for job in lost] == ["job"]
    assert host_b.take_back(SILENT, 251.0, exclude="A") == []  # the excluded node's: never

    assert host_a.finish("job", 77, 260.0, result="1", node="A", epoch=epoch_a)
    assert not lose(host_b, lost[0], 270.0), "the loss overwrote the attempt's real outcome"
    done = row(host_a, "job")
    assert (done.state, done.result, done.error) == (JobState.SUCCEEDED, 1, None)
    assert [attempt.outcome for attempt in done.history] == ["succeeded"]
    assert host_b.take_back(SILENT, 280.0, exclude="B") == []  # A holds nothing now


# -- notifications ----------------------------------------------------------------------


def test_wait_wakes_when_another_host_parks_a_job(
    host_a: PostgresStore, host_b: PostgresStore
) -> None:
    host_a.wait(0.01)  # listening from here on
    later = threading.Timer(0.3, park, args=(host_b, "parked"))
    began = time.monotonic()
    later.start()
    try:
        host_a.wait(5.0)
    finally:
        later.join()
    waited = time.monotonic() - began
    assert waited < 2.5, f"wait(5) took {waited:.2f} s: the parked job was not announced"
    assert row(host_a, "parked").spool_file is None


def test_a_spooler_refills_under_its_nodes_current_epoch(
    host_a: PostgresStore, host_b: PostgresStore
) -> None:
    """A spooler that just finished claims its queue's next jobs itself (``epoch=None``):
    under its node's epoch as it is now, within the node's room, and nothing for a node
    that never registered."""
    assert claim_as_spooler(host_a, "nobody") == []
    epoch = host_a.register("A", "host-a", THIS_RUN, 100.0)
    for i, job_id in enumerate(("one", "two", "three")):
        park(host_b, job_id, created_at=100.0 + i)
    assert claim_as_spooler(host_a, "A") == ["one", "two"]  # room: 2 spoolers
    assert {row(host_a, j).node_epoch for j in ("one", "two")} == {epoch}
    assert claim_as_spooler(host_a, "A") == []  # both held: no room
    again = host_a.register("A", "host-a", THIS_RUN, 101.0)  # a restart took them back
    assert claim_as_spooler(host_a, "A") == ["one", "two"]  # the oldest first again
    assert {row(host_a, j).node_epoch for j in ("one", "two")} == {again}


def claim_as_spooler(store: PostgresStore, node: str) -> list[str]:
    claimed = store.claim_parked(node, None, {"default": 2}, UNTIL, 200.0, deliver, TASKS)
    return [job.id for job, _ in claimed]


def test_wait_lasts_its_timeout_when_no_job_became_claimable(
    host_a: PostgresStore, host_b: PostgresStore
) -> None:
    host_a.wait(0.01)  # listening from here on
    # A spooled job (a CLI's) that runs and ends without a node: nothing for a node to do.
    park(host_b, "spooled", spool_file="spool/spooled")
    assert start(host_b, "spooled", None)[0] is ClaimAction.RUN
    assert host_b.finish("spooled", 77, 220.0, result="1")
    began = time.monotonic()
    host_a.wait(1.0)
    waited = time.monotonic() - began
    assert 0.9 <= waited < 3.0, f"wait(1) took {waited:.2f} s"


# -- what a node's housekeeper recovers -------------------------------------------------


def test_unfinished_for_a_node_is_its_own_jobs_and_the_unclaimed_spooled_ones(
    host_a: PostgresStore, host_b: PostgresStore
) -> None:
    for store, node in ((host_a, "A"), (host_b, "B")):
        epoch = store.register(node, f"host-{node}", THIS_RUN, 100.0)
        for what in ("claimed", "running", "done"):
            name = f"{node}-{what}"
            park(store, name)
            assert claim(store, node, epoch, {"default": 3}) == [name]
        for what in ("running", "done"):
            assert start(store, f"{node}-{what}", node)[0] is ClaimAction.RUN
        assert store.finish(f"{node}-done", 77, 220.0, result="1", node=node, epoch=epoch)
    park(host_a, "cli", spool_file="spool/cli")  # spooled by a CLI: on a disk already
    park(host_a, "parked")  # no node claimed it yet: every node may
    park(host_a, "parked-later", run_at=900.0)

    def unfinished(node: str) -> list[str]:
        return [job.id for job in host_a.unfinished("", 100, 1e12, node=node)]

    assert unfinished("A") == ["A-claimed", "A-running", "cli"]
    assert unfinished("B") == ["B-claimed", "B-running", "cli"]
    assert unfinished("C") == ["cli"]
    assert [job.id for job in host_a.unfinished("A-running", 100, 1e12, node="A")] == ["cli"]
    assert host_a.unfinished("", 100, 150.0, node="A") == [row(host_a, "cli")]


def test_a_node_claims_only_the_tasks_it_can_run(host_a: PostgresStore) -> None:
    """A rolling deploy: a job of a task this node lacks waits for a node that has it;
    a job another library queued (its code must be on every node) is claimed anyway."""
    epoch = host_a.register("A", "host-a", THIS_RUN, 100.0)
    for job_id, task, origin in (("new", "tasks.added_later", "spoolkit"), ("known", "t", "spoolkit"),
                                 ("legacy", "legacy.spool_task", "uwsgidecorators")):  # fmt: skip
        host_a.insert(NewJob(id=job_id, task=task, payload=PAYLOAD.format(job_id), max_attempts=3,
                             backoff=1.0, priority=None, created_at=100.0, run_at=None,
                             spool_file=None, origin=origin))  # fmt: skip
    claimed = host_a.claim_parked("A", epoch, {"default": 10}, UNTIL, 200.0, deliver, TASKS)
    assert sorted(job.id for job, _ in claimed) == ["known", "legacy"]
    untouched = host_a.get("new")
    assert untouched is not None and (untouched.spool_file, untouched.node) == (None, None)
    later = host_a.claim_parked("A", epoch, {"default": 10}, UNTIL, 201.0, deliver,
                                [*TASKS, "tasks.added_later"])  # fmt: skip
    assert [job.id for job, _ in later] == ["new"]


def test_a_node_starting_beside_busy_nodes_takes_no_table_lock(pg_dsn: str) -> None:
    """Setting up a store whose schema is current changes nothing, so it never waits
    for (or deadlocks with) another node's open transaction on the jobs table."""
    with psycopg.connect(pg_dsn) as busy:
        busy.execute("LOCK TABLE spoolkit_jobs IN ROW EXCLUSIVE MODE")  # a claim in flight
        started = time.monotonic()
        PostgresStore(pg_dsn, timeout=3.0).setup()
        assert time.monotonic() - started < 2.0
        busy.rollback()
