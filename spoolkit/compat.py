"""Spool calls of uwsgidecorators and uwsgi-tasks, run under the kit's guarantees.

Code written for those libraries runs unchanged under the kit. How:

* ``uwsgi.spool`` becomes :meth:`Compat.spool`: the library's message turns
  into a job of the kit (row first, then spool file, as for ``@spoolkit.spool``)
  whose task is the decorated function's ``module.function``, whose
  ``origin`` names the library, and whose one argument is the message itself
  (its bytes, base64 in JSON). The caller gets back what ``uwsgi.spool``
  returns: the spool file's path, as bytes; :func:`job_id_of` finds the job
  from it.
* ``uwsgi.spooler`` stays the kit's dispatcher, whatever a library assigns to
  it later (see ``dispatcher.install``).
* When the job runs, the task registry asks :meth:`Compat.provide`, which
  answers only for functions the library itself registered (uwsgidecorators'
  ``spooler_functions``, uwsgi-tasks' ``@task`` table), never by importing a
  name. The adapter calls the library's own handler and maps its return code
  (README, "Code written for uwsgidecorators or uwsgi-tasks").
* A spool file one of the libraries wrote before the kit was installed is
  adopted when a spooler meets it (:meth:`Compat.adopt`): a row is recorded
  for it and it runs like the others.
* uwsgi-tasks sends ``AUTO`` and ``MULE`` tasks to a mule whenever one is
  configured, and the kit's housekeeping mule reads no messages: such a
  task is turned into the spooler task it would be without a mule.

Pickle: the libraries pickle arguments, and their handlers unpickle them in
the spooler, from the kit's own ``0700`` spool directory and ``0600`` store
(SECURITY.md). The kit itself never unpickles anything.
"""

from __future__ import annotations

import base64
import logging
import os
import sys
from collections.abc import Callable, Mapping
from types import FrameType, ModuleType
from typing import Any

from flask import Flask

from .config import Config
from .encoding import encode_arguments
from .errors import ConfigurationError
from .job import Job, new_job_id
from .queues import DEFAULT_QUEUE
from .registry import TaskRegistry
from .retry import GiveUp, Retry, RetryPolicy
from .schedule import validate_priority
from .spoolfile import OWN_PREFIX, SpoolDirectory, spool_file_name
from .store import NewJob, Store
from .task import Call, Task, app_enqueuer

log = logging.getLogger("spoolkit.compat")

SPOOL_OK = -2
SPOOL_RETRY = -1
SPOOL_IGNORE = 0

UWSGIDECORATORS = "uwsgidecorators"
UWSGI_TASKS = "uwsgi-tasks"
#: Keys uWSGI itself reads in a spool message.
_SPECIAL = (b"at", b"priority", b"spooler")
#: How soon a ``@spoolforever`` task runs again (uWSGI re-ran it at its next scan).
FOREVER_PAUSE = 1.0

Message = dict[bytes, bytes]


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def pack_message(message: Mapping[Any, Any]) -> list[list[str]]:
    """A spool message as JSON: ``[[base64 key, base64 value], ...]``."""
    return [
        [base64.b64encode(_bytes(key)).decode(), base64.b64encode(_bytes(value)).decode()]
        for key, value in message.items()
    ]


def unpack_message(packed: list[list[str]]) -> Message:
    return {base64.b64decode(key): base64.b64decode(value) for key, value in packed}


def full_name(function: Callable[..., Any]) -> str:
    return f"{function.__module__}.{function.__qualname__}"


def job_id_of(spool_file: str | bytes) -> str | None:
    """The job id in the name of a spool file the kit wrote (what ``.spool()`` returns)."""
    name = os.path.basename(os.fsdecode(spool_file))
    if not name.startswith(OWN_PREFIX):
        return None
    stamp, _, job_id = name[len(OWN_PREFIX) :].partition("_")  # ids may hold "_" too
    return job_id if stamp.isdigit() and job_id else None


def outcome(code: object, *, forever: bool = False) -> bool:
    """Map a uWSGI spooler return code onto the kit's outcomes; ``True``: run it again
    as a new job (``@spoolforever``). ``SPOOL_RETRY`` retries with backoff within the
    job's attempts; ``SPOOL_IGNORE`` fails it at once."""
    if code == SPOOL_OK:
        return False
    if code == SPOOL_RETRY:
        if forever:
            return True
        raise Retry(reason="the task returned SPOOL_RETRY")
    if code == SPOOL_IGNORE:
        raise GiveUp("the task returned SPOOL_IGNORE (declined the job)")
    raise GiveUp(f"the task returned {code!r}, which is no spooler return code")


def _caller(code: Any) -> FrameType | None:
    """The frame of the library method whose code is ``code``, if it is among our few
    callers: how the kit reads a uwsgi-tasks task's own settings without unpickling."""
    frame: FrameType | None = sys._getframe(1)
    for _ in range(5):
        if frame is None or frame.f_code is code:
            return frame
        frame = frame.f_back
    return None


class Compat:
    """The kit's stand-in for ``uwsgi.spool`` and the adapters that run library jobs."""

    def __init__(
        self,
        app: Flask,
        config: Config,
        store: Store,
        registry: TaskRegistry,
        directories: Mapping[str, SpoolDirectory],
    ) -> None:
        self.app = app
        self.store = store
        #: Each queue's spool directory: a message's ``spooler`` names one of them.
        self.directories = directories
        self.directory = directories[DEFAULT_QUEUE]
        self.max_attempts = config.compat_max_attempts
        self._adapters: dict[str, Task[Any, Any]] = {}
        registry.add_provider(self.provide)

    def install(self, uwsgi: ModuleType) -> None:
        """Take over ``uwsgi.spool`` and ``uwsgi.mule_msg`` in this process (and its forks)."""
        if getattr(getattr(uwsgi, "spool", None), "__self__", None) is self:
            return
        self._mule_msg = getattr(uwsgi, "mule_msg", None)
        uwsgi.spool = self.spool  # type: ignore[attr-defined]
        if self._mule_msg is not None:
            uwsgi.mule_msg = self.mule_msg  # type: ignore[attr-defined]

    # -- in the producer: a library's spool call becomes a job -------------------------------

    def spool(self, message: Mapping[Any, Any] | None = None, **fields: Any) -> bytes:
        """What ``uwsgi.spool(dict)`` does for a library, with a row behind it."""
        raw: Message = {_bytes(k): _bytes(v) for k, v in {**(message or {}), **fields}.items()}
        origin, name, policy = self.identify(raw)
        options = self._options(raw)
        call = Call(name, _payload(origin, raw), policy, origin=origin)
        with self.app.app_context():
            job = app_enqueuer().enqueue(call, **options)
        return os.fsencode(self._path_of(job))

    def _path_of(self, job: Job) -> str:
        relative = job.spool_file or spool_file_name(job.id, job.created_at)
        return self.directories.get(job.queue, self.directory).absolute(relative)

    def identify(self, raw: Message) -> tuple[str, str, RetryPolicy]:
        """Which library wrote ``raw``, its task's name, and the attempts it gets."""
        decorators = sys.modules.get("uwsgidecorators")
        function = raw.get(b"ud_spool_func")
        if function is not None:
            found = decorators.spooler_functions.get(function.decode()) if decorators else None
            if found is None:
                raise ConfigurationError(
                    f"uwsgidecorators task {function.decode(errors='replace')!r} is not "
                    "registered in this process"
                )
            return UWSGIDECORATORS, full_name(found), RetryPolicy(self.max_attempts)
        path = raw.get(b"function_name")
        tasks = sys.modules.get("uwsgi_tasks.tasks")
        if path is not None and tasks is not None:
            name = path.decode()
            if getattr(tasks.saved_tasks, name, None) is None:
                raise ConfigurationError(f"uwsgi-tasks task {name!r} is not registered")
            attempts = self.max_attempts
            # uwsgi-tasks' retry_count is the total number of runs its retries may take.
            caller = _caller(tasks.SpoolerTask.execute_async.__code__)
            if caller is not None:
                asked = caller.f_locals["self"].retry_count or 0
                attempts = max(attempts, int(asked))
            return UWSGI_TASKS, name, RetryPolicy(attempts)
        raise ConfigurationError(
            "uwsgi.spool() got a message of no library the kit knows (keys: "
            f"{sorted(k.decode(errors='replace') for k in raw)}); queue jobs with "
            "@spoolkit.spool, uwsgidecorators or uwsgi-tasks"
        )

    def _options(self, raw: Message) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if b"at" in raw:
            options["at"] = float(raw[b"at"])
        if b"priority" in raw:
            options["priority"] = validate_priority(int(raw[b"priority"]))
        if b"spooler" in raw:
            # uWSGI's way to pick a spooler directory: the kit's queue of that directory.
            wanted = os.path.realpath(os.fsdecode(raw[b"spooler"]))
            queues = [q for q, spool in self.directories.items() if spool.path == wanted]
            if not queues:
                raise ConfigurationError(
                    f"spooler={os.fsdecode(raw[b'spooler'])!r} is none of the kit's spool "
                    f"directories ({', '.join(sorted(self.directories))} queues); leave "
                    "'spooler' out, or name one of those directories"
                )
            options["queue"] = queues[0]
        return options

    def mule_msg(self, message: bytes, *target: Any) -> Any:
        """uwsgi-tasks' mule tasks go to the spooler; other mule messages pass through."""
        tasks = sys.modules.get("uwsgi_tasks.tasks")
        caller = _caller(tasks.MuleTask.execute_async.__code__) if tasks else None
        if caller is not None and tasks is not None:
            mule_task = caller.f_locals["self"]
            log.info("uwsgi-tasks task %s goes to the spooler: the kit's mule reads no "
                     "messages", mule_task.function_name)  # fmt: skip
            spooled = tasks.SpoolerTask(
                function=mule_task.function_name,
                args=mule_task.args,
                kwargs=mule_task.kwargs,
                **{k: v for k, v in mule_task.setup.items() if k != "mule"},
            )
            return spooled.execute_async()
        assert self._mule_msg is not None
        return self._mule_msg(message, *target)

    # -- in a spooler: run a library's job ---------------------------------------------------

    def provide(self, name: str) -> Task[Any, Any] | None:
        """The adapter task for ``name`` if one of the libraries registered that function."""
        decorators = sys.modules.get("uwsgidecorators")
        tasks = sys.modules.get("uwsgi_tasks.tasks")
        if decorators is not None and any(
            full_name(f) == name for f in decorators.spooler_functions.values()
        ):
            return self._adapter(name, self.run_uwsgidecorators)
        if tasks is not None and getattr(tasks.saved_tasks, name, None) is not None:
            return self._adapter(name, self.run_uwsgi_tasks)
        return None

    def _adapter(self, name: str, run: Callable[[str, list[list[str]]], None]) -> Task[Any, Any]:
        task = self._adapters.get(name)
        if task is None:

            def adapter(origin: str, message: list[list[str]]) -> None:
                run(origin, message)

            adapter.__qualname__ = adapter.__name__ = name
            task = Task(adapter, name=name, policy=RetryPolicy(self.max_attempts))
            self._adapters[name] = task
        return task

    def run_uwsgidecorators(self, origin: str, packed: list[list[str]]) -> None:
        decorators = sys.modules["uwsgidecorators"]
        message = unpack_message(packed)
        code = decorators.manage_spool_request(dict(message))
        forever = message.get(b"ud_spool_ret") == str(SPOOL_RETRY).encode()
        if outcome(code, forever=forever):
            self._again(origin, message)

    def run_uwsgi_tasks(self, origin: str, packed: list[list[str]]) -> None:
        tasks = sys.modules["uwsgi_tasks.tasks"]
        message = unpack_message(packed)
        task = tasks.SpoolerTask.extract_from_message(message)
        if task is None or getattr(tasks.saved_tasks, task.function_name, None) is None:
            raise GiveUp("the message names no uwsgi-tasks @task of this process")
        try:
            result = tasks.BaseTask.execute_now(task)
        except tasks.RetryTaskException as exc:
            raise Retry(countdown=exc.timeout or task.retry_timeout or None,
                        reason="RetryTaskException") from None  # fmt: skip
        if task.setup.get("spooler_return"):
            outcome(result)
        elif result == SPOOL_RETRY:
            raise Retry(countdown=task.retry_timeout or None,
                        reason="the task returned SPOOL_RETRY")  # fmt: skip

    def _again(self, origin: str, message: Message) -> None:
        """``@spoolforever``: the run succeeded and asked to run again; a new job does."""
        _, name, policy = self.identify(message)
        call = Call(name, _payload(origin, message), policy, origin=origin)
        # In the same queue: the one its message's ``spooler`` named, if it named one.
        kept = self._options({k: v for k, v in message.items() if k == b"spooler"})
        app_enqueuer().enqueue(call, countdown=FOREVER_PAUSE, queue=kept.get("queue"))

    # -- files written before the kit --------------------------------------------------------

    def adopt(
        self, spool: Mapping[Any, Any], delivery: str, now: float, queue: str = DEFAULT_QUEUE
    ) -> Job | None:
        """Record a job for a library's spool file written without the kit; ``None`` if
        it is no library's. The file runs under its own name (``delivery``), in the queue
        whose directory it was found in."""
        raw: Message = {
            _bytes(key): _bytes(value)
            for key, value in spool.items()
            if key not in ("spooler_task_name", "body")
        }
        body = spool.get("body")
        if isinstance(body, bytes) and body:
            raw[b"body"] = body
        try:
            origin, name, policy = self.identify(raw)
        except ConfigurationError as exc:
            log.error("spool file %s: %s", delivery, exc)
            return None
        for key in _SPECIAL:
            raw.pop(key, None)  # uWSGI has applied them: the file is due and in its place
        job = self.store.insert(
            NewJob(id=new_job_id(), task=name, payload=_payload(origin, raw),
                   max_attempts=policy.max_attempts, backoff=policy.backoff, priority=None,
                   created_at=now, run_at=None, spool_file=delivery, origin=origin,
                   queue=queue)
        )  # fmt: skip
        log.warning("spool file %s, written by %s before the kit, adopted as job %s (%s)",
                    delivery, origin, job.id, name)  # fmt: skip
        return job


def _payload(origin: str, message: Mapping[Any, Any]) -> str:
    """The adapter's arguments: the library's name and its message."""
    return encode_arguments(origin, [origin, pack_message(message)], {})
