"""The OpenAPI 3 description of the job API, served at ``GET /jobs/openapi.json``.

Written by hand next to api.py and kept in sync by a test that compares it
with the app's routes; schemathesis tests the live service against it.
"""

from __future__ import annotations

from typing import Any

from .job import ATTEMPT_OUTCOMES
from .queues import QUEUE_PATTERN
from .retry import MAX_ATTEMPTS_LIMIT
from .schedule import MAX_PRIORITY, MIN_PRIORITY
from .states import JobState

MAX_LIST_LIMIT = 1000


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": _json({"$ref": "#/components/schemas/Error"}),
    }
    if headers:
        answer["headers"] = headers
    return answer


_LOCATION = {"description": "/jobs/<id>", "required": True, "schema": {"type": "string"}}
_RETRY_AFTER = {"description": "seconds", "required": True, "schema": {"type": "string"}}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_UNAUTHORIZED = _error(
    "SPOOLKIT_API_TOKEN is set and the bearer token is missing or wrong",
    **{"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
)
_UNAVAILABLE = _error("the job store did not answer", **{"Retry-After": _RETRY_AFTER})
_SPOOL_FULL = _error("the spool directory's disk is full", **{"Retry-After": _RETRY_AFTER})
_SPOOL_ERROR = _error("the spool file could not be written", **{"Retry-After": _RETRY_AFTER})

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Job": {
        "type": "object",
        "required": [
            "id",
            "task",
            "origin",
            "queue",
            "state",
            "attempts",
            "max_attempts",
            "priority",
            "created_at",
            "scheduled_for",
            "started_at",
            "finished_at",
            "progress",
            "error",
        ],
        "properties": {
            "node": _nullable(
                {"type": "string", "description": "the node that claimed it (PostgreSQL)"}
            ),
            "id": {"type": "string"},
            "task": {"type": "string"},
            "origin": {
                "type": "string",
                "enum": ["spoolkit", "uwsgidecorators", "uwsgi-tasks"],
                "description": "who queued it: a @spoolkit.spool task, or a spool call of "
                "uwsgidecorators or uwsgi-tasks that the kit took over",
            },
            "queue": {"type": "string", "description": "the queue (spooler directory) it runs in"},
            "state": {"type": "string", "enum": [state.value for state in JobState]},
            "attempts": {"type": "integer", "minimum": 0},
            "max_attempts": {"type": "integer", "minimum": 1},
            "priority": _nullable({"type": "integer"}),
            "created_at": {"type": "string", "format": "date-time"},
            "scheduled_for": _nullable({"type": "string", "format": "date-time"}),
            "started_at": _nullable({"type": "string", "format": "date-time"}),
            "finished_at": _nullable({"type": "string", "format": "date-time"}),
            "progress": _nullable(
                {
                    "type": "object",
                    "required": ["done", "total", "message"],
                    "properties": {
                        "done": {"type": "number"},
                        "total": _nullable({"type": "number"}),
                        "message": _nullable({"type": "string"}),
                    },
                }
            ),
            "result": {
                "nullable": True,
                "description": "the task's return value, any JSON (left out of lists)",
            },
            "error": _nullable(
                {
                    "type": "object",
                    "required": ["type", "message", "traceback"],
                    "properties": {
                        "type": {"type": "string"},
                        "message": {"type": "string"},
                        "traceback": _nullable({"type": "string"}),
                    },
                }
            ),
            "parent_id": _nullable({"type": "string", "description": "the job that queued it"}),
            "callbacks": {
                "type": "array",
                "items": {"type": "string"},
                "description": "ids of the jobs its outcome queued (callbacks, webhook deliveries)",
            },
            "on_success": _nullable({"type": "string"}),
            "on_failure": _nullable({"type": "string"}),
            "callback_url": _nullable({"type": "string"}),
            "timeout": _nullable({"type": "number"}),
            "abort_requested": {"type": "boolean"},
            "periodic_slot": _nullable(
                {
                    "type": "string",
                    "format": "date-time",
                    "description": "the slot a periodic schedule fired this job for",
                }
            ),
            "history": {
                "type": "array",
                "description": "one entry per attempt, oldest first, the last 50 (not in lists)",
                "items": {
                    "type": "object",
                    "required": [
                        "attempt",
                        "started_at",
                        "finished_at",
                        "outcome",
                        "error",
                        "runner_pid",
                    ],
                    "properties": {
                        "attempt": {"type": "integer"},
                        "started_at": _nullable({"type": "string", "format": "date-time"}),
                        "finished_at": _nullable({"type": "string", "format": "date-time"}),
                        "outcome": {"type": "string", "enum": list(ATTEMPT_OUTCOMES)},
                        "error": _nullable({"type": "object"}),
                        "runner_pid": _nullable({"type": "integer"}),
                    },
                },
            },
        },
    },
    "Schedule": {
        "type": "object",
        "required": [
            "name",
            "task",
            "expression",
            "tz",
            "misfire_grace",
            "next_run",
            "last_slot",
            "last_job",
        ],
        "properties": {
            "name": {"type": "string"},
            "task": {"type": "string"},
            "expression": {
                "type": "string",
                "description": 'a cron expression, or "every N s"',
            },
            "tz": {"type": "string", "description": "the IANA time zone cron is read in"},
            "misfire_grace": {"type": "number"},
            "next_run": _nullable({"type": "string", "format": "date-time"}),
            "last_slot": _nullable(
                {"type": "string", "format": "date-time", "description": "the last slot fired"}
            ),
            "last_job": _nullable({"type": "string", "description": "the job it fired"}),
        },
    },
    "NewJob": {
        "type": "object",
        "required": ["task"],
        "additionalProperties": False,
        "properties": {
            "task": {"type": "string", "minLength": 1, "description": "a registered task name"},
            "args": {"type": "array", "items": {}},
            "kwargs": {"type": "object"},
            "at": {
                "oneOf": [{"type": "number"}, {"type": "string"}],
                "description": "unix seconds or ISO 8601 (no zone: UTC); not with countdown",
            },
            "countdown": {"type": "number", "minimum": 0},
            "priority": {"type": "integer", "minimum": MIN_PRIORITY, "maximum": MAX_PRIORITY},
            "max_attempts": {"type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS_LIMIT},
            "on_success": {"type": "string", "description": "a registered task: gets the job"},
            "on_failure": {"type": "string", "description": "a registered task: gets the job"},
            "callback_url": {
                "type": "string",
                "description": "http(s) URL the finished job is POSTed to, signed "
                "(needs SPOOLKIT_WEBHOOK_SECRET)",
            },
            "timeout": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
            "queue": {
                "type": "string",
                "pattern": f"^{QUEUE_PATTERN.pattern}$",
                "description": "a queue uwsgi.ini declares (422 otherwise); default: the "
                "task's own, else 'default'",
            },
        },
    },
}


def _accepted(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"Location": _LOCATION},
        "content": _json({"$ref": "#/components/schemas/Job"}),
    }


def _job(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json({"$ref": "#/components/schemas/Job"})}


def openapi_spec() -> dict[str, Any]:
    """The whole document (a fresh dict each call)."""
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "spoolkit job API",
            "version": "1",
            "description": "Background jobs on uWSGI spoolers: queue, poll, cancel, retry.",
        },
        "paths": {
            "/jobs": {
                "post": {
                    "operationId": "createJob",
                    "security": secured,
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                            "description": "the same key within SPOOLKIT_IDEMPOTENCY_TTL gets "
                            "the same job (Idempotent-Replayed: true)",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": _json({"$ref": "#/components/schemas/NewJob"}),
                    },
                    "responses": {
                        "200": _accepted(
                            "the job already recorded under this Idempotency-Key, finished "
                            "(Idempotent-Replayed: true)"
                        ),
                        "202": _accepted("queued (or scheduled); poll Location"),
                        "400": _error("the body is not valid JSON"),
                        "401": _UNAUTHORIZED,
                        "404": _error("no task by that name"),
                        "413": _error("the body is over SPOOLKIT_MAX_REQUEST_BYTES"),
                        "422": _error(
                            "a field has a wrong type or value, or the arguments do not fit"
                        ),
                        "503": _SPOOL_ERROR,
                        "507": _SPOOL_FULL,
                    },
                },
                "get": {
                    "operationId": "listJobs",
                    "security": secured,
                    "parameters": [
                        {
                            "name": "state",
                            "in": "query",
                            "schema": {"type": "string", "enum": [s.value for s in JobState]},
                        },
                        {"name": "task", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "newest first",
                            "content": _json(
                                {
                                    "type": "object",
                                    "required": ["jobs"],
                                    "properties": {
                                        "jobs": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Job"},
                                        }
                                    },
                                }
                            ),
                        },
                        "401": _UNAUTHORIZED,
                        "414": _error("the query string did not fit uWSGI's buffer-size"),
                        "422": _error("a bad state or limit, or a parameter given twice"),
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/jobs/batch": {
                "post": {
                    "operationId": "createJobs",
                    "security": secured,
                    "description": "Every job recorded in one transaction, or none. At most "
                    "SPOOLKIT_MAX_BATCH (1000) jobs; no Idempotency-Key.",
                    "requestBody": {
                        "required": True,
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["jobs"],
                                "additionalProperties": False,
                                "properties": {
                                    "jobs": {
                                        "type": "array",
                                        "minItems": 1,
                                        "items": {"$ref": "#/components/schemas/NewJob"},
                                    }
                                },
                            }
                        ),
                    },
                    "responses": {
                        "202": {
                            "description": "all queued (or scheduled); poll each job's location",
                            "content": _json(
                                {
                                    "type": "object",
                                    "required": ["jobs"],
                                    "properties": {
                                        "jobs": {
                                            "type": "array",
                                            "items": {
                                                "allOf": [
                                                    {"$ref": "#/components/schemas/Job"},
                                                    {
                                                        "type": "object",
                                                        "required": ["location"],
                                                        "properties": {
                                                            "location": {"type": "string"}
                                                        },
                                                    },
                                                ]
                                            },
                                        }
                                    },
                                }
                            ),
                        },
                        "400": _error("the body is not valid JSON"),
                        "401": _UNAUTHORIZED,
                        "413": _error("the body is over SPOOLKIT_MAX_REQUEST_BYTES"),
                        "422": _error(
                            "the body is wrong, or one job is (its position is in 'index'): "
                            "nothing was recorded"
                        ),
                        "503": _SPOOL_ERROR,
                        "507": _SPOOL_FULL,
                    },
                },
            },
            "/jobs/{job_id}": {
                "parameters": [_JOB_ID],
                "get": {
                    "operationId": "getJob",
                    "security": secured,
                    "responses": {
                        "200": _job("finished: succeeded, failed or cancelled"),
                        "202": {
                            **_job("not finished yet: queued, scheduled or running"),
                            "headers": {"Retry-After": _RETRY_AFTER},
                        },
                        "401": _UNAUTHORIZED,
                        "404": _error("no such job"),
                        "503": _UNAVAILABLE,
                    },
                },
                "delete": {
                    "operationId": "cancelJob",
                    "security": secured,
                    "responses": {
                        "200": _job("cancelled; it will not run"),
                        "401": _UNAUTHORIZED,
                        "404": _error("no such job"),
                        "409": _error("running or finished: cannot be cancelled"),
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/jobs/{job_id}/retry": {
                "parameters": [_JOB_ID],
                "post": {
                    "operationId": "retryJob",
                    "security": secured,
                    "responses": {
                        "202": _accepted("queued again with a fresh attempt budget"),
                        "401": _UNAUTHORIZED,
                        "404": _error("no such job"),
                        "409": _error("not failed or cancelled"),
                        "503": _SPOOL_ERROR,
                        "507": _SPOOL_FULL,
                    },
                },
            },
            "/jobs/{job_id}/abort": {
                "parameters": [_JOB_ID],
                "post": {
                    "operationId": "abortJob",
                    "security": secured,
                    "responses": {
                        "200": _job("it was waiting: cancelled"),
                        "202": _job(
                            "it runs: asked to stop (abort_requested), killed after "
                            "SPOOLKIT_ABORT_GRACE"
                        ),
                        "401": _UNAUTHORIZED,
                        "404": _error("no such job"),
                        "409": _error("already finished"),
                        "503": _SPOOL_ERROR,
                    },
                },
            },
            "/jobs/periodic": {
                "get": {
                    "operationId": "listPeriodic",
                    "security": secured,
                    "responses": {
                        "200": {
                            "description": "the periodic schedules, by name",
                            "content": _json(
                                {
                                    "type": "object",
                                    "required": ["schedules"],
                                    "properties": {
                                        "schedules": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Schedule"},
                                        }
                                    },
                                }
                            ),
                        },
                        "401": _UNAUTHORIZED,
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/jobs/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "security": secured,
                    "responses": {
                        "200": {
                            "description": "this document",
                            "content": _json({"type": "object"}),
                        },
                        "401": _UNAUTHORIZED,
                    },
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "store answers, every spooler alive",
                            "content": _json({"type": "object"}),
                        },
                        "503": {
                            "description": "something is down",
                            "content": _json({"type": "object"}),
                        },
                    },
                },
            },
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
