"""The example Flask app: a slow call moved out of the request, done right.

``POST /render/<script_id>`` with ``{"text_list": [...]}`` queues
``render_audio`` and answers ``202 Accepted`` with ``Location: /jobs/<id>``;
the client polls that URL until it answers ``200`` with the result. The
``/jobs`` API and ``/healthz`` come from ``SpoolKit``.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from flask import Flask, request
from werkzeug.exceptions import HTTPException

import tasks
from spoolkit import (
    IdempotencyConflict,
    InvalidSchedule,
    SpoolKit,
    accepted,
    json_http_error,
)

SCRIPT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TEXTS = 1000

logging.basicConfig(
    level=os.environ.get("SPOOLKIT_LOG_LEVEL", "INFO").upper(),
    format="%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s",
)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    # FLASK_SECRET_KEY and other FLASK_* settings from the environment: the dashboard
    # signs its sign-in cookie with SECRET_KEY when SPOOLKIT_API_TOKEN is set.
    app.config.from_prefixed_env()
    app.config.from_mapping(
        RENDER_OUTPUT_DIR=os.environ.get(
            "RENDER_OUTPUT_DIR", os.path.join(app.root_path, "output")
        ),
        RENDER_API_DELAY=float(os.environ.get("RENDER_API_DELAY", "0.5")),
    )
    app.config.update(config or {})
    SpoolKit(app)

    # Every HTTP error as JSON, the /jobs API's and the app's own routes' alike.
    app.register_error_handler(HTTPException, json_http_error)

    @app.post("/render/<script_id>")
    def render(script_id: str) -> Any:
        if not SCRIPT_ID.fullmatch(script_id):
            return {"error": "script id must be 1-64 letters, digits, '_' or '-'"}, 422
        data = request.get_json(silent=True)
        texts = data.get("text_list") if isinstance(data, dict) else None
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return {
                "error": 'body must be JSON {"text_list": ["...", ...]} with 1 or more strings'
            }, 422
        if len(texts) > MAX_TEXTS:
            return {"error": f"at most {MAX_TEXTS} texts per script"}, 422
        # A client that retries after a timeout sends the same Idempotency-Key and
        # gets the job it already has, not a second render.
        try:
            job = tasks.render_audio.apply_async(
                (script_id, texts), key=request.headers.get("Idempotency-Key")
            )
        except (InvalidSchedule, IdempotencyConflict) as exc:  # a bad or reused key
            return {"error": str(exc)}, 422
        return accepted(job)

    return app


app = create_app()
