"""``flask spoolkit ...``: look at jobs and tasks from a shell."""

from __future__ import annotations

import json

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
