"""``SpoolKit``: the Flask extension that wires the kit into an app."""

from __future__ import annotations

import importlib
import logging
import time

from flask import Flask, current_app

from . import api, cli, runtime
from .backends import Backend, EagerBackend, LocalBackend, SpoolerBackend
from .config import Config, load_config
from .errors import ConfigurationError
from .job import Job
from .registry import TaskRegistry, default_registry
from .service import JobService, set_process_service
from .spoolfile import SpoolDirectory
from .states import JobState
from .store import SQLiteStore

log = logging.getLogger("spoolkit")

EXTENSION_KEY = "spoolkit"
_TRUE = {"1", "true", "yes", "on"}


def _choose_backend(config: Config) -> Backend:
    if config.eager:
        log.warning("SPOOLKIT_EAGER is on: jobs run inside delay(), at once (tests only)")
        return EagerBackend()
    if runtime.uwsgi_module() is not None:
        path = runtime.spooler_directory()
        waker = runtime.SpoolerWaker(path)
        directory = SpoolDirectory(path, wake=waker)
        directory.prepare()
        ordered = (runtime.uwsgi_option("spooler-ordered") or "").lower() in _TRUE
        backend = SpoolerBackend(directory, ordered=ordered, waker=waker)
        if runtime.in_master_before_fork() and runtime.uwsgi_option("spooler"):
            # After a crash of the machine, files can be torn; uWSGI handles
            # those badly (see SpoolDirectory.is_torn), so set them aside
            # before any spooler scans. Their jobs are spooled again from the
            # store by the housekeeper.
            backend.spooled_files(time.time(), check_all=True)
        return backend
    log.warning(
        "not running under uWSGI: jobs run in %d threads of this process "
        "(local mode; SPOOLKIT_LOCAL_WORKERS). Run 'uwsgi --ini uwsgi.ini' for spoolers.",
        config.local_workers,
    )
    return LocalBackend(config.local_workers)


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
        backend = _choose_backend(config)
        # Under uWSGI the housekeeping mule checkpoints the WAL every half second;
        # the high threshold only guards a set-up without the mule.
        autocheckpoint = 10_000 if backend.name == "spooler" else 1000
        store = SQLiteStore(config.database, synchronous=config.sync, timeout=config.store_timeout,
                            autocheckpoint=autocheckpoint)  # fmt: skip
        store.setup()
        service = JobService(app, config, self.registry, store, backend)
        backend.attach(service)
        app.extensions[EXTENSION_KEY] = service
        set_process_service(service)
        app.before_request(api.refuse_truncated_request)
        app.register_blueprint(api.blueprint)
        app.add_url_rule("/healthz", "spoolkit_health", api.health)
        app.cli.add_command(cli.group)
        if backend.name == "spooler":
            runtime.install_dispatcher()
        log.info("%s mode, store %s, tasks: %s", backend.name, store.path,
                 ", ".join(self.registry.names()) or "none")  # fmt: skip

    @staticmethod
    def _service() -> JobService:
        service = current_app.extensions.get(EXTENSION_KEY)
        if not isinstance(service, JobService):
            raise RuntimeError(
                "SpoolKit is not set up on this app. Did you forget to call init_app?"
            )
        return service

    def get_job(self, job_id: str) -> Job:
        """The job's current state; :class:`~spoolkit.errors.JobNotFound` if unknown."""
        return self._service().get(job_id)

    def list_jobs(
        self, state: JobState | None = None, task: str | None = None, limit: int = 50
    ) -> list[Job]:
        return self._service().list_jobs(state=state, task=task, limit=limit)

    def cancel(self, job_id: str) -> Job:
        return self._service().cancel(job_id)

    def retry(self, job_id: str) -> Job:
        return self._service().retry(job_id)
