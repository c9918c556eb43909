"""The job store's contract: everything the service, worker, housekeeper and API ask of it.

The store, not the spool directory, is the record of every accepted job.
:class:`~spoolkit.sqlite.SQLiteStore` is the embedded implementation; a
second database plugs in by implementing :class:`Store` and passing the
contract tests in ``tests/test_store_contract.py`` (add it to the
``store`` fixture there). Every state change is a conditional update, so
two processes racing on one job cannot both win.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .job import Job, JobError, Progress
from .lifecycle import ClaimAction
from .queues import DEFAULT_QUEUE
from .states import FINISHED, JobState

#: ``set_meta`` key: when the housekeeper last finished a pass (unix seconds).
HOUSEKEEPER_BEAT = "housekeeper"


@dataclass(frozen=True)
class NewJob:
    """A job about to be recorded: checked, encoded, its delivery chosen."""

    id: str
    task: str
    payload: str
    max_attempts: int
    backoff: float
    priority: int | None
    created_at: float
    run_at: float | None
    spool_file: str | None
    #: Who queued it: "spoolkit", or the library whose spool call the kit took over.
    origin: str = "spoolkit"
    #: The queue that runs it (``spool_file`` is relative to that queue's directory).
    queue: str = DEFAULT_QUEUE
    parent_id: str | None = None
    on_success: str | None = None
    on_failure: str | None = None
    callback_url: str | None = None
    timeout: float | None = None
    #: With ``idempotency_hash`` (of task and arguments): a second insert with the key
    #: returns the first job instead (``Job.replayed``), or ``IdempotencyConflict``.
    idempotency_key: str | None = None
    idempotency_hash: str | None = None
    #: Seconds a key stays bound to its first job (SPOOLKIT_IDEMPOTENCY_TTL).
    idempotency_ttl: float = 86400.0


@dataclass(frozen=True)
class QueueCounts:
    """One queue's waiting and running jobs, for ``/healthz`` and the CLI."""

    #: Queued, or scheduled and due: waiting for a spooler of the queue.
    ready: int = 0
    #: Scheduled for later (retries waiting out their backoff included).
    scheduled: int = 0
    running: int = 0
    #: When the oldest ready job became ready (its scheduled time, else its creation).
    oldest_ready: float | None = None


@dataclass(frozen=True)
class Node:
    """A server using the store, as its housekeeper last recorded itself (``beat``)."""

    id: str
    host: str
    #: Seconds since its last beat, by the store's clock (PostgreSQL: the database
    #: server's, the one clock every host shares).
    age: float
    #: What it reported: its spoolers (alive, configured) and its queues' spoolers.
    figures: str


@dataclass(frozen=True)
class SlotRecord:
    """Where a periodic schedule stands: the last slot decided (fired, or skipped as
    too late), and the last slot fired with the id of its job."""

    last_slot: float
    fired_slot: float | None
    fired_job: str | None


#: Makes the jobs a finished job queues (callbacks, webhook deliveries); the store calls
#: it inside the transaction that records the outcome and records what it returns.
FollowUp = Callable[[Job], Sequence[NewJob]]


class Store(Protocol):
    """A job store. Times are unix seconds; errors are ``StoreUnavailable``."""

    #: Where the jobs are, for logs (a file path, or a database address without secrets).
    path: str

    def setup(self) -> None:
        """Create what is missing, then hold no connection: safe before uWSGI forks."""

    # -- reading
    def get(self, job_id: str) -> Job | None: ...
    def payload(self, job_id: str) -> str:
        """The job's encoded arguments; ``JobNotFound`` if there is no such job."""
        ...

    def list_jobs(
        self,
        state: JobState | None = None,
        task: str | None = None,
        limit: int = 50,
        *,
        with_results: bool = True,
        queue: str | None = None,
        id_prefix: str | None = None,
        offset: int = 0,
    ) -> list[Job]:
        """Newest first, skipping ``offset``; ``with_results=False`` leaves every
        ``result`` out (``None``). ``id_prefix``: ids that start with it."""
        ...

    def counts(self) -> dict[str, int]:
        """Jobs per state, every state present."""
        ...

    def state_counts(self) -> dict[tuple[str, str], int]:
        """Jobs per ``(queue, state)``; pairs without any left out."""
        ...

    def finished_since(self, since: float) -> dict[str, int]:
        """Jobs that reached each final state at or after ``since``, every final state present."""
        ...

    def changed_since(self, after: float, limit: int) -> list[Job]:
        """Jobs whose row changed after ``after`` (``updated_at``), oldest change first,
        without results: what ``flask spoolkit tail`` follows."""
        ...

    def totals(self) -> dict[str, dict[str, float]]:
        """Every task's running totals (``stats.py``): ``{task: {series: value}}``."""
        ...

    def queue_counts(self, now: float) -> dict[str, QueueCounts]:
        """Ready, scheduled and running jobs per queue (queues without any left out)."""
        ...

    def unfinished(
        self, after_id: str, limit: int, updated_before: float, node: str | None = None
    ) -> list[Job]:
        """Unfinished, unparked jobs untouched since ``updated_before``, in id order;
        with ``node``, only that node's and those no node claimed."""
        ...

    def due_parked(self, until: float, limit: int) -> list[Job]:
        """Parked jobs (waiting, no spool file) due by ``until``, soonest first."""
        ...

    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def beat(self, node: str, host: str, figures: str, now: float) -> None:
        """Record that ``node`` (on ``host``) is alive now, with its ``figures`` (JSON).
        A store with a clock of its own (PostgreSQL) uses it rather than ``now``."""

    def nodes(self, now: float, within: float) -> list[Node]:
        """The nodes whose last beat is less than ``within`` seconds old, by id."""
        ...
    def check(self) -> None:
        """Raise ``StoreUnavailable`` unless a job could be recorded now (for /healthz)."""

    def checkpoint(self) -> None:
        """Maintenance the housekeeper does off the hot path (SQLite: the WAL)."""

    def wait(self, timeout: float) -> None:
        """Return after ``timeout`` seconds, or sooner when another process may have
        made a job claimable (PostgreSQL: a notification); the housekeeper's pause."""

    def close(self) -> None:
        """Close the connections this process holds; the next call opens new ones."""

    # -- writing
    def insert(self, new: NewJob) -> Job:
        """Record an accepted job durably: this is what a ``202`` promises."""
        ...

    def insert_many(self, jobs: Sequence[NewJob]) -> list[Job]:
        """Record several accepted jobs in one durable transaction (one fsync): all of
        them, or none. Idempotency keys are not taken here (``ValueError``)."""
        ...

    def delete(self, job_id: str) -> None:
        """Remove a job that never reached a runner (its spool file could not be written)."""

    def claim(
        self,
        job_id: str,
        delivery: str,
        instance: str,
        pid: int,
        now: float,
        is_alive: Callable[[int], bool],
        node: str | None = None,
    ) -> tuple[ClaimAction, Job | None]:
        """Decide (``lifecycle.decide_claim``) and, for RUN and RERUN, mark it running by us.
        ``node``: this spooler's node, when several hosts share the store (it runs only
        what its node claimed)."""
        ...

    def finish(
        self,
        job_id: str,
        runner_pid: int,
        now: float,
        *,
        result: str | None = None,
        error: JobError | None = None,
        retry_at: float | None = None,
        park: bool = False,
        outcome: str | None = None,
        follow_up: FollowUp | None = None,
        node: str | None = None,
        epoch: int | None = None,
    ) -> bool:
        """Record an attempt's outcome (``cancelled`` if an abort was requested) and its
        line in the history; a final one records ``follow_up``'s jobs in the same
        transaction. ``False`` if another runner owns the job now, or its row no longer
        carries ``node`` and ``epoch`` (the claim's fence, see ``rows.FENCE``). Waits
        while the store is unavailable: an outcome is never dropped.
        """
        ...

    def set_progress(
        self,
        job_id: str,
        progress: Progress,
        now: float,
        node: str | None = None,
        epoch: int | None = None,
    ) -> None:
        """Record a running job's progress, fenced as ``finish`` is."""
    def cancel(self, job_id: str, now: float, follow_up: FollowUp | None = None) -> Job:
        """Cancel a waiting job (``InvalidJobState`` otherwise), durably, with
        ``follow_up``'s jobs."""
        ...

    def request_abort(self, job_id: str, now: float, follow_up: FollowUp | None = None) -> Job:
        """Cancel a waiting job, or mark a running one to be stopped; durably."""
        ...

    def abort_requested(self, job_id: str) -> bool: ...

    def aborting(self, requested_before: float) -> list[Job]:
        """Running jobs whose abort was requested before ``requested_before``."""
        ...

    def restart(self, job_id: str, spool_file: str | None, now: float) -> Job:
        """Queue a failed or cancelled job again with a fresh budget, durably."""
        ...

    def reassign(self, job: Job, spool_file: str | None, now: float, *, requeue: bool) -> bool:
        """Point a job at a new delivery if its row is still exactly as ``job`` saw it."""
        ...

    def purge(
        self,
        finished_before: float,
        limit: int = 1000,
        states: Collection[JobState] = FINISHED,
    ) -> int:
        """Delete up to ``limit`` jobs in ``states`` (final ones only: ``ValueError``
        otherwise) finished before ``finished_before``; how many. Totals stay."""
        ...

    # -- periodic schedules
    def slots(self) -> dict[str, SlotRecord]:
        """Every periodic schedule's record, by schedule name."""
        ...

    def advance_slot(self, schedule: str, slot: float, now: float, job: NewJob | None) -> bool:
        """Move ``schedule`` on to ``slot`` if its last decided slot is earlier (or it has
        none), recording ``job`` (with ``periodic_slot`` = ``slot``) in the same durable
        transaction; ``job=None`` records a skipped slot, or a first sight. ``False``
        (nothing recorded) if the slot was decided already: a slot fires at most once."""
        ...


@runtime_checkable
class SharedStore(Store, Protocol):
    """A store several hosts use at once (PostgreSQL): each node claims jobs from it.

    A node is one uWSGI instance (``SPOOLKIT_NODE``). Its housekeeper registers it
    (a new epoch), keeps its heartbeat, claims jobs for its idle spoolers and takes
    back the jobs of nodes whose heartbeat went stale. Every claim carries the
    node and its epoch into the row, and every later write about the job must
    match them (``rows.FENCE``): a node that was frozen or cut off cannot
    overwrite what another did after taking its jobs back.
    """

    def register(self, node: str, host: str, instance: str, now: float) -> int:
        """A node (re)starts: a new epoch for it, and its jobs back at once, counting
        no attempt: claimed ones go back to the pool; running ones whose runner is
        not ``instance`` (its previous run, stopped by a restart) are queued again
        with an ``interrupted`` line. Its new epoch."""
        ...

    def claim_parked(
        self,
        node: str,
        epoch: int | None,
        capacity: Mapping[str, int],
        until: float,
        now: float,
        deliver: Callable[[Job], str],
        tasks: Collection[str],
    ) -> list[tuple[Job, str]]:
        """Claim for ``node`` unclaimed jobs due by ``until``, of the ``tasks`` it can
        run (jobs another library queued, any: their code must be on every node): per
        queue, as many as
        ``capacity`` says minus those the node holds there already (claimed or
        running); lowest priority number first (none last), then soonest due; rows
        another node is claiming are skipped. Each gets ``deliver(job)`` as its spool
        file. The jobs with their payloads; ``NodeFenced`` if ``epoch`` is no longer
        the node's. ``epoch=None`` (a spooler of the node refilling what it just freed)
        claims under the node's epoch as it is, and nothing before it registered."""
        ...

    def take_back(self, stale_after: float, now: float, exclude: str) -> list[Job]:
        """For every node but ``exclude`` whose heartbeat is older than ``stale_after``
        seconds (by the store's clock) and that holds jobs: a new epoch (its late
        writes are fenced), its claimed jobs back in the pool (no attempt), and its
        running jobs returned for the caller to record their attempt as lost."""
        ...
