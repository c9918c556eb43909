"""The blog's uwsgi-tasks task (seed 003, "Wrapping up spooler"), with the kit dropped in.

Seed 003 imports ``uwsgi_tasks_task`` in its ``app.py`` and praises uwsgi-tasks
for passing arguments and controlling retries, but never shows the task; the
blog's repository has it commented out, the same loop as ``spool_task`` under
``@task(executor=TaskExecutor.SPOOLER)``. That is the code below, working:
nothing in it is broken on uwsgi-tasks 0.7.3. One addition: ``record_run()``,
so the test suite can see each run.

Under the kit, ``uwsgi_tasks_task(duration)`` records a job
(``tasks.uwsgi_tasks_task``, origin ``uwsgi-tasks``) and a kit spooler runs it.
``retry_count``/``retry_timeout`` would be kept and ``RetryTaskException``
retries the same job; an exception no longer vanishes in uwsgi-tasks' bare
``except: return SPOOL_OK`` but is retried with backoff, then the job fails.
"""

import json
import os
import time

from uwsgi_tasks import TaskExecutor, task


def record_run(task, **data):
    """Added for tests/test_examples.py: one JSON line per run under $EXAMPLE_RECORDS."""
    directory = os.environ.get("EXAMPLE_RECORDS")
    if directory:
        line = {"time": time.time(), "pid": os.getpid(), **data}
        with open(os.path.join(directory, f"{task}.jsonl"), "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


@task(executor=TaskExecutor.SPOOLER)
def uwsgi_tasks_task(duration):
    for i in range(duration):
        print("Working in uwsgi-tasks spool... {}/{}".format(i + 1, duration))
        time.sleep(1)
    record_run("uwsgi_tasks_task", duration=duration)  # added: what the tests look for
