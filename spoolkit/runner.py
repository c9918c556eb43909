"""The runner contract: how queued jobs reach a process that runs them.

Three runners implement it, each a module of its own:

* ``spooler.SpoolerRunner`` (under uWSGI): a spool file per job, run by the
  spooler processes configured in uwsgi.ini. The production runner.
* ``local.LocalRunner`` (outside uWSGI, ``flask run``): threads in this process.
* ``eager.EagerRunner`` (``SPOOLKIT_EAGER=1``): the job runs inside ``delay()``.

What differs between them is said here, as attributes and methods; the
service and the housekeeper never ask which runner they have. A new runner
implements this protocol and is chosen in ``extension.choose_runner``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

from .job import Job
from .queues import DEFAULT_QUEUE
from .schedule import Parking
from .store import NewJob
from .worker import Host, Worker


class Handoff(Protocol):
    """A job staged with a runner before its row is recorded (see ``Runner.stage``)."""

    def commit(self) -> None:
        """The row is recorded: let the runner run the job. Never raises."""
        ...

    def abort(self) -> None:
        """The row could not be recorded: the job must never run."""
        ...


class Deferred:
    """A handoff with nothing to undo: ``commit`` calls ``then`` (if given), ``abort``
    does nothing. For runners that hold jobs in memory, and for parked jobs."""

    def __init__(self, then: Callable[[], None] | None = None) -> None:
        self.then = then

    def commit(self) -> None:
        if self.then is not None:
            self.then()

    def abort(self) -> None:
        """Nothing was handed over yet."""


class Handoffs:
    """Several handoffs as one: for runners that stage a batch job by job."""

    def __init__(self, parts: Sequence[Handoff]) -> None:
        self.parts = parts

    def commit(self) -> None:
        for part in self.parts:
            part.commit()

    def abort(self) -> None:
        for part in self.parts:
            part.abort()


def stage_each(runner: Runner, jobs: Sequence[NewJob]) -> Handoffs:
    """``runner.stage`` for each job; if one fails, what was staged is undone first."""
    staged: list[Handoff] = []
    try:
        for new in jobs:
            staged.append(runner.stage(new.id, new.task, new.spool_file, new.payload,
                                       new.run_at, new.priority, queue=new.queue))  # fmt: skip
    except BaseException:
        Handoffs(staged).abort()
        raise
    return Handoffs(staged)


def delivery_of(
    runner: Runner,
    job_id: str,
    priority: int | None,
    run_at: float | None,
    now: float,
    *,
    batch: bool = False,
) -> str | None:
    """The delivery a new job due at ``run_at`` (of a batch, with ``batch``) gets from
    ``runner``: ``None`` when the runner parks it (it waits in the store until the
    housekeeper spools or claims it)."""
    if runner.parking.parks(run_at, now, batch=batch):
        return None
    return runner.delivery_for(job_id, priority, now)


class WorkerRunner:
    """What every runner with a ``Worker`` answers the same way: a lost attempt is
    recorded by its worker, and it can run the tasks of its worker's registry."""

    worker: Worker

    def lost(self, job: Job, why: str) -> None:
        hand_over(self, self.worker.lost(job, why).follow_ups)  # type: ignore[arg-type]

    def tasks(self) -> list[str]:
        return self.worker.registry.names()


def hand_over(runner: Runner, jobs: Sequence[NewJob]) -> None:
    """Hand jobs whose rows are already recorded (callbacks, webhook deliveries) to the
    runner; a crash before it leaves rows the housekeeper spools."""
    for new in jobs:
        runner.stage(new.id, new.task, new.spool_file, new.payload, new.run_at,
                     new.priority, queue=new.queue).commit()  # fmt: skip


class Runner(Protocol):
    @property
    def name(self) -> str:
        """For ``/healthz`` and logs only; behaviour never depends on it."""
        ...

    @property
    def housekept(self) -> bool:
        """A housekeeper (the uWSGI mule) maintains the store and recovers lost deliveries."""
        ...

    @property
    def runs_inline(self) -> bool:
        """The job has run by the time ``submit`` returns; ``at``/``countdown`` are ignored."""
        ...

    @property
    def parking(self) -> Parking:
        """Which jobs wait in the store rather than in the runner."""
        ...

    @property
    def priority_unsupported(self) -> str | None:
        """Why a job's priority would be ignored, or ``None`` when priorities work."""
        ...

    @property
    def host(self) -> Host:
        """The processes jobs run in: instance id, liveness, time limit."""
        ...

    @property
    def queues(self) -> Collection[str] | None:
        """The queues jobs can be sent to (uWSGI: one per spooler directory), or
        ``None`` when any queue name is accepted (runners without directories)."""
        ...

    @property
    def node(self) -> str | None:
        """The node this runner claims jobs for, when several hosts share the store
        (``SPOOLKIT_NODE``): every job is parked and nodes claim them. ``None`` on one
        host: a job goes straight to a runner."""
        ...

    def capacity(self) -> dict[str, int]:
        """How many jobs of each queue this node can run at once (its live spoolers):
        what it claims up to. Empty where the runner claims nothing."""
        ...

    def lost(self, job: Job, why: str) -> None:
        """Record that the attempt running ``job`` was lost with its node (see
        ``Worker.lost``), and hand over what its outcome queued."""
        ...

    def tasks(self) -> Collection[str]:
        """The tasks this runner's processes can run: a node claims only jobs of these
        (during a rolling deploy, a task new to some nodes waits for one that has it)."""
        ...

    def delivery_for(self, job_id: str, priority: int | None, now: float) -> str:
        """Name the delivery of a new job (recorded in the row before ``submit``)."""
        ...

    def stage(
        self,
        job_id: str,
        task: str,
        delivery: str | None,
        payload: str,
        run_at: float | None,
        priority: int | None,
        *,
        queue: str = DEFAULT_QUEUE,
    ) -> Handoff:
        """Hand a job over in two steps around recording its row: what can fail for
        want of space (writing a spool file) happens here, before the row exists
        (``SpoolWriteError``: nothing is recorded), and nothing runs until
        ``commit()``. So a job is either recorded and runs, or neither. ``queue``
        (one of ``queues``) says which of the runner's queues gets it."""
        ...

    def submit(self, job: Job, payload: str) -> None:
        """Hand over a job whose row already names ``job.spool_file`` (the housekeeper's
        recovery), to its queue, ``job.queue``; ``SpoolWriteError`` if that failed (the
        next pass tries again)."""
        ...

    def release(self, job: Job) -> None:
        """A waiting job was cancelled: let whatever holds it drop it soon."""
        ...

    def hand_off_only(self) -> None:
        """Run no job in this process from now on: what it hands over stays recorded
        for the server to deliver (a CLI command, which exits as soon as it is done)."""
        ...

    def survey(self, now: float) -> Callable[[Job], bool]:
        """Look once at what the runner holds; the check tells, per unfinished job,
        whether its delivery will still reach a runner (the housekeeper recovers
        those for which it answers ``False``)."""
        ...

    def maintain(self, now: float) -> None:
        """Called by the housekeeper on every tick: keep what the runner holds in order
        (the spooler: recreate a removed spool directory, publish its spoolers for
        producers, purge its quarantine)."""
        ...

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Are the runner's processes there? ``(healthy, report for /healthz)``."""
        ...
