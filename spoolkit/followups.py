"""What a finished job queues: its ``on_success``/``on_failure`` callback and the
delivery of its ``callback_url`` webhook.

The store calls a :class:`Collector` inside the transaction that records the
outcome, so the callback is queued if and only if the outcome is recorded;
the runner then hands the collected jobs over like any new job (a crash in
between leaves rows whose files the housekeeper writes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from .config import Config
from .encoding import encode_arguments
from .job import Job, new_job_id
from .queues import DEFAULT_QUEUE
from .registry import TaskRegistry
from .states import JobState
from .store import NewJob
from .webhook import WEBHOOK_TASK

#: Names the delivery of a new job (``Runner.delivery_for``).
DeliveryNamer = Callable[[str, int | None, float], str | None]


class FollowUps:
    def __init__(self, registry: TaskRegistry, config: Config, name_delivery: DeliveryNamer):
        self.registry = registry
        self.config = config
        self.name_delivery = name_delivery

    @staticmethod
    def possible(job: Job) -> bool:
        """Can an outcome of ``job`` queue anything? When not (most jobs), the outcome
        is recorded without a collector: no second read of the row, no rendering."""
        return bool(job.on_success or job.on_failure or job.callback_url)

    def collect(self) -> Collector:
        """A fresh collector for one outcome (the store may call it again on a retry of
        its transaction; what it made last is what was recorded)."""
        return Collector(self)


class Collector:
    def __init__(self, follow_ups: FollowUps) -> None:
        self.follow_ups = follow_ups
        self.made: list[NewJob] = []

    def __call__(self, job: Job) -> list[NewJob]:
        wanted: list[tuple[str, bool]] = []  # (task, is_webhook)
        if job.state is JobState.SUCCEEDED and job.on_success:
            wanted.append((job.on_success, False))
        elif job.state is JobState.FAILED and job.on_failure:
            wanted.append((job.on_failure, False))
        if job.callback_url and job.state.is_finished:
            wanted.append((WEBHOOK_TASK, True))
        if not wanted:
            self.made = []
            return []
        ids = [new_job_id() for _ in wanted]
        # The finished job as GET /jobs/<id> shows it, these jobs listed as its callbacks.
        shown = replace(job, callbacks=(*job.callbacks, *ids)).to_dict()
        now = time.time()
        made = []
        for job_id, (name, webhook) in zip(ids, wanted, strict=True):
            task = self.follow_ups.registry.get(name)
            args = [job.callback_url, shown] if webhook else [shown]
            made.append(
                NewJob(
                    id=job_id, task=name, payload=encode_arguments(name, args, {}),
                    max_attempts=task.policy.max_attempts, backoff=task.policy.backoff,
                    priority=job.priority, created_at=now, run_at=None,
                    spool_file=self.follow_ups.name_delivery(job_id, job.priority, now),
                    parent_id=job.id, queue=task.queue or DEFAULT_QUEUE,
                )
            )  # fmt: skip
        self.made = made
        return made
