"""The job API: a blueprint under ``/jobs``, JSON in and out.

``POST /jobs`` is the generic endpoint for operators and scripts; an app's
own routes call ``task.delay()`` and answer with :func:`accepted`.
"""

from __future__ import annotations

import errno
import hmac
import re
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from flask.blueprints import BlueprintSetupState
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest, HTTPException
from werkzeug.routing import BaseConverter

from . import runtime
from .errors import (
    BatchItemError,
    ConfigurationError,
    EncodeError,
    InvalidJobState,
    InvalidSchedule,
    JobNotFound,
    SpoolWriteError,
    StoreFull,
    StoreUnavailable,
    TaskNotFound,
)
from .job import Job
from .openapi import MAX_LIST_LIMIT, openapi_spec
from .service import JOB_FIELDS, JOB_OPTIONS, current_service
from .states import JobState

blueprint = Blueprint("spoolkit", __name__, url_prefix="/jobs")


class JobIdConverter(BaseConverter):
    """A job id in a URL: one path segment, but not one of the API's own names, so that
    ``/jobs/periodic`` never reads as a job (``OPTIONS`` advertises no ``DELETE`` there)."""

    regex = r"(?!(?:periodic|batch|openapi\.json)$)[^/]+"


@blueprint.record_once
def _add_job_id_converter(state: BlueprintSetupState) -> None:
    """Before the routes below: a rule looks its converter up when it is added."""
    state.app.url_map.converters.setdefault("job_id", JobIdConverter)

#: ASCII digits only: str.isdigit() also takes "²" and other digits int() refuses.
LIMIT_PATTERN = re.compile(r"[0-9]{1,7}")
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"


def error(status: int, message: str, **headers: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    response.headers.update(headers)
    return response


def accepted(job: Job) -> tuple[dict[str, Any], int, dict[str, str]]:
    """``202 Accepted`` with ``Location: /jobs/<id>`` and the job as JSON: return it from a view.

    For a job returned again for its idempotency key: ``Idempotent-Replayed: true``,
    and ``200`` once it is finished, as ``GET`` would answer.
    """
    headers = {"Location": url_for("spoolkit.get_job", job_id=job.id)}
    if job.replayed:
        headers[REPLAYED_HEADER] = "true"
    return job.to_dict(), 200 if job.replayed and job.is_finished else 202, headers


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, refusing a document nested too deeply for Python's parser as
    invalid JSON (``400``, or ``None`` from ``get_json(silent=True)``) instead of
    letting its ``RecursionError`` become a ``500``. The extension installs it on
    apps that use Flask's default provider."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def refuse_truncated_request() -> Response | None:
    """Refuse a request uWSGI passed on with its query string dropped.

    When a request's variables do not fit uWSGI's ``buffer-size``, uWSGI logs
    "unable to add QUERY_STRING" and still calls the app without it, so the
    app would answer a different request (``/jobs?state=failed`` read as
    ``/jobs``). uWSGI's HTTP parser (proto/http.c) and nginx's uwsgi_params
    always set ``QUERY_STRING``, empty when there is no query: its absence
    under uWSGI means it was dropped. The extension registers this app-wide.
    """
    if "QUERY_STRING" not in request.environ and runtime.uwsgi_module() is not None:
        return error(414, "request too long for uWSGI's buffer-size (raise it in uwsgi.ini)")
    return None


@blueprint.before_request
def guard() -> Response | None:
    """Refuse oversized bodies from the headers alone, then check the token."""
    config = current_service().config
    if request.content_length is not None and request.content_length > config.max_request_bytes:
        return error(413, f"request body over {config.max_request_bytes} bytes")
    request.max_content_length = config.max_request_bytes
    if config.api_token and not authorized(config.api_token):
        return error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
    return None


def authorized(token: str) -> bool:
    """Does the request carry ``Authorization: Bearer <token>``? (Constant-time compare.)"""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def json_http_error(exc: HTTPException) -> Response:
    """An HTTP error as ``{"error": ...}``, keeping its headers (``Allow`` on a 405).

    The blueprint uses it; register it app-wide too, so routing errors
    (unknown URL, wrong method) are JSON: ``app.register_error_handler(HTTPException,
    json_http_error)``.
    """
    response = error(exc.code or 500, exc.description or exc.name)
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


blueprint.register_error_handler(HTTPException, json_http_error)


def store_unavailable(exc: StoreUnavailable) -> Response:
    """``503`` (``507`` when its disk is full): the job was not recorded; try again later."""
    if isinstance(exc, StoreFull):
        return error(507, f"job store full: {exc}", **{"Retry-After": "30"})
    return error(503, f"job store unavailable: {exc}", **{"Retry-After": "5"})


def spool_unwritable(exc: SpoolWriteError) -> Response:
    """``507`` when the spool's disk is full, else ``503``: the job was not recorded."""
    cause = exc.__cause__
    full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
    return error(507 if full else 503, str(exc), **{"Retry-After": "30"})


#: Registered app-wide by the extension: the app's own routes that queue jobs
#: answer these errors as the /jobs API does.
ERROR_HANDLERS = ((StoreUnavailable, store_unavailable), (SpoolWriteError, spool_unwritable))


def _job_response(job: Job) -> tuple[dict[str, Any], int, dict[str, str]]:
    if job.is_finished:
        return job.to_dict(), 200, {}
    return job.to_dict(), 202, {"Retry-After": str(current_service().config.retry_after)}


@blueprint.post("")
def create_job() -> Any:
    try:
        data = request.get_json(force=True)
    except BadRequest:
        return error(400, "request body is not valid JSON")
    if not isinstance(data, dict):
        return error(422, "request body must be a JSON object")
    unknown = sorted(set(data) - JOB_FIELDS)
    if unknown:
        return error(422, f"unknown fields: {', '.join(unknown)}")
    name = data.get("task")
    if not isinstance(name, str) or not name:
        return error(422, "'task' must be the name of a registered task")
    args, kwargs = data.get("args", []), data.get("kwargs", {})
    if not isinstance(args, list):
        return error(422, "'args' must be a list")
    if not isinstance(kwargs, dict):
        return error(422, "'kwargs' must be an object")
    options = {key: data.get(key) for key in JOB_OPTIONS}
    try:
        job = current_service().enqueue_by_name(
            name, args, kwargs, key=request.headers.get(IDEMPOTENCY_HEADER), **options
        )
    except TaskNotFound:
        return error(404, f"no task named {name!r}")
    except (EncodeError, InvalidSchedule, ConfigurationError, TypeError, ValueError) as exc:
        return error(422, str(exc))
    return accepted(job)


@blueprint.post("/batch")
def create_jobs() -> Any:
    """``{"jobs": [<what POST /jobs takes>, ...]}``: every job recorded in one
    transaction, or none (``422`` naming the first wrong one's ``index``)."""
    try:
        data = request.get_json(force=True)
    except BadRequest:
        return error(400, "request body is not valid JSON")
    if not isinstance(data, dict) or set(data) != {"jobs"} or not isinstance(data["jobs"], list):
        return error(422, "request body must be an object with one field, 'jobs', a list")
    service = current_service()
    if not data["jobs"]:
        return error(422, "'jobs' is empty")
    if len(data["jobs"]) > service.config.max_batch:
        return error(422, f"at most {service.config.max_batch} jobs per batch "
                          f"(SPOOLKIT_MAX_BATCH), got {len(data['jobs'])}")  # fmt: skip
    try:
        jobs = service.enqueue_specs(data["jobs"])
    except BatchItemError as exc:
        response = jsonify({"error": f"jobs[{exc.index}]: {exc.cause}", "index": exc.index})
        response.status_code = 422
        return response
    listed = [{**job.to_dict(), "location": url_for("spoolkit.get_job", job_id=job.id)}
              for job in jobs]  # fmt: skip
    return {"jobs": listed}, 202


@blueprint.get("")
def list_jobs() -> Any:
    repeated = sorted(
        name for name in ("state", "task", "limit") if len(request.args.getlist(name)) > 1
    )
    if repeated:
        return error(422, f"give each query parameter once: {', '.join(repeated)}")
    state_name = request.args.get("state")
    try:
        state = JobState(state_name) if state_name is not None else None
    except ValueError:
        choices = ", ".join(s.value for s in JobState)
        return error(422, f"state must be one of {choices}")
    limit_text = request.args.get("limit", "50")
    if not LIMIT_PATTERN.fullmatch(limit_text) or not 1 <= int(limit_text) <= MAX_LIST_LIMIT:
        return error(422, f"limit must be an integer from 1 to {MAX_LIST_LIMIT}")
    jobs = current_service().list_jobs(
        state=state, task=request.args.get("task"), limit=int(limit_text), with_results=False
    )
    # Results can be large: the list leaves them out; GET /jobs/<id> has each.
    return {"jobs": [job.to_dict(with_result=False) for job in jobs]}


@blueprint.get("/openapi.json")
def openapi_document() -> Any:
    """This API's OpenAPI 3 description."""
    return openapi_spec()


@blueprint.get("/periodic")
def list_periodic() -> Any:
    """The periodic schedules: task, expression, tz, next run, last slot fired and its job.
    ``JobIdConverter`` keeps ``/<job_id>`` from reading "periodic" as an id."""
    return {"schedules": current_service().periodic.listing(time.time())}


@blueprint.get("/<job_id:job_id>")
def get_job(job_id: str) -> Any:
    try:
        return _job_response(current_service().get(job_id))
    except JobNotFound:
        return error(404, f"no job {job_id!r}")


@blueprint.delete("/<job_id:job_id>")
def cancel_job(job_id: str) -> Any:
    try:
        return current_service().cancel(job_id).to_dict()
    except JobNotFound:
        return error(404, f"no job {job_id!r}")
    except InvalidJobState as exc:
        return error(409, str(exc))


@blueprint.post("/<job_id:job_id>/retry")
def retry_job(job_id: str) -> Any:
    try:
        return accepted(current_service().retry(job_id))
    except JobNotFound:
        return error(404, f"no job {job_id!r}")
    except InvalidJobState as exc:
        return error(409, str(exc))


@blueprint.post("/<job_id:job_id>/abort")
def abort_job(job_id: str) -> Any:
    """Stop a job: ``202`` with ``abort_requested`` while a running job stops, ``200``
    when a waiting one was cancelled, ``409`` for a finished one."""
    try:
        job = current_service().abort(job_id)
    except JobNotFound:
        return error(404, f"no job {job_id!r}")
    except InvalidJobState as exc:
        return error(409, str(exc))
    return _job_response(job)


def health() -> Any:
    """``GET /healthz``: 200 when a job could be accepted and run now (store writable,
    spool directory usable, every spooler alive, housekeeper recent), else 503.

    Counts and process health for anyone; paths only for a caller with the token.
    """
    service = current_service()
    healthy, report = service.health()
    token = service.config.api_token
    if not (token and authorized(token)):
        report.pop("spool_dir", None)
        report.pop("spool_dirs", None)
    return report, 200 if healthy else 503
