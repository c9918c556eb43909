"""Queue names: which spooler directory (and so which spooler processes) runs a job.

A queue is a spooler directory with its own processes, declared in uwsgi.ini
(``set-placeholder = spoolkit-queue-<name>=<directory>`` and a ``spooler``
line for it). Every job belongs to one, ``default`` unless its task or its
call names another, and keeps it through retries, restarts and re-spooling.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from .errors import ConfigurationError

DEFAULT_QUEUE = "default"
#: A queue's name: it appears in uwsgi.ini option names, logs and URLs.
QUEUE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


def validate_queue(queue: object) -> str:
    """``queue`` if it is a well-formed name, else ``ConfigurationError``."""
    if not isinstance(queue, str) or not QUEUE_PATTERN.fullmatch(queue):
        raise ConfigurationError(
            f"queue must be a name of 1 to 40 characters a-z, 0-9, '_' and '-' "
            f"(starting with a letter or digit), got {queue!r}"
        )
    return queue


def check_configured(queue: str, configured: Collection[str] | None) -> str:
    """``queue`` if it is one of ``configured`` (``None``: any name goes), else a
    ``ConfigurationError`` naming the configured ones."""
    if configured is not None and queue not in configured:
        raise ConfigurationError(
            f"queue {queue!r} is not configured; configured queues: "
            f"{', '.join(sorted(configured))} (uwsgi.ini declares them)"
        )
    return queue
