"""The example's spooled tasks. Add a task by writing a function here with ``@spool``.

``render_audio`` is the classic slow call moved out of a request: it asks a
(simulated) third-party text-to-speech API for each text, which takes a
while per item, reports progress, and writes one WAV file whose path is the
job's result. It runs on the ``slow`` queue, so renders never hold up the
quick jobs of the ``default`` queue. When it returns, ``render_ready`` is
called back with the finished job (the question the project started from),
on the default queue; if it fails for good,
``render_failed`` raises the alarm. ``clean_old_renders`` is a periodic job:
every day it deletes the WAV files older than a day.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import time
import wave
from typing import Any

from flask import current_app

from spoolkit import current_job, spool

log = logging.getLogger("tasks")

SAMPLE_RATE = 8000
SECONDS_PER_TEXT = 0.4
#: Rendered files older than this are deleted by ``clean_old_renders``.
KEEP_RENDERS_SECONDS = 24 * 3600


@spool
def render_ready(job: dict[str, Any]) -> str:
    """Called back with the finished render job: note that its file is ready.

    A line in ``ready.jsonl`` beside the WAV files stands for "tell the user"
    (an e-mail, a push message, a row in your own table).
    """
    out_dir = current_app.config["RENDER_OUTPUT_DIR"]
    os.makedirs(out_dir, exist_ok=True)
    notice = {"job": job["id"], "file": job["result"], "finished_at": job["finished_at"]}
    with open(os.path.join(out_dir, "ready.jsonl"), "a", encoding="utf-8") as out:
        out.write(json.dumps(notice) + "\n")
    return str(job["result"])


@spool
def render_failed(job: dict[str, Any]) -> None:
    """Called back when a render failed for good: raise the alarm (here, the log)."""
    error = job["error"] or {}
    log.error("render job %s failed after %d attempts: %s: %s", job["id"], job["attempts"],
              error.get("type"), error.get("message"))  # fmt: skip


# On the "slow" queue (uwsgi.ini): a long render never holds up the quick jobs of "default".
@spool(max_attempts=5, backoff=2.0, on_success=render_ready, on_failure=render_failed,
       queue="slow")  # fmt: skip
def render_audio(script_id: str, text_list: list[str]) -> str:
    """Render every text of a script into one WAV file and return the file's path.

    Safe to run twice (the spooler delivers at least once): the output is
    written to a temporary name and renamed into place.
    """
    out_dir = current_app.config["RENDER_OUTPUT_DIR"]
    os.makedirs(out_dir, exist_ok=True)
    frames = bytearray()
    total = len(text_list)
    for done, text in enumerate(text_list, start=1):
        frames += call_speech_api(text, delay=float(current_app.config["RENDER_API_DELAY"]))
        current_job.progress(done, total, f"rendered text {done} of {total}")
    path = os.path.join(out_dir, f"{script_id}-{current_job.id}.wav")
    partial = f"{path}.part"
    with wave.open(partial, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(bytes(frames))
    os.replace(partial, path)
    return path


def call_speech_api(text: str, delay: float) -> bytes:
    """Stand-in for the slow third-party API: waits, then returns a tone for the text."""
    time.sleep(delay)
    pitch = 220 + int(hashlib.sha256(text.encode()).hexdigest()[:4], 16) % 440
    count = int(SAMPLE_RATE * SECONDS_PER_TEXT)
    return b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * pitch * i / SAMPLE_RATE)))
        for i in range(count)
    )


@spool(cron="15 4 * * *")  # every day at 04:15 UTC; tz="Europe/Paris" would read it there
def clean_old_renders() -> int:
    """Delete the rendered WAV files older than a day; return how many.

    A periodic job: the housekeeper queues it once per slot (never twice, even
    across restarts), and it runs like any job, with retries and a history.
    """
    out_dir = current_app.config["RENDER_OUTPUT_DIR"]
    cutoff = time.time() - KEEP_RENDERS_SECONDS
    removed = 0
    try:
        entries = list(os.scandir(out_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.name.endswith((".wav", ".wav.part")):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            pass  # removed meanwhile: what we wanted
    log.info("removed %d rendered files older than a day", removed)
    return removed
