"""The blog's uWSGI thread task (seed 003, "uWSGI thread"), as written.

NOT a kit job. ``@thread`` starts a daemon thread in the web worker that
served the request, per call: no row, no id, no status, no retry, no limit on
how many run at once, and the thread dies with its worker (a reload, a
``harakiri``, a crash) without a trace. The kit gives it none of its
guarantees; docs/migrating.md says what to use instead (``@spoolkit.spool``).

Nothing here was broken on today's uwsgidecorators (``enable-threads = true``,
which the kit's uwsgi.ini sets, is still needed). One addition:
``record_run()``, so the test suite can see the thread ran.
"""

import json
import os
import time

from uwsgidecorators import thread


def record_run(task, **data):
    """Added for tests/test_examples.py: one JSON line per run under $EXAMPLE_RECORDS."""
    directory = os.environ.get("EXAMPLE_RECORDS")
    if directory:
        line = {"time": time.time(), "pid": os.getpid(), **data}
        with open(os.path.join(directory, f"{task}.jsonl"), "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


@thread
def uwsgi_task(duration):
    for i in range(duration):
        print("Working in uwsgi thread... {}/{}".format(i + 1, duration))
        time.sleep(1)
    record_run("uwsgi_task", duration=duration)  # added: what the tests look for
