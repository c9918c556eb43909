"""The dashboard at ``/dashboard``: every job's state, progress, attempts and error,
and the actions an operator takes on them, as server-rendered HTML.

Readable without JavaScript; with it, ``static/dashboard.js`` (plain, no
build step, shipped in the package) refetches the page every second or two
and swaps the parts marked ``data-live``, so a running job's progress bar
moves without a reload.

Access follows the API: with ``SPOOLKIT_API_TOKEN`` set, a sign-in page asks
for the token once and the dashboard keeps a session cookie signed with the
app's ``SECRET_KEY`` (``HttpOnly``, ``SameSite=Strict``, scoped to
``/dashboard``); without a token it is open, and says so. Every action is a
``POST`` carrying the session's anti-forgery token. Job data (arguments,
results, errors) is user data: Jinja escapes it, and the Content-Security-Policy
forbids inline scripts in case anything ever slips through.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from . import api
from .encoding import decode_arguments
from .errors import (
    ConfigurationError,
    InvalidJobState,
    JobNotFound,
    SpoolWriteError,
    StoreUnavailable,
)
from .job import Job
from .schedule import isoformat
from .service import JobService, current_service
from .states import JobState

blueprint = Blueprint(
    "spoolkit_dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder="templates",
    static_folder="static",
)

COOKIE = "spoolkit_dashboard"
#: A sign-in lasts this long (seconds); the cookie is re-signed on every visit.
SESSION_SECONDS = 12 * 3600
#: Jobs per page of the list.
PAGE_SIZE = 50
#: A result larger than this (as JSON) is linked to, not shown inline.
INLINE_RESULT_BYTES = 64 * 1024
#: How often the page refreshes its live parts, milliseconds.
REFRESH_MS = 1000
#: Without a token the cookie only carries the anti-forgery token and notices:
#: with no app secret key it is signed with this public one (nothing to protect
#: beyond what the open dashboard gives anyone).
_OPEN_KEY = "spoolkit-open-dashboard"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: Actions on one job: the service method, and what the notice says it did.
_ACTIONS = {"retry": "queued again", "cancel": "cancelled", "stop": "asked to stop"}


def check_setup(app_secret: object, token: str | None) -> None:
    """Refuse a dashboard that could not keep its sign-in: a token and no secret key."""
    if token and not app_secret:
        raise ConfigurationError(
            "SPOOLKIT_API_TOKEN is set but the app has no SECRET_KEY: the dashboard signs "
            "its sign-in cookie with it. Set SECRET_KEY (FLASK_SECRET_KEY in the "
            "environment of app.py) or turn the dashboard off with SPOOLKIT_DASHBOARD=0"
        )


# -- the session cookie ---------------------------------------------------------------------


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key or _OPEN_KEY, salt=COOKIE)


def _session() -> dict[str, Any]:
    """This request's dashboard session: ``csrf`` always, ``auth`` once signed in,
    ``notice`` after an action. Loaded once, saved after the request."""
    if "spoolkit_session" in g:
        return g.spoolkit_session  # type: ignore[no-any-return]
    data: Any = {}
    raw = request.cookies.get(COOKIE)
    if raw:
        try:
            data = _serializer().loads(raw, max_age=SESSION_SECONDS)
        except BadSignature:
            data = {}
    if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
        data = {"csrf": secrets.token_urlsafe(32)}
    session: dict[str, Any] = data
    g.spoolkit_session = session
    return session


def _token_mark(token: str) -> str:
    """What the cookie holds once signed in: not the token, a key-bound digest of it
    (changing the token or the secret key signs everyone out)."""
    key = str(current_app.secret_key).encode()
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def _signed_in(service: JobService) -> bool:
    token = service.config.api_token
    if not token:
        return True
    mark = _session().get("auth")
    return (isinstance(mark, str) and hmac.compare_digest(mark, _token_mark(token))) or (
        api.authorized(token)
    )


def _notify(text: str, *, ok: bool = True) -> None:
    _session()["notice"] = {"ok": ok, "text": text}


@blueprint.before_request
def guard() -> BaseResponse | None:
    """Sign-in first (when a token is set), then, for a POST, the anti-forgery checks."""
    if request.endpoint == "spoolkit_dashboard.static":
        return None
    service = current_service()
    if request.endpoint != "spoolkit_dashboard.sign_in" and not _signed_in(service):
        if request.method == "GET":
            return redirect(url_for(".sign_in", next=request.full_path.rstrip("?")), 303)
        abort(401, "sign in first")
    if request.method == "POST":
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") != request.host_url.rstrip("/"):
            abort(403, "cross-site request refused")
        given = request.form.get("csrf", "")
        if not hmac.compare_digest(given.encode(), _session()["csrf"].encode()):
            abort(403, "the form expired or did not come from this dashboard: reload the page")
    return None


@blueprint.after_request
def finish(response: Response) -> Response:
    """Keep the session cookie, and the headers that keep the pages to themselves."""
    if "spoolkit_session" in g:
        response.set_cookie(
            COOKIE, _serializer().dumps(g.spoolkit_session), max_age=SESSION_SECONDS,
            path=blueprint.url_prefix, secure=request.is_secure, httponly=True,
            samesite="Strict",
        )  # fmt: skip
    if request.endpoint != "spoolkit_dashboard.static":
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@blueprint.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> tuple[str, int]:
    return _render("error.html", status=exc.code or 500, message=exc.description), exc.code or 500


@blueprint.errorhandler(StoreUnavailable)
def store_error(exc: StoreUnavailable) -> tuple[str, int]:
    return _render("error.html", status=503, message=f"job store unavailable: {exc}"), 503


def _render(template: str, **context: Any) -> str:
    service = current_service()
    session = _session()
    return render_template(
        f"spoolkit/{template}",
        csrf=session["csrf"],
        notice=session.pop("notice", None),
        open_dashboard=not service.config.api_token,
        signed_in=bool(service.config.api_token) and _signed_in(service),
        refresh_ms=REFRESH_MS,
        **context,
    )


# -- pages ----------------------------------------------------------------------------------


@blueprint.get("")
def overview() -> str:
    now = time.time()
    return _render("overview.html", overview=current_service().overview(now),
                   states=[state.value for state in JobState], now=isoformat(now))  # fmt: skip


def _filters() -> dict[str, Any]:
    """The job list's filters from the query string (``400`` on a wrong one)."""
    state = request.args.get("state") or None
    if state is not None and state not in {s.value for s in JobState}:
        abort(400, f"state must be one of {', '.join(s.value for s in JobState)}")
    page_text = request.args.get("page", "1")
    if not api.LIMIT_PATTERN.fullmatch(page_text) or int(page_text) < 1:
        abort(400, "page must be a whole number from 1")
    filters = {name: (request.args.get(name) or "").strip()[:200] or None
               for name in ("task", "queue", "q")}  # fmt: skip
    return {"state": state, "page": int(page_text), **filters}


@blueprint.get("/jobs")
def jobs() -> str:
    service = current_service()
    filters = _filters()
    page = filters["page"]
    found = service.store.list_jobs(
        JobState(filters["state"]) if filters["state"] else None, filters["task"],
        PAGE_SIZE + 1, with_results=False, queue=filters["queue"], id_prefix=filters["q"],
        offset=(page - 1) * PAGE_SIZE,
    )  # fmt: skip
    now = time.time()
    rows = [_row(job, now) for job in found[:PAGE_SIZE]]
    query = {name: value for name, value in filters.items() if value and name != "page"}
    return _render(
        "jobs.html", rows=rows, filters=filters, query=query, page=page,
        has_next=len(found) > PAGE_SIZE, states=[s.value for s in JobState],
        tasks=service.registry.names(), queues=sorted(service.queue_report(now)),
        bulk=filters["task"] if filters["state"] == JobState.FAILED.value else None,
    )  # fmt: skip


def _row(job: Job, now: float) -> dict[str, Any]:
    return {"job": job, "age": _age(now - job.created_at), "progress": _progress(job)}


def _progress(job: Job) -> dict[str, Any] | None:
    """What the progress bar shows: ``done`` of ``total`` (a bar only with a total)."""
    if job.progress is None:
        return None
    shown = job.progress.to_dict()
    total = shown["total"]
    bar = total is not None and total > 0 and math.isfinite(total)
    text = f"{shown['done']}/{total}" if total is not None else f"{shown['done']}"
    if shown["message"]:
        text += f" {shown['message']}"
    return {"done": shown["done"], "total": total if bar else None, "text": text}


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


@blueprint.get("/jobs/<job_id>")
def job(job_id: str) -> str:
    service = current_service()
    try:
        found = service.get(job_id)
        payload = service.store.payload(job_id)
    except JobNotFound:
        abort(404, f"no job {job_id!r}")
    try:
        args, kwargs = decode_arguments(payload)
        arguments = _pretty({"args": args, "kwargs": kwargs})
    except (ValueError, TypeError):
        arguments = payload  # shown as stored
    result = _pretty(found.result) if found.result is not None else None
    large = result is not None and len(result.encode()) > INLINE_RESULT_BYTES
    now = time.time()
    return _render(
        "job.html", job=found, arguments=arguments, result=None if large else result,
        result_bytes=len(result.encode()) if result is not None else 0, large_result=large,
        progress=_progress(found), age=_age(now - found.created_at),
        history=[attempt.to_dict() for attempt in found.history],
        can_stop=found.state is JobState.RUNNING and not found.abort_requested,
        shown=found.to_dict(with_result=False),
    )  # fmt: skip


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=repr)


@blueprint.get("/jobs/<job_id>/result")
def job_result(job_id: str) -> Response:
    """A large result, whole, as JSON (linked from the job's page)."""
    try:
        found = current_service().get(job_id)
    except JobNotFound:
        abort(404, f"no job {job_id!r}")
    return Response(json.dumps(found.result), content_type="application/json")


@blueprint.post("/jobs/<job_id>/<action>")
def act(job_id: str, action: str) -> BaseResponse:
    """Retry, cancel or stop one job; the job's page then says what happened."""
    if action not in _ACTIONS:
        abort(404, f"no action {action!r}")
    service = current_service()
    method = {"retry": service.retry, "cancel": service.cancel, "stop": service.abort}[action]
    try:
        done = method(job_id)
    except JobNotFound:
        abort(404, f"no job {job_id!r}")
    except InvalidJobState as exc:
        _notify(str(exc), ok=False)
    except (StoreUnavailable, SpoolWriteError) as exc:
        _notify(f"nothing changed: {exc}", ok=False)
    else:
        what = _ACTIONS[action]
        if action == "stop" and done.state is JobState.CANCELLED:
            what = "cancelled (it was waiting)"
        _notify(f"job {job_id} {what}: now {done.state.value}")
    return redirect(url_for(".job", job_id=job_id), 303)


@blueprint.post("/tasks/<task>/retry-failed")
def retry_failed(task: str) -> BaseResponse:
    """Queue every failed job of one task again."""
    service = current_service()
    if task not in service.registry:
        abort(404, f"no task {task!r}")
    try:
        retried, problems = service.retry_failed(task)
    except (StoreUnavailable, SpoolWriteError) as exc:
        _notify(f"stopped: {exc}", ok=False)
    else:
        text = f"{len(retried)} failed job(s) of {task} queued again"
        if problems:
            text += f"; {len(problems)} could not be: {problems[0]}"
        _notify(text, ok=not problems)
    return redirect(url_for(".jobs", task=task), 303)


@blueprint.get("/queues")
def queues() -> str:
    overview = current_service().overview(time.time())
    return _render("queues.html", overview=overview, states=[s.value for s in JobState])


@blueprint.get("/periodic")
def periodic() -> str:
    return _render("periodic.html", schedules=current_service().periodic.listing(time.time()))


# -- signing in -----------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only a path of this dashboard: never another site (an open redirect)."""
    default = url_for(".overview")
    if not target:
        return default
    parts = urlsplit(target)
    prefix = blueprint.url_prefix or ""
    if parts.scheme or parts.netloc or not parts.path.startswith(prefix) or "\\" in target:
        return default
    return target


@blueprint.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> BaseResponse | tuple[str, int]:
    service = current_service()
    token = service.config.api_token
    target = _safe_next(request.values.get("next"))
    if not token:
        return redirect(target, 303)
    if request.method == "POST":
        given = request.form.get("token", "")
        if hmac.compare_digest(given.encode(), token.encode()):
            g.spoolkit_session = {"csrf": secrets.token_urlsafe(32), "auth": _token_mark(token)}
            return redirect(target, 303)
        _notify("wrong token", ok=False)
        return _render("sign_in.html", next=target), 401
    return _render("sign_in.html", next=target), 200


@blueprint.post("/sign-out")
def sign_out() -> BaseResponse:
    g.spoolkit_session = {"csrf": secrets.token_urlsafe(32)}
    return redirect(url_for(".sign_in"), 303)
