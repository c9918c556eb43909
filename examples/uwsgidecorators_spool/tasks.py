"""The blog's spooler task (seed 003, "uWSGI spooler"), written for uwsgidecorators.

Kept as the blog wrote it; nothing here was broken on today's uwsgidecorators.
One addition: ``record_run()``, so the test suite can see each run.

Under the kit, ``spool_task.spool(...)`` records a job (``tasks.spool_task``,
origin ``uwsgidecorators``) and a kit spooler runs it. Note that ``@spool``
answers ``SPOOL_OK`` whatever the function returns (uwsgidecorators puts
``ud_spool_ret`` in the message): the ``SPOOL_RETRY`` of the ``except:``
branch never retried, before the kit or under it. Use ``@spoolraw`` for the
return code to count, or move the task to ``@spoolkit.spool`` and raise.
"""

import json
import os
import time

import uwsgi
from uwsgidecorators import spool


def record_run(task, **data):
    """Added for tests/test_examples.py: one JSON line per run under $EXAMPLE_RECORDS."""
    directory = os.environ.get("EXAMPLE_RECORDS")
    if directory:
        line = {"time": time.time(), "pid": os.getpid(), **data}
        with open(os.path.join(directory, f"{task}.jsonl"), "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


@spool
def spool_task(args):
    try:
        duration = int(args["duration"])
        for i in range(duration):
            print("Working in uwsgi spool... {}/{}".format(i + 1, duration))
            time.sleep(1)
        record_run("spool_task", duration=duration)  # added: what the tests look for
        return uwsgi.SPOOL_OK
    except:  # the seed's bare except, kept (its SPOOL_RETRY is ignored by @spool, see above)
        return uwsgi.SPOOL_RETRY
