"""``flask spoolkit ...``: look at and manage jobs from a shell.

The CLI runs outside uWSGI, on the same store as the server: what it reads and
changes is what the server sees. Every listing takes ``--json`` for scripts.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import threading
import time
from collections.abc import Iterator

import click
from flask.cli import AppGroup

from .errors import InvalidJobState, JobNotFound
from .job import Job
from .schedule import isoformat
from .service import current_service
from .states import FINISHED, JobState
from .store import Store

group = AppGroup("spoolkit", help="Inspect and manage spoolkit jobs.")

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


#: For commands taking a job id: one id in 64 starts with ``-`` (``token_urlsafe``),
#: which click would otherwise take for an option ("No such option") unless typed
#: after ``--``.
ID_SETTINGS = {"ignore_unknown_options": True}


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


@group.command("tasks")
@JSON_OPTION
def tasks_command(as_json: bool) -> None:
    """List the registered task names."""
    registry = current_service().registry
    if not as_json:
        for name in registry.names():
            click.echo(name)
        return
    shown = []
    for name in registry.names():
        task = registry.get(name)
        shown.append({"name": name, "queue": task.queue, "max_attempts": task.policy.max_attempts,
                      "timeout": task.timeout})  # fmt: skip
    _echo_json(shown)


@group.command("periodic")
@JSON_OPTION
def periodic_command(as_json: bool) -> None:
    """List the periodic schedules: expression, tz, next run, last slot fired and its job."""
    listing = current_service().periodic.listing(time.time())
    if as_json:
        _echo_json(listing)
        return
    for shown in listing:
        click.echo(f"{shown['name']}  {shown['expression']}  tz={shown['tz']}  "
                   f"next={shown['next_run'] or '-'}  last={shown['last_slot'] or '-'}  "
                   f"job={shown['last_job'] or '-'}  task={shown['task']}")  # fmt: skip


@group.command("jobs")
@click.option("--state", type=click.Choice([s.value for s in JobState]), default=None)
@click.option("--task", default=None, help="Only jobs of this task.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@JSON_OPTION
def jobs_command(state: str | None, task: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first (--json: as GET /jobs lists them, without results)."""
    jobs = current_service().list_jobs(
        JobState(state) if state else None, task, limit, with_results=False
    )
    if as_json:
        _echo_json([job.to_dict(with_result=False) for job in jobs])
        return
    for job in jobs:
        data = job.to_dict()
        click.echo(f"{job.id}  {job.state.value:<9}  {job.attempts}/{job.max_attempts}  "
                   f"{data['created_at']}  {job.task}")  # fmt: skip


@group.command("show", context_settings=ID_SETTINGS)
@click.argument("job_id")
def show_command(job_id: str) -> None:
    """Print one job as JSON."""
    try:
        job = current_service().get(job_id)
    except JobNotFound as exc:
        raise click.ClickException(str(exc)) from None
    _echo_json(job.to_dict())


@group.command("cancel", context_settings=ID_SETTINGS)
@click.argument("job_id")
def cancel_command(job_id: str) -> None:
    """Cancel a queued or scheduled job."""
    try:
        job = current_service().cancel(job_id)
    except (JobNotFound, InvalidJobState) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{job.id} {job.state.value}")


@group.command("retry", context_settings=ID_SETTINGS)
@click.argument("job_id")
def retry_command(job_id: str) -> None:
    """Queue a failed or cancelled job again, with a fresh attempt budget."""
    service = current_service()
    # This process exits at once: the server's spoolers run the job, not its threads.
    service.runner.hand_off_only()
    try:
        job = service.retry(job_id)
    except (JobNotFound, InvalidJobState) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{job.id} {job.state.value}")


@group.command("abort", context_settings=ID_SETTINGS)
@click.argument("job_id")
def abort_command(job_id: str) -> None:
    """Stop a job: a waiting one is cancelled; a running one is asked to stop, and its
    spooler is killed after SPOOLKIT_ABORT_GRACE if it does not."""
    try:
        job = current_service().abort(job_id)
    except (JobNotFound, InvalidJobState) as exc:
        raise click.ClickException(str(exc)) from None
    if job.state is JobState.CANCELLED:
        click.echo(f"{job.id} cancelled")
    else:
        click.echo(f"{job.id} {job.state.value}: stop requested (ends cancelled)")


# -- purge -------------------------------------------------------------------------

_UNITS = {"w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_NUMBER = r"\d+(?:\.\d+)?"
_PLAIN = re.compile(_NUMBER)
_PARTS = re.compile("".join(f"(?:(?P<{unit}>{_NUMBER}){unit})?" for unit in _UNITS))


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s``, ``2w``, ``1h30m`` or ``600``.

    Units go from the largest to the smallest, each at most once, so a typo such as
    ``30m1h`` is refused rather than read as something else. ``ValueError`` names
    what is accepted (the ``--older-than`` option shows it as a usage error)."""
    cleaned = text.strip()
    if _PLAIN.fullmatch(cleaned):
        seconds = float(cleaned)
    else:
        found = _PARTS.fullmatch(cleaned) if cleaned else None
        if found is None or not any(found.groupdict().values()):
            raise ValueError(
                f"{text!r} is not a duration: use seconds (600) or numbers with units "
                "w, d, h, m, s from the largest down (2w, 30d, 12h, 1h30m, 45s)"
            )
        seconds = sum(float(n) * _UNITS[unit] for unit, n in found.groupdict().items() if n)
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is too long a duration")
    return seconds


def _duration_option(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """``--older-than``: a bad duration is a usage error naming what is accepted."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _purgeable(store: Store, before: float, states: frozenset[JobState]) -> dict[str, int]:
    """Jobs per state a purge would delete now: all in the state, less those that
    finished at or after ``before`` (the store has no count for this range)."""
    total, recent = store.counts(), store.finished_since(before)
    return {s.value: max(0, total[s.value] - recent[s.value]) for s in JobState if s in states}


@group.command("purge")
@click.option("--older-than", "older_than", default="0", metavar="DURATION",
              callback=_duration_option,
              help="Only jobs finished longer ago than this: 30d, 12h, 1h30m, 600 "
                   "(seconds). Default: every finished job.")  # fmt: skip
@click.option("--state", "states", multiple=True,
              type=click.Choice(sorted(s.value for s in FINISHED)),
              help="Only jobs in this final state (repeatable). Default: all three.")  # fmt: skip
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge_command(older_than: float, states: tuple[str, ...], yes: bool) -> None:
    """Delete finished jobs (succeeded, failed, cancelled) and their history.

    The per-task totals /metrics serves are kept."""
    service = current_service()
    chosen = frozenset(JobState(s) for s in states) if states else FINISHED
    before = time.time() - older_than
    if not yes:
        counts = _purgeable(service.store, before, chosen)
        what = ", ".join(f"{count} {state}" for state, count in counts.items())
        if not sum(counts.values()):
            click.echo(f"nothing to purge: no {'/'.join(counts)} job finished before "
                       f"{isoformat(before)}")  # fmt: skip
            return
        click.confirm(f"Delete {sum(counts.values())} jobs ({what}) finished before "
                      f"{isoformat(before)}?", abort=True)  # fmt: skip
    removed = service.purge(before, chosen)
    click.echo(f"deleted {removed} jobs")


# -- figures -------------------------------------------------------------------------


@group.command("queues")
@JSON_OPTION
def queues_command(as_json: bool) -> None:
    """Per queue: ready, scheduled and running jobs, the oldest ready job's age, spoolers.

    Spoolers alive are as the housekeeping mule last recorded them ('?' when uWSGI
    is not running, or its housekeeper has not recorded them recently)."""
    report = current_service().queue_report(time.time())
    if as_json:
        _echo_json(report)
        return
    click.echo(f"{'queue':<16} {'ready':>7} {'scheduled':>9} {'running':>7} "
               f"{'oldest ready':>12} {'spoolers':>8}")  # fmt: skip
    for name, figures in report.items():
        age = figures["oldest_ready_age"]
        alive = figures["spoolers_alive"]
        click.echo(f"{name:<16} {figures['ready']:>7} {figures['scheduled']:>9} "
                   f"{figures['running']:>7} {'-' if age is None else f'{age:.1f}s':>12} "
                   f"{'?' if alive is None else alive:>8}")  # fmt: skip


def _counts(figures: dict[str, int]) -> str:
    """``queued 1  running 2 ...``, in the order jobs go through the states."""
    return "  ".join(f"{s.value} {figures[s.value]}" for s in JobState if s.value in figures)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


@group.command("stats")
@JSON_OPTION
def stats_command(as_json: bool) -> None:
    """Jobs per state and per queue, spoolers alive of configured, the oldest ready job,
    jobs finished in the last 5 and 60 minutes, the housekeeper's last pass.

    Spoolers and the housekeeper are as the server's housekeeping mule last recorded
    them in the store ('?' when it has not recently: uWSGI is not running)."""
    service = current_service()
    now = time.time()
    overview = service.overview(now)
    if overview["housekeeper"] is None:
        # This process is outside uWSGI, so its own runner has no housekeeper; a server
        # on the same store may have one, and records its passes there.
        age = service.housekeeper_age(now)
        overview["housekeeper"] = None if age is None else {"last_run_age": age}
    if as_json:
        _echo_json(overview)
        return
    spoolers, housekeeper = overview["spoolers"], overview["housekeeper"]
    alive, configured = spoolers["alive"], spoolers["configured"]
    click.echo(f"{'jobs':<12} {_counts(overview['states'])}")
    click.echo(f"{'spoolers':<12} {'?' if alive is None else alive} alive of "
               f"{'?' if configured is None else configured} configured")  # fmt: skip
    click.echo(f"{'finished':<12} last 5 min: {_counts(overview['finished']['5m'])}")
    click.echo(f"{'':<12} last 60 min: {_counts(overview['finished']['60m'])}")
    last = None if housekeeper is None else housekeeper["last_run_age"]
    click.echo(f"{'housekeeper':<12} " + ("no pass recorded" if last is None
                                          else f"last pass {last:.1f}s ago"))  # fmt: skip
    click.echo()
    states = [s.value for s in JobState]
    click.echo(f"{'queue':<16} " + " ".join(f"{s:>9}" for s in states)
               + f" {'ready':>7} {'oldest':>8} {'spoolers':>8}")  # fmt: skip
    for name, figures in overview["queues"].items():
        queue_alive = figures["spoolers_alive"]
        click.echo(f"{name:<16} " + " ".join(f"{figures['states'][s]:>9}" for s in states)
                   + f" {figures['ready']:>7} {_seconds(figures['oldest_ready_age']):>8}"
                   f" {'?' if queue_alive is None else queue_alive:>8}")  # fmt: skip


# -- tail ----------------------------------------------------------------------------

#: How often ``tail`` asks the store for changes, seconds.
POLL_INTERVAL = 0.5
#: Changes read per query; more are read in further queries of the same poll.
BATCH = 500


class ChangeFeed:
    """Job changes as the store commits them, each shown once.

    A writer stamps ``updated_at`` before it commits (and may wait for the write
    lock in between), so a change can become visible after one stamped later was
    already shown. Each poll therefore reads again from ``margin`` seconds before
    the newest stamp shown and skips the ``(id, updated_at)`` pairs it has shown:
    a change committed up to ``margin`` seconds after its stamp is shown late rather
    than missed. Changes stamped at or before ``start`` count as already shown.
    """

    def __init__(self, store: Store, start: float, margin: float) -> None:
        self.store = store
        self.margin = margin
        self.newest = start
        self.shown: set[tuple[str, float]] = set()
        for job in self._read(start - margin):
            if job.updated_at > start:
                break
            self.shown.add((job.id, job.updated_at))

    def _read(self, after: float) -> Iterator[Job]:
        while True:
            batch = self.store.changed_since(after, BATCH)
            yield from batch
            if len(batch) < BATCH:
                return
            after = batch[-1].updated_at  # > after: every query moves on
            self._forget_old()

    def _forget_old(self) -> None:
        """Drop the pairs older than the window: no read returns them again."""
        self.shown = {key for key in self.shown if key[1] > self.newest - self.margin}

    def poll(self) -> Iterator[Job]:
        """The changes not shown yet, oldest stamp first."""
        for job in self._read(self.newest - self.margin):
            key = (job.id, job.updated_at)
            if key in self.shown:
                continue
            self.shown.add(key)
            self.newest = max(self.newest, job.updated_at)
            yield job
        self._forget_old()


def change_line(job: Job) -> str:
    """One change as ``tail`` prints it: time, id, state, task, attempts, progress."""
    line = (f"{isoformat(job.updated_at)}  {job.id}  {job.state.value:<9}  {job.task}  "
            f"{job.attempts}/{job.max_attempts}")  # fmt: skip
    if job.progress is not None:
        progress = job.progress.to_dict()
        done = progress["done"] if progress["total"] is None else (
            f"{progress['done']}/{progress['total']}")  # fmt: skip
        line += f"  {done}" + (f" {job.progress.message}" if job.progress.message else "")
    return line


def change_json(job: Job) -> str:
    """One change as ``tail --json`` prints it: the job as the API lists it, and when."""
    return json.dumps({"updated_at": isoformat(job.updated_at),
                       **job.to_dict(with_result=False)})  # fmt: skip


@contextlib.contextmanager
def _sigterm_sets(stop: threading.Event) -> Iterator[None]:
    """While inside, SIGTERM sets ``stop`` instead of killing the process, so ``tail``
    under a supervisor ends as cleanly as on Ctrl-C. Off the main thread (where Python
    refuses signal handlers) SIGTERM keeps its handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@group.command("tail")
@click.option("--since", type=click.FloatRange(min=0), default=0.0, metavar="SECONDS",
              help="First show the changes of the last SECONDS (default: new ones only).")
@JSON_OPTION
def tail_command(since: float, as_json: bool) -> None:
    """Follow job changes as they happen, one line each (--json: one object per line),
    until Ctrl-C or SIGTERM.

    Polls the store twice a second: it shows each job as its row is then, so a job
    that changed twice between polls (queued, then running) shows its last state."""
    service = current_service()
    # A writer waits for the write lock up to the store's timeout between its stamp and
    # its commit. (A patient write, an outcome retried while the store was unavailable,
    # can be later still: tail is for watching, not an audit trail.)
    feed = ChangeFeed(service.store, time.time() - since, service.config.store_timeout + 1)
    render = change_json if as_json else change_line
    stop = threading.Event()
    click.echo("following job changes (Ctrl-C stops)", err=True)
    with contextlib.suppress(KeyboardInterrupt), _sigterm_sets(stop):
        while True:
            for job in feed.poll():
                click.echo(render(job))
            if stop.wait(POLL_INTERVAL):
                return
