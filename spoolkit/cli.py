"""``flask spoolkit ...``: look at jobs and tasks from a shell."""

from __future__ import annotations

import json
import time

import click
from flask.cli import AppGroup

from .errors import InvalidJobState, JobNotFound
from .service import current_service
from .states import JobState

group = AppGroup("spoolkit", help="Inspect and manage spoolkit jobs.")


@group.command("tasks")
def tasks_command() -> None:
    """List the registered task names."""
    for name in current_service().registry.names():
        click.echo(name)


@group.command("periodic")
def periodic_command() -> None:
    """List the periodic schedules: expression, tz, next run, last slot fired and its job."""
    for shown in current_service().periodic.listing(time.time()):
        click.echo(f"{shown['name']}  {shown['expression']}  tz={shown['tz']}  "
                   f"next={shown['next_run'] or '-'}  last={shown['last_slot'] or '-'}  "
                   f"job={shown['last_job'] or '-'}  task={shown['task']}")  # fmt: skip


@group.command("jobs")
@click.option("--state", type=click.Choice([s.value for s in JobState]), default=None)
@click.option("--task", default=None, help="Only jobs of this task.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
def jobs_command(state: str | None, task: str | None, limit: int) -> None:
    """List jobs, newest first."""
    jobs = current_service().list_jobs(
        JobState(state) if state else None, task, limit, with_results=False
    )
    for job in jobs:
        data = job.to_dict()
        click.echo(f"{job.id}  {job.state.value:<9}  {job.attempts}/{job.max_attempts}  "
                   f"{data['created_at']}  {job.task}")  # fmt: skip


@group.command("show")
@click.argument("job_id")
def show_command(job_id: str) -> None:
    """Print one job as JSON."""
    try:
        job = current_service().get(job_id)
    except JobNotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(job.to_dict(), indent=2))


@group.command("cancel")
@click.argument("job_id")
def cancel_command(job_id: str) -> None:
    """Cancel a queued or scheduled job."""
    try:
        job = current_service().cancel(job_id)
    except (JobNotFound, InvalidJobState) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{job.id} {job.state.value}")


@group.command("queues")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def queues_command(as_json: bool) -> None:
    """Per queue: ready, scheduled and running jobs, the oldest ready job's age, spoolers.

    Spoolers alive are as the housekeeping mule last recorded them ('?' when uWSGI
    is not running, or its housekeeper has not recorded them recently)."""
    report = current_service().queue_report(time.time())
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{'queue':<16} {'ready':>7} {'scheduled':>9} {'running':>7} "
               f"{'oldest ready':>12} {'spoolers':>8}")  # fmt: skip
    for name, figures in report.items():
        age = figures["oldest_ready_age"]
        alive = figures["spoolers_alive"]
        click.echo(f"{name:<16} {figures['ready']:>7} {figures['scheduled']:>9} "
                   f"{figures['running']:>7} {'-' if age is None else f'{age:.1f}s':>12} "
                   f"{'?' if alive is None else alive:>8}")  # fmt: skip
