"""The eager runner (``SPOOLKIT_EAGER=1``): each job runs inside ``delay()``, retries
included, ignoring ``at``/``countdown``. For tests and debugging, never for production."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask

from .config import Config
from .encoding import decode_arguments
from .followups import FollowUps
from .job import Job
from .queues import DEFAULT_QUEUE
from .registry import TaskRegistry
from .runner import Deferred, Handoff, WorkerRunner, hand_over
from .runtime import ProcessHost
from .schedule import Parking
from .store import Store
from .worker import Verdict, Worker

log = logging.getLogger("spoolkit.eager")

#: The delivery name of every eager job.
EAGER_DELIVERY = "eager"


class EagerRunner(WorkerRunner):
    name = "eager"
    #: A housekeeper (the uWSGI mule) maintains the store and recovers lost deliveries.
    housekept = False
    runs_inline = True
    priority_unsupported = None  # accepted, meaningless when jobs run at once
    parking = Parking()
    #: No directories outside uWSGI: a job's queue is recorded, and every queue name
    #: is accepted (each job runs inline whatever its queue).
    queues = None

    def __init__(self, app: Flask, config: Config, store: Store, registry: TaskRegistry) -> None:
        self.host = ProcessHost()
        follow_ups = FollowUps(registry, config, self.delivery_for)
        self.worker = Worker.for_config(app, config, store, registry, self.host,
                                        follow_ups=follow_ups)  # fmt: skip
        log.warning("SPOOLKIT_EAGER is on: jobs run inside delay(), at once (tests only)")

    #: Runs the jobs of this process only: it claims nothing from other hosts.
    node = None

    def capacity(self) -> dict[str, int]:
        return {}

    def delivery_for(self, job_id: str, priority: int | None, now: float) -> str:
        return EAGER_DELIVERY

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
        """Run the job at ``commit``, once its row exists."""
        return Deferred(lambda: self._run(job_id, task, payload))

    def submit(self, job: Job, payload: str) -> None:
        self._run(job.id, job.task, payload)

    def _run(self, job_id: str, task: str, payload: str) -> None:
        args, kwargs = decode_arguments(payload)
        job = self.worker.store.get(job_id)
        for _ in range((job.max_attempts if job else 1) + 1):
            step = self.worker.process(job_id, EAGER_DELIVERY, task, args, kwargs)
            hand_over(self, step.follow_ups)
            if step.verdict is not Verdict.AGAIN:
                return

    def release(self, job: Job) -> None:
        """Nothing to release: an eager job has already run."""

    def hand_off_only(self) -> None:
        """Nothing to change: eager mode (tests) runs every job inside ``delay()``."""

    def survey(self, now: float) -> Callable[[Job], bool]:
        return lambda job: True  # nothing is ever on its way: it has run

    def maintain(self, now: float) -> None:
        """Nothing is held: every job has run already."""

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {}
