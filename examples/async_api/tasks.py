"""The body of seed 000/004's ``CatchAll.get``, as a kit task.

The seed ran the view itself in a thread per request (``@async_api``), inside
a copy of the request context. A kit task runs in a spooler process, inside
the app context only: it gets its arguments (JSON), not ``request`` or ``g``.
Its return value becomes the job's ``result``, shown by ``GET /jobs/<id>``.

Changed: the seed's fixed ``time.sleep(10)`` reads ``ASYNC_API_SECONDS``
(default 10), so the tests can wait 1 s.
"""

import os
import time

from spoolkit import spool


@spool  # 3 attempts, 1 s backoff: an exception is retried, then the job ends "failed"
def catch_all(path=""):
    # perform some intensive processing
    print("starting processing task, path: '%s'" % path)
    time.sleep(float(os.environ.get("ASYNC_API_SECONDS", "10")))  # changed: was 10
    print("completed processing task, path: '%s'" % path)
    return f"The answer is: {path}"
