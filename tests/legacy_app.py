"""A uWSGI app written for uwsgidecorators and uwsgi-tasks, with the kit dropped in.

``LEGACY_IMPORT_ORDER=before`` (default) imports the task module before
``SpoolKit(app)``; ``after`` imports it after. Served instead of app.py by
the compatibility tests (``--module tests.legacy_app:app``).
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any

from flask import Flask, request

from spoolkit import SpoolKit, json_http_error
from spoolkit.compat import job_id_of

AFTER = os.environ.get("LEGACY_IMPORT_ORDER", "before") == "after"
if not AFTER:
    legacy = importlib.import_module("tests.legacy_tasks")

app = Flask(__name__)
SpoolKit(app)
app.register_error_handler(Exception, lambda exc: ({"error": repr(exc)}, 500))
app.register_error_handler(404, json_http_error)

if AFTER:
    legacy = importlib.import_module("tests.legacy_tasks")


def prepare_spooler_args(**kwargs: Any) -> dict[bytes, bytes]:
    """The blog seed's helper: every key and value as bytes."""
    return {name.encode("utf-8"): str(value).encode("utf-8") for name, value in kwargs.items()}


@app.post("/legacy/<style>")
def spool_it(style: str) -> Any:
    data = request.get_json()
    tag = data["tag"]
    calls = {
        "call": lambda: legacy.spool_task({"tag": tag}),
        "spool-dict": lambda: legacy.spool_task.spool({"tag": tag}),
        "spool-kwargs": lambda: legacy.spool_task.spool(tag=tag),
        "function-spool": lambda: legacy.spool_task.f.spool({"tag": tag}),
        "prepare": lambda: legacy.spool_task.spool(prepare_spooler_args(tag=tag)),
        "prepare-at": lambda: legacy.spool_task.spool(
            prepare_spooler_args(tag=tag, at=int(time.time()) + 3)
        ),
        "priority": lambda: legacy.spool_task.spool({"tag": tag, "priority": "5"}),
        "body": lambda: legacy.spool_task.spool({"tag": tag}, body=b"b" * data["size"]),
        "spooler": lambda: legacy.spool_task.spool({"tag": tag, "spooler": data["spooler"]}),
        "pass-arguments": lambda: legacy.with_arguments(tag, 7, big="x" * data.get("size", 0)),
        "pass-arguments-spool": lambda: legacy.with_arguments.spool(tag, 8),
        "raw": lambda: legacy.raw_codes(
            {"tag": tag, "retries": str(data.get("retries", 0))}
            | ({"ignore": "1"} if data.get("ignore") else {})
        ),
        "forever": lambda: legacy.forever({"tag": tag}),
        "kills": lambda: legacy.kills_its_spooler({"tag": tag}),
        "raises": lambda: legacy.raises({"tag": tag}),
        "tasks-spooler": lambda: legacy.tasks_spooler(tag, 5),
        "tasks-auto": lambda: legacy.tasks_auto(tag),
        "tasks-mule": lambda: legacy.tasks_mule(tag),
        "tasks-retry": lambda: legacy.tasks_retry(tag),
        "tasks-later": lambda: legacy.tasks_later(tag),
        "tasks-priority": lambda: legacy.tasks_priority(tag),
        "tasks-big": lambda: legacy.tasks_big(tag, "y" * data["size"]),
        "tasks-raises": lambda: legacy.tasks_raises(tag),
    }
    returned = calls[style]()
    answer: dict[str, Any] = {"returned": repr(returned)}
    if isinstance(returned, bytes):
        answer["job"] = job_id_of(returned)
    return answer
