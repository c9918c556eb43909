"""JSON on the wire: task arguments, results, and the job envelope in a spool file.

Never pickle: whoever can write the spool directory would run code as the
spooler's user. A spool file carries a small versioned envelope in uWSGI's
packet (``spoolkit``, ``job``, ``task``) and the arguments as JSON, inside the
packet when they fit, in the file's body when they do not (the packet is
limited to 64 KiB, the body is not).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import DecodeError, EncodeError, ResultTooLarge

ENVELOPE_VERSION = b"1"
#: Arguments larger than this travel in the spool file's body.
PACKET_PAYLOAD_LIMIT = 32 * 1024
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,64}")
TASK_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,199}")


@dataclass(frozen=True)
class Envelope:
    """What a spool file tells the dispatcher: which job, which task, which arguments."""

    job_id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]


def _json(value: object) -> str:
    """Compact JSON in ASCII: a lone surrogate (``os.fsdecode()`` of a non-UTF-8 name)
    is escaped, so every encoded value can be stored and written to a spool file."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def encode_arguments(
    task: str, args: Sequence[Any], kwargs: Mapping[str, Any], names: Sequence[str] = ()
) -> str:
    """The JSON payload of a call, or :class:`EncodeError` naming the bad argument.

    ``names`` are the parameter names of the positional arguments, so the
    message can say ``argument 'text_list'`` instead of ``argument 2``.
    """
    try:
        return _json({"args": list(args), "kwargs": dict(kwargs)})
    except (TypeError, ValueError) as exc:
        labelled = [
            (repr(names[i]) if i < len(names) else f"#{i + 1}", value)
            for i, value in enumerate(args)
        ]
        labelled += [(repr(key), value) for key, value in kwargs.items()]
        for label, value in labelled:
            try:
                _json(value)
            except (TypeError, ValueError) as inner:
                raise EncodeError(
                    f"argument {label} of task {task!r} cannot be sent to a spooler: {inner}. "
                    "Pass JSON types (str, int, float, bool, None, list, dict) and finite numbers."
                ) from None
        raise EncodeError(f"the arguments of task {task!r} are not JSON: {exc}") from None


def decode_arguments(payload: str | bytes) -> tuple[list[Any], dict[str, Any]]:
    """``(args, kwargs)`` from a payload; :class:`DecodeError` if it is malformed."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"arguments are not valid JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) != {"args", "kwargs"}:
        raise DecodeError("arguments must be an object with exactly 'args' and 'kwargs'")
    args, kwargs = data["args"], data["kwargs"]
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise DecodeError("'args' must be a list and 'kwargs' an object")
    return args, kwargs


#: A result nested deeper than this fails its job: every reader (the store, the API,
#: a client's JSON parser) must be able to read what was stored, with room to spare.
MAX_RESULT_DEPTH = 100


def _deeper_than(value: object, limit: int) -> bool:
    """Is ``value`` (JSON types) nested more than ``limit`` lists/objects deep?"""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list | tuple):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return False


def encode_result(task: str, value: object, limit: int | None = None) -> str:
    """A task's return value as JSON, or :class:`EncodeError` saying which task returned
    what; :class:`ResultTooLarge` when it is over ``limit`` bytes."""
    try:
        text = _json(value)
    except (TypeError, ValueError) as exc:
        raise EncodeError(
            f"task {task!r} returned a {type(value).__name__}, which is not JSON: {exc}. "
            "Return JSON types (str, int, float, bool, None, list, dict), or a file path."
        ) from None
    if _deeper_than(value, MAX_RESULT_DEPTH):
        raise EncodeError(
            f"task {task!r} returned a value nested too deeply (over {MAX_RESULT_DEPTH} "
            "levels): store it in a file and return the path"
        )
    if limit is not None and len(text) > limit:
        raise ResultTooLarge(
            f"task {task!r} returned {len(text)} bytes of JSON, over SPOOLKIT_MAX_RESULT_BYTES="
            f"{limit}: store large output in a file and return its path"
        )
    return text


def to_spool_entries(job_id: str, task: str, payload: str) -> tuple[dict[bytes, bytes], bytes]:
    """The packet variables and body of a spool file for one job."""
    packet = {b"spoolkit": ENVELOPE_VERSION, b"job": job_id.encode(), b"task": task.encode()}
    data = payload.encode()
    if len(data) <= PACKET_PAYLOAD_LIMIT:
        packet[b"payload"] = data
        return packet, b""
    return packet, data


def _text(spool: Mapping[Any, Any], key: bytes) -> str:
    value = spool.get(key)
    if not isinstance(value, bytes):
        raise DecodeError(f"the {key.decode()!r} field is missing")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise DecodeError(f"the {key.decode()!r} field is not UTF-8") from None


def from_spool_dict(spool: Mapping[Any, Any]) -> Envelope:
    """Read the envelope out of the dict uWSGI hands to ``uwsgi.spooler``.

    uWSGI gives packet keys and values as bytes, and the body under the
    ``str`` key ``"body"``. Anything unexpected is a :class:`DecodeError`.
    """
    version = spool.get(b"spoolkit")
    if version is None:
        raise DecodeError("not a spoolkit spool file (no 'spoolkit' field)")
    if version != ENVELOPE_VERSION:
        raise DecodeError(f"unsupported envelope version {version!r}")
    job_id = _text(spool, b"job")
    if not JOB_ID_PATTERN.fullmatch(job_id):
        raise DecodeError(f"malformed job id {job_id[:80]!r}")
    task = _text(spool, b"task")
    if not TASK_NAME_PATTERN.fullmatch(task):
        raise DecodeError(f"malformed task name {task[:80]!r}")
    payload = spool.get(b"payload")
    if payload is None:
        payload = spool.get("body")
    if not isinstance(payload, bytes) or not payload:
        raise DecodeError("the arguments are missing (no 'payload' field and no body)")
    args, kwargs = decode_arguments(payload)
    return Envelope(job_id=job_id, task=task, args=args, kwargs=kwargs)
