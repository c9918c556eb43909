"""The web node's runner: a uWSGI instance without spoolers, on a store several hosts share.

In the multi-host layout (``deploy/multihost/``) web nodes only accept jobs:
each is recorded parked in PostgreSQL with a notification, and the spooler
nodes claim them (``store.SharedStore``). A web node writes no spool file and
runs no job. It still has a housekeeper if its uwsgi.ini starts the mule: it
beats as a node (``/healthz`` lists it), fires periodic jobs (once per slot
across all nodes), purges old jobs and takes back the jobs of spooler nodes
that went silent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask

from . import runtime
from .config import Config
from .followups import FollowUps
from .job import Job
from .queues import DEFAULT_QUEUE
from .registry import TaskRegistry
from .runner import Deferred, Handoff, WorkerRunner
from .schedule import Parking
from .spoolfile import spool_file_name
from .store import Store
from .worker import Worker


class WebNodeRunner(WorkerRunner):
    name = "web"
    #: Its mule, if it has one, keeps the node's beat, fires periodic jobs and purges.
    housekept = True
    runs_inline = False
    #: Spooler nodes claim jobs in priority order.
    priority_unsupported = None
    #: Every job waits in the store until a spooler node claims it.
    parking = Parking(everything=True)
    #: Every queue name is accepted: spooler nodes serve the queues their uwsgi.ini
    #: declares, and a job for a queue none serves waits (``/healthz`` shows its age).
    queues = None

    def __init__(self, app: Flask, config: Config, store: Store, registry: TaskRegistry) -> None:
        self.node = config.node
        self.host = runtime.UwsgiHost()
        follow_ups = FollowUps(registry, config, lambda job_id, priority, now: None)
        # Runs no job; records the lost attempts of silent nodes it takes back.
        self.worker = Worker.for_config(app, config, store, registry, self.host, self.parking,
                                        follow_ups, self.node)  # fmt: skip

    def capacity(self) -> dict[str, int]:
        return {}  # no spoolers: it claims nothing

    def delivery_for(self, job_id: str, priority: int | None, now: float) -> str:
        return spool_file_name(job_id, now)  # never used: nothing is delivered here

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
        """Nothing to stage: the row, parked, is the whole job (its insert notifies)."""
        return Deferred()

    def submit(self, job: Job, payload: str) -> None:
        """Nothing to hand over: parked jobs are claimed by spooler nodes."""

    def release(self, job: Job) -> None:
        """Nothing held here: a claiming node's spooler drops the cancelled job."""

    def hand_off_only(self) -> None:
        """Nothing to change: this runner never runs a job."""

    def survey(self, now: float) -> Callable[[Job], bool]:
        # The housekeeper shows it only jobs no node claimed that have a delivery
        # (a CLI process's): on their way while that process lives.
        return lambda job: False

    def maintain(self, now: float) -> None:
        """No spool directory to look after."""

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy: a web node needs only the store (``/healthz`` checks it)."""
        return True, {"spoolers": {"configured": 0, "alive": 0}, "role": "web"}
