"""``GET /metrics``: the kit in the Prometheus text format.

Computed from the store at scrape time, not kept in process memory
(prometheus_client's multiprocess mode). Why: under uWSGI a job's attempts
end in whichever spooler ran them, spoolers are respawned, and any web
worker answers the scrape; multiprocess mode would need a shared directory
cleaned at every start and a file per process ever forked, and would reset
or double-count as processes come and go. The store already holds every
job, and keeps running totals per task in the transaction that records each
outcome (``stats.py``), so every worker answers the same figures, across
restarts, and (with a database shared between hosts) across hosts.
prometheus_client still writes the format: families, escaping, histograms.

Label values are bounded: tasks come from the registry (never from a
request), queues from the configuration and the store, states and outcomes
from fixed lists.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from . import api, stats
from .job import ATTEMPT_OUTCOMES
from .service import JobService, current_service
from .states import FINISHED, JobState

_FINAL_STATES = sorted(state.value for state in FINISHED)


class StoreCollector(Collector):
    """Every family, read from the service's store when collected."""

    def __init__(self, service: JobService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        overview = self.service.overview(now)
        yield from self._jobs(overview)
        yield from self._spoolers(overview)
        yield from self._totals(self.service.store.totals())

    def _jobs(self, overview: dict[str, Any]) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("spoolkit_jobs", "Jobs in the store, by state and queue.",
                                 labels=["state", "queue"])  # fmt: skip
        oldest = GaugeMetricFamily(
            "spoolkit_queue_oldest_ready_seconds",
            "Age of the queue's oldest job ready to run (0 when none waits).",
            labels=["queue"],
        )
        for queue, figures in overview["queues"].items():
            for state in JobState:
                jobs.add_metric([state.value, queue], figures["states"][state.value])
            oldest.add_metric([queue], figures["oldest_ready_age"] or 0.0)
        yield jobs
        yield oldest

    def _spoolers(self, overview: dict[str, Any]) -> Iterator[Metric]:
        spoolers = GaugeMetricFamily(
            "spoolkit_spoolers", "uWSGI spooler processes alive, and configured.",
            labels=["state"],
        )  # fmt: skip
        for state in ("alive", "configured"):
            count = overview["spoolers"][state]
            if count is not None:  # unknown: left out rather than reported as 0
                spoolers.add_metric([state], count)
        yield spoolers
        beat = GaugeMetricFamily(
            "spoolkit_node_last_beat_age_seconds",
            "Seconds since each live node's heartbeat, by the store's clock.",
            labels=["node"],
        )
        alive = GaugeMetricFamily(
            "spoolkit_node_spoolers", "Each live node's spoolers alive, and configured.",
            labels=["node", "state"],
        )  # fmt: skip
        for node in overview["nodes"]:
            beat.add_metric([node["id"]], node["last_beat_age"])
            for state in ("alive", "configured"):
                count = (node["spoolers"] or {}).get(state)
                if count is not None:
                    alive.add_metric([node["id"], state], count)
        yield beat
        yield alive
        housekeeper = overview["housekeeper"]
        if housekeeper is not None and housekeeper["last_run_age"] is not None:
            yield GaugeMetricFamily(
                "spoolkit_housekeeper_last_pass_age_seconds",
                "Seconds since the housekeeper's last pass.",
                value=housekeeper["last_run_age"],
            )

    def _totals(self, totals: dict[str, dict[str, float]]) -> Iterator[Metric]:
        finished = CounterMetricFamily(
            "spoolkit_jobs_finished", "Jobs that reached a final state.", labels=["task", "state"]
        )
        attempts = CounterMetricFamily(
            "spoolkit_attempts", "Attempts that ended, by outcome.", labels=["task", "outcome"]
        )
        duration = HistogramMetricFamily(
            "spoolkit_job_duration_seconds", "Run time of each attempt.", labels=["task"]
        )
        wait = HistogramMetricFamily(
            "spoolkit_job_wait_seconds",
            "Time from when an attempt was due to when it started.",
            labels=["task"],
        )
        for task in self.service.registry.names():
            own = totals.get(task, {})
            ended = stats.labelled(own, "finished")
            for state in _FINAL_STATES:
                finished.add_metric([task, state], ended.get(state, 0.0))
            outcomes = stats.labelled(own, "attempt")
            for outcome in ATTEMPT_OUTCOMES:
                attempts.add_metric([task, outcome], outcomes.get(outcome, 0.0))
            for family, name in ((duration, "duration"), (wait, "wait")):
                buckets, total = stats.histogram(own, name)
                family.add_metric([task], buckets, total)
        yield from (finished, attempts, duration, wait)


def serve() -> Response:
    """The view: the token is needed (as for ``/jobs``) unless ``SPOOLKIT_METRICS_PUBLIC``."""
    service = current_service()
    token = service.config.api_token
    if token and not service.config.metrics_public and not api.authorized(token):
        return api.error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(service))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
