"""Every setting of the kit, in one table.

A setting is read from ``app.config["SPOOLKIT_X"]`` if the app set it
before ``init_app``, else from the environment variable ``SPOOLKIT_X``,
else its default; the effective value is written back into ``app.config``.
uwsgi.ini reads a few more ``SPOOLKIT_*`` variables itself (the bind
address, the spool directory); the README lists both.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from flask import Flask

from .errors import ConfigurationError

PREFIX = "SPOOLKIT_"


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {text!r}")


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _optional(text: str) -> str | None:
    return text or None


def _optional_int(text: str) -> int | None:
    return int(text) if text.strip() else None


def _sync(text: str) -> str:
    value = text.strip().upper()
    if value not in {"FULL", "NORMAL", "OFF"}:
        raise ValueError(f"expected full, normal or off, got {text!r}")
    return value


_PARSERS: dict[str, Callable[[str], Any]] = {
    "database": str,
    "sync": _sync,
    "eager": _bool,
    "local_workers": int,
    "imports": _list,
    "api_token": _optional,
    "max_request_bytes": int,
    "max_result_bytes": int,
    "compat_max_attempts": int,
    "webhook_secret": _optional,
    "webhook_max_attempts": int,
    "webhook_allow_private": _bool,
    "idempotency_ttl": float,
    "timeout_grace": float,
    "abort_grace": float,
    "max_backoff": float,
    "result_ttl": float,
    "housekeeping_interval": float,
    "retry_after": int,
    "store_timeout": float,
    "spool_ahead": float,
    "spooler_nice": _optional_int,
    "dashboard": _bool,
    "metrics_public": _bool,
    "node": str,
    "node_timeout": float,
    "max_batch": int,
}


@dataclass(frozen=True)
class Config:
    """The kit's settings (``SPOOLKIT_<NAME>``); see the README's settings table."""

    database: str
    sync: str = "FULL"
    eager: bool = False
    local_workers: int = 2
    imports: tuple[str, ...] = ()
    api_token: str | None = None
    max_request_bytes: int = 1024 * 1024
    #: A task's result larger than this, encoded, fails the job (``ResultTooLarge``).
    max_result_bytes: int = 1024 * 1024
    #: Attempts a job queued through uwsgidecorators or uwsgi-tasks gets, unless the
    #: task asked for its own (uwsgi-tasks' retry_count).
    compat_max_attempts: int = 3
    #: Key of the webhooks' HMAC signature; without it a callback_url is refused.
    webhook_secret: str | None = None
    webhook_max_attempts: int = 8
    #: Let webhooks reach loopback and private addresses (tests, internal receivers).
    webhook_allow_private: bool = False
    #: Seconds an Idempotency-Key stays bound to its first job.
    idempotency_ttl: float = 86400.0
    #: Seconds a task gets after JobTimeout before its spooler is killed.
    timeout_grace: float = 5.0
    #: Seconds a running job gets after an abort request before its spooler is killed.
    abort_grace: float = 10.0
    max_backoff: float = 3600.0
    result_ttl: float = 7 * 24 * 3600.0
    housekeeping_interval: float = 5.0
    retry_after: int = 1
    store_timeout: float = 10.0
    #: A scheduled job gets its spool file this many seconds before it is due;
    #: until then it waits in the store ("parked"). uWSGI lstat()s every file
    #: on every scan, so a large far-future backlog in the spool directory
    #: would slow every pickup.
    spool_ahead: float = 10.0
    #: The niceness spoolers switch to before their first job. Unset keeps
    #: uWSGI's choice, nice 19: under a saturated CPU the web workers win
    #: and the spoolers nearly stop. Going below 19 needs CAP_SYS_NICE or
    #: RLIMIT_NICE (systemd ``LimitNICE=``); see the README.
    spooler_nice: int | None = None
    #: Serve the dashboard at /dashboard (with a token set, it needs the app's SECRET_KEY).
    dashboard: bool = True
    #: Serve /metrics without the token (a scraper inside a trusted network).
    metrics_public: bool = False
    #: This server's name among those using the store (``/healthz`` lists them); on a
    #: store several hosts share, unique per uWSGI instance.
    node: str = ""
    #: Several hosts on one store: a node silent (no heartbeat) this many seconds is
    #: taken for dead, and another node takes its jobs back.
    node_timeout: float = 30.0
    #: Jobs one batch (``enqueue_many``, ``task.map``, ``POST /jobs/batch``) may hold.
    max_batch: int = 1000

    def __post_init__(self) -> None:
        positive = (
            "local_workers",
            "max_request_bytes",
            "max_result_bytes",
            "compat_max_attempts",
            "webhook_max_attempts",
            "idempotency_ttl",
            "housekeeping_interval",
            "retry_after",
            "store_timeout",
            "spool_ahead",
            "node_timeout",
            "max_batch",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{PREFIX}{name.upper()} must be > 0")
        for name in ("max_backoff", "result_ttl", "timeout_grace", "abort_grace"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{PREFIX}{name.upper()} must be >= 0")
        if not self.node or len(self.node) > 100 or not self.node.isprintable():
            raise ConfigurationError(
                f"{PREFIX}NODE must be 1 to 100 printable characters, got {self.node!r}"
            )
        if self.spooler_nice is not None and not -20 <= self.spooler_nice <= 19:
            raise ConfigurationError(f"{PREFIX}SPOOLER_NICE must be between -20 and 19")
        scheme, found, _ = self.database.partition("://")
        if found and not self.uses_postgres and not scheme.startswith("sqlite"):
            raise ConfigurationError(
                f"{PREFIX}DATABASE={scheme}://... is not supported; give a SQLite file path "
                "or a postgresql:// address"
            )

    @property
    def uses_postgres(self) -> bool:
        """``SPOOLKIT_DATABASE`` is a PostgreSQL address, not a SQLite file."""
        return self.database.startswith(("postgresql://", "postgres://"))


def load_config(app: Flask) -> Config:
    """Resolve every setting for ``app`` (app.config, then environment, then default)."""
    values: dict[str, Any] = {}
    defaults = {"database": os.path.join(app.root_path, "spool", "spoolkit.db"),
                "node": socket.gethostname()}  # fmt: skip
    for field in fields(Config):
        key = PREFIX + field.name.upper()
        if key in app.config:
            value, source = app.config[key], f"app.config[{key!r}]"
        elif key in os.environ:
            value, source = os.environ[key], f"environment variable {key}"
        elif field.name in defaults:
            value, source = defaults[field.name], "default"
        else:
            continue
        if isinstance(value, str):
            try:
                value = _PARSERS[field.name](value)
            except ValueError as exc:
                raise ConfigurationError(f"{source}: {exc}") from None
        if field.name == "imports":
            value = tuple(value)
        elif field.name == "database":
            value = value.removeprefix("sqlite:///")
        values[field.name] = value
    config = Config(**values)
    for field in fields(Config):
        app.config.setdefault(PREFIX + field.name.upper(), getattr(config, field.name))
    return config
