"""``SpoolKit``: the Flask extension that wires the kit into an app."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from . import api, cli, dashboard, metrics, runtime, webhook
from .config import Config, load_config
from .eager import EagerRunner
from .errors import ConfigurationError
from .job import Job
from .local import LocalRunner
from .postgres import PostgresStore
from .registry import TaskRegistry, default_registry
from .retry import RetryPolicy
from .runner import Runner
from .service import JobService, current_service
from .spooler import SpoolerRunner
from .sqlite import SQLiteStore
from .states import JobState
from .store import SharedStore, Store
from .task import EXTENSION_KEY, Task
from .webnode import WebNodeRunner

log = logging.getLogger("spoolkit")

#: Every app's service set up in this process, in order: the housekeeping mule
#: (forked from the uWSGI master after the apps were loaded) looks after each.
services: list[JobService] = []


def choose_runner(
    config: Config, store: Store
) -> type[SpoolerRunner | WebNodeRunner | LocalRunner | EagerRunner]:
    """Eager when asked for; under uWSGI its spoolers, or, without any on a store
    several hosts share, a web node's; else threads of this process."""
    if config.eager:
        return EagerRunner
    if runtime.uwsgi_module() is not None:
        if isinstance(store, SharedStore) and not runtime.declares_spooler():
            return WebNodeRunner
        return SpoolerRunner
    return LocalRunner


class SpoolKit:
    """Background jobs for a Flask app, run by uWSGI spoolers.

    ``SpoolKit(app)`` or ``kit = SpoolKit(); kit.init_app(app)``. Settings
    come from ``SPOOLKIT_*`` keys (app.config, then environment).
    """

    def __init__(self, app: Flask | None = None, *, registry: TaskRegistry | None = None) -> None:
        self.registry = default_registry if registry is None else registry
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("SpoolKit is already set up on this app; call init_app once per app")
        config = load_config(app)
        for module in config.imports:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigurationError(
                    f"SPOOLKIT_IMPORTS: cannot import {module!r}: {exc}"
                ) from exc
        # Where a housekeeping mule checkpoints the WAL every half second, the
        # high threshold only guards a set-up without the mule.
        housekept = not config.eager and runtime.uwsgi_module() is not None
        store: Store
        if config.uses_postgres:
            store = PostgresStore(config.database, timeout=config.store_timeout)
        else:
            store = SQLiteStore(config.database, synchronous=config.sync,
                                timeout=config.store_timeout,
                                autocheckpoint=10_000 if housekept else 1000)  # fmt: skip
        store.setup()
        runner_class = choose_runner(config, store)
        # The webhook delivery task, with the attempts the settings give it.
        self.registry.register(Task(webhook.deliver, name=webhook.WEBHOOK_TASK, policy=RetryPolicy(
            config.webhook_max_attempts, webhook.BACKOFF)))  # fmt: skip
        runner: Runner = runner_class(app, config, store, self.registry)
        service = JobService(app, config, self.registry, store, runner)
        app.extensions[EXTENSION_KEY] = service
        services.append(service)
        # The app's own routes get the limits /jobs has: a body size (413) and
        # JSON nesting (400), unless the app chose its own.
        if app.config.get("MAX_CONTENT_LENGTH") is None:
            app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
        if type(app.json) is DefaultJSONProvider:
            app.json = api.JSONProvider(app)
        app.before_request(api.refuse_truncated_request)
        app.register_blueprint(api.blueprint)
        for error, handler in api.ERROR_HANDLERS:
            app.register_error_handler(error, handler)
        app.add_url_rule("/healthz", "spoolkit_health", api.health)
        app.add_url_rule("/metrics", "spoolkit_metrics", metrics.serve)
        if config.dashboard:
            dashboard.check_setup(app.secret_key, config.api_token)
            app.register_blueprint(dashboard.blueprint)
        app.cli.add_command(cli.group)
        log.info("%s mode, store %s, tasks: %s", runner.name, store.path,
                 ", ".join(self.registry.names()) or "none")  # fmt: skip

    @staticmethod
    def enqueue_many(jobs: Sequence[Mapping[str, Any]]) -> list[Job]:
        """Queue several jobs in one transaction, all or nothing. Each is a mapping as
        ``POST /jobs`` takes it: ``{"task": resize (or "tasks.resize"), "args": [...],
        "kwargs": {...}, "countdown": 5, ...}``. A wrong one raises
        :class:`~spoolkit.BatchItemError` naming its index; nothing is recorded then."""
        return current_service().enqueue_specs(jobs)

    @staticmethod
    def get_job(job_id: str) -> Job:
        """The job's current state; :class:`~spoolkit.errors.JobNotFound` if unknown."""
        return current_service().get(job_id)

    @staticmethod
    def list_jobs(
        state: JobState | None = None, task: str | None = None, limit: int = 50
    ) -> list[Job]:
        return current_service().list_jobs(state=state, task=task, limit=limit)

    @staticmethod
    def cancel(job_id: str) -> Job:
        return current_service().cancel(job_id)

    @staticmethod
    def retry(job_id: str) -> Job:
        return current_service().retry(job_id)

    @staticmethod
    def abort(job_id: str) -> Job:
        """Stop a job: cancel it if it waits, stop it if it runs (see ``JobService.abort``)."""
        return current_service().abort(job_id)
