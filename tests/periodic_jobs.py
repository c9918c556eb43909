"""Periodic tasks for the end-to-end tests, imported by the test servers with
``SPOOLKIT_IMPORTS=tests.jobs,tests.periodic_jobs``.

Which schedules exist depends on ``PERIODIC_TEST_PLAN`` in the server's
environment, so that one test's schedules never fire in another's server:

* ``every1``: ``every_second``, declared with ``@spool(every=1)``;
* ``grace``: ``lenient`` and ``strict``, every ``PERIODIC_TEST_EVERY`` seconds,
  declared with ``periodic()``, with a misfire grace of 120 s and of 2 s.
"""

from __future__ import annotations

import os

from spoolkit import periodic, spool

from .jobs import record

PLAN = os.environ.get("PERIODIC_TEST_PLAN", "")
EVERY = int(os.environ.get("PERIODIC_TEST_EVERY", "12"))


@spool(max_attempts=3, backoff=0)
def lenient() -> None:
    record("lenient")


@spool(max_attempts=3, backoff=0)
def strict() -> None:
    record("strict")


if PLAN == "every1":

    @spool(every=1, max_attempts=3, backoff=0)
    def every_second() -> None:
        record("every_second")


if PLAN == "grace":
    periodic(lenient, every=EVERY, misfire_grace=120)
    periodic("tests.periodic_jobs.strict", every=EVERY, misfire_grace=2)
