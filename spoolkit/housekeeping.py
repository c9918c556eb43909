"""The housekeeper: makes "a job answered 202 runs" true when files go missing.

Spool files are not a safe record (uWSGI unlinks a file whose packet or
body is short, a web worker can die between committing the row and
writing the file, a person can delete one). The store is the record. The
housekeeper runs in a mule (``mule = spoolkit.mule:run`` in uwsgi.ini) and

* every half second, spools the parked jobs (scheduled further ahead than
  ``SPOOLKIT_SPOOL_AHEAD``, kept out of the spool directory) that are nearly due;
* once at start-up over every job, then every
  ``SPOOLKIT_HOUSEKEEPING_INTERVAL`` seconds over the next batch of them:
  moves torn spool files to the quarantine, spools again a queued or
  scheduled job whose file is gone, queues again a running job whose runner
  is dead and whose file is gone (when the file is still there, its
  spooler's next scan handles it);
* deletes finished jobs older than ``SPOOLKIT_RESULT_TTL``;
* every half second, fires the periodic schedules' due slots (firing.py).

Where several hosts share the store (``store.SharedStore``, a runner with a
``node``), the housekeeper is also its node's agent: it registers the node at
start (a new epoch; the jobs of its previous run come back without an
attempt counted), beats once a second from a thread of its own, claims jobs
for its idle spoolers whenever a notification says one may be claimable (and
every tick: a notification is lost while a connection is down), takes back
the jobs of nodes whose beat is older than ``SPOOLKIT_NODE_TIMEOUT``, and
recovers only its own node's jobs.

A pass looks at a bounded number of jobs, continuing where the last one
stopped, so a backlog of 100,000 jobs costs each pass the same as one of
a thousand. Every change is a conditional update, so a claim, a cancel or
a second housekeeper racing it cannot make a job run twice from two files.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass

from .config import Config
from .errors import NodeFenced, StoreUnavailable
from .firing import PeriodicJobs
from .job import Job
from .runner import Runner
from .states import WAITING, JobState
from .store import HOUSEKEEPER_BEAT, SharedStore, Store

log = logging.getLogger("spoolkit.housekeeping")

BATCH = 500
#: Jobs looked at per periodic pass (the start-up pass looks at all).
PASS_LIMIT = 2000
#: Jobs touched more recently than this are left alone (an enqueue may be
#: between its commit and its file write).
GRACE_SECONDS = 2.0
#: How often parked jobs are checked for being nearly due.
SCHEDULER_TICK = 0.5
#: How often a node records its heartbeat (several hosts on one store).
BEAT_INTERVAL = 1.0


@dataclass
class Report:
    respooled: int = 0
    requeued: int = 0
    purged: int = 0
    unparked: int = 0


class Housekeeper:
    def __init__(
        self, store: Store, runner: Runner, config: Config, periodic: PeriodicJobs | None = None
    ) -> None:
        self.store = store
        self.runner = runner
        self.config = config
        self.periodic = periodic
        self._cursor = ""
        #: This node's epoch, once registered (several hosts on one store).
        self.epoch: int | None = None
        #: Since when this node's beats have been landing without a gap (monotonic):
        #: it takes other nodes' jobs back only after a whole node timeout of them, so
        #: when the database comes back from an outage longer than the timeout, nobody
        #: takes a live node for dead before that node could beat again.
        self._beating_since: float | None = None
        self._capacity: dict[str, int] = {}
        self._tasks: Collection[str] = ()

    def run_once(self, now: float | None = None, limit: int | None = PASS_LIMIT) -> Report:
        """One pass over up to ``limit`` unfinished jobs (all with ``None``)."""
        store = self.store
        now = time.time() if now is None else now
        report = Report()
        on_its_way = self.runner.survey(now)
        seen = 0
        while limit is None or seen < limit:
            jobs = store.unfinished(self._cursor, BATCH, updated_before=now - GRACE_SECONDS,
                                    node=self.runner.node)  # fmt: skip
            if not jobs:
                self._cursor = ""  # wrapped around: the next pass starts again
                break
            self._cursor = jobs[-1].id
            seen += len(jobs)
            for job in jobs:
                if not on_its_way(job):
                    self._recover(job, report)
        if self.config.result_ttl > 0:
            while purged := store.purge(now - self.config.result_ttl):
                report.purged += purged
        if self.runner.node is None:  # a node's beat has a thread of its own
            self.record_spoolers(now)
        store.set_meta(HOUSEKEEPER_BEAT, repr(now))
        return report

    def _recover(self, job: Job, report: Report) -> None:
        store, runner = self.store, self.runner
        if job.state in WAITING:
            requeue = False
        elif job.state is JobState.RUNNING and not runner.host.runner_alive(
            job.runner, job.runner_pid
        ):
            requeue = True
        else:
            return
        now = time.time()
        far = job.state is JobState.SCHEDULED and runner.parking.parks(job.scheduled_for, now)
        delivery = None if far else runner.delivery_for(job.id, job.priority, now)
        if not store.reassign(job, delivery, now, requeue=requeue):
            return  # changed under us: whoever changed it owns it
        fresh = store.get(job.id)
        if fresh is None:
            return
        runner.submit(fresh, store.payload(job.id))
        if requeue:
            report.requeued += 1
            log.warning("job %s: runner %s pid %s is gone and so is its file; queued again",
                        job.id, job.runner, job.runner_pid)  # fmt: skip
        else:
            report.respooled += 1
            log.warning("job %s: %s delivery %s was missing; %s",
                        job.id, job.state.value, job.spool_file,
                        "parked until nearly due" if far else "spooled again")  # fmt: skip

    def spool_due(self, now: float | None = None) -> int:
        """Hand the runner the parked jobs due soon (claimed for this node where nodes
        share the store); return how many."""
        store, runner = self.store, self.runner
        now = time.time() if now is None else now
        if runner.node is not None and isinstance(store, SharedStore):
            return self.claim_due(store, runner.node, now)
        ahead = runner.parking.ahead or 0.0
        spooled = 0
        while jobs := store.due_parked(now + ahead, BATCH):
            for job in jobs:
                delivery = runner.delivery_for(job.id, job.priority, now)
                if store.reassign(job, delivery, now, requeue=False) and (
                    fresh := store.get(job.id)
                ):
                    runner.submit(fresh, store.payload(job.id))
                    spooled += 1
            if len(jobs) < BATCH:
                break
        return spooled

    def claim_due(self, store: SharedStore, node: str, now: float) -> int:
        """Claim jobs due within a tick for this node's idle spoolers and spool each
        here; how many. A node taken for dead meanwhile registers again first."""
        if self.epoch is None:
            self.join(store, node, now)
        if not self._capacity:
            return 0
        assert self.epoch is not None
        try:
            claimed = store.claim_parked(
                node, self.epoch, self._capacity, now + SCHEDULER_TICK, now,
                lambda job: self.runner.delivery_for(job.id, job.priority, now),
                self._tasks,
            )  # fmt: skip
        except NodeFenced as exc:
            log.error("%s: another node took this node's jobs back (its heartbeat was "
                      "stale); registering again", exc)  # fmt: skip
            self.join(store, node, now)
            return 0
        for job, payload in claimed:
            self.runner.submit(job, payload)
        return len(claimed)

    def namesake(self, now: float) -> str | None:
        """Another running uWSGI instance that beats under this node's name (two nodes
        with one name would keep taking each other's jobs back), or ``None``. A previous
        run of this node, whose master is gone, is no namesake: it is restarting."""
        mine = self.runner.host.instance()
        try:
            nodes = self.store.nodes(now, self.config.node_timeout)
        except StoreUnavailable:
            return None  # the first beat will say what is wrong with the store
        for node in nodes:
            if node.id != self.runner.node:
                continue
            theirs = json.loads(node.figures).get("instance")
            if theirs and theirs != mine and self.runner.host.runner_alive(theirs, None):
                return f"{theirs} on {node.host}"
        return None

    def join(self, store: SharedStore, node: str, now: float) -> None:
        """Register this node (a new epoch), taking back its previous run's jobs."""
        self.epoch = store.register(node, socket.gethostname(), self.runner.host.instance(), now)
        log.info("node %s registered with epoch %d", node, self.epoch)

    def take_back(self, now: float) -> int:
        """Take back the jobs of nodes silent for ``SPOOLKIT_NODE_TIMEOUT``: their
        claimed jobs return to the pool, their running attempts are recorded lost."""
        store, node = self.store, self.runner.node
        if node is None or not isinstance(store, SharedStore):
            return 0
        since = self._beating_since
        if since is None or time.monotonic() - since < self.config.node_timeout:
            return 0
        lost = store.take_back(self.config.node_timeout, now, exclude=node)
        for job in lost:
            why = (f"node {job.node} went silent for over {self.config.node_timeout:g} s "
                   f"while attempt {job.attempts} ran there (pid {job.runner_pid})")  # fmt: skip
            log.warning("job %s: %s; its attempt counts as lost", job.id, why)
            self.runner.lost(job, why)
        return len(lost)

    def stop_aborted(self, now: float) -> int:
        """Kill the runners of jobs whose abort was asked ``SPOOLKIT_ABORT_GRACE`` ago and
        that are still running; the killed attempt is then recorded ``cancelled``."""
        killed = 0
        for job in self.store.aborting(now - self.config.abort_grace):
            if job.node != self.runner.node:
                continue  # running on another node: its own housekeeper stops it
            if self.runner.host.kill(job.runner, job.runner_pid):
                killed += 1
                log.warning("job %s: abort asked %.0fs ago and still running; killed its "
                            "runner pid %s", job.id, self.config.abort_grace,
                            job.runner_pid)  # fmt: skip
        return killed

    def record_spoolers(self, now: float) -> None:
        """Record this node's beat with its spoolers alive (per queue too): what
        ``/healthz``, ``/metrics`` and a process outside uWSGI (the CLI) read."""
        _, health = self.runner.health()
        queues = health.get("queues") or {}
        seen = {name: entry["spoolers_alive"] for name, entry in queues.items()}
        figures = {"spoolers": health.get("spoolers"), "queues": seen,
                   "instance": self.runner.host.instance()}  # fmt: skip
        self.store.beat(self.config.node, socket.gethostname(), json.dumps(figures), now)

    def fire_due(self, now: float) -> int:
        """Queue a job for each periodic schedule's due slot, at most once per slot."""
        return self.periodic.fire_due(now) if self.periodic is not None else 0

    def beat_forever(self) -> None:
        """A node's heartbeat, from a thread of its own: a long pass never makes the
        node look dead, and a frozen process (every thread stopped) does."""
        while True:
            try:
                self.record_spoolers(time.time())
            except StoreUnavailable as exc:
                self._beating_since = None
                log.warning("node heartbeat not recorded: %s", exc)
            except Exception:
                self._beating_since = None
                log.exception("node heartbeat failed")
            else:
                if self._beating_since is None:
                    self._beating_since = time.monotonic()
            time.sleep(BEAT_INTERVAL)

    def tick(self, now: float) -> None:
        """What the housekeeper does every half second."""
        self.runner.maintain(now)
        self.stop_aborted(now)
        if self.runner.node is not None:
            self._capacity = self.runner.capacity()
            self._tasks = self.runner.tasks()
            self.take_back(now)
        self.spool_due(now)
        self.fire_due(now)
        self.store.checkpoint()

    def run_forever(self) -> None:
        interval = self.config.housekeeping_interval
        log.info("housekeeper started: parked jobs every %.1fs, housekeeping every %.1fs",
                 SCHEDULER_TICK, interval)  # fmt: skip
        if self.runner.node is not None:
            while (other := self.namesake(time.time())) is not None:
                log.error("SPOOLKIT_NODE=%s is taken by a running instance (%s): this one "
                          "neither beats nor claims jobs until it is gone; give each uWSGI "
                          "instance a node name of its own", self.runner.node, other)  # fmt: skip
                time.sleep(self.config.node_timeout)
            threading.Thread(target=self.beat_forever, name="spoolkit-beat", daemon=True).start()
        next_pass, limit = 0.0, None  # the first pass, at start-up, looks at every job
        next_tick = 0.0
        while True:
            now = time.time()
            try:
                if now >= next_tick:
                    next_tick = now + SCHEDULER_TICK
                    self.tick(now)
                else:  # woken by a notification: a job may be claimable
                    self.spool_due(now)
                if now >= next_pass:
                    report = self.run_once(now, limit)
                    next_pass, limit = now + interval, PASS_LIMIT
                    if report.respooled or report.requeued or report.purged:
                        log.info("housekeeping: %s", report)
            except Exception:
                log.exception("housekeeping failed; trying again in %.1fs", SCHEDULER_TICK)
                next_pass = max(next_pass, now + interval)
            self.store.wait(max(0.0, next_tick - time.time()))
