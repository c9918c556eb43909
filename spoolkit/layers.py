"""The package's layers, lowest first: a module imports only from its own layer or below.

``tests/test_layers.py`` reads every module's imports (``TYPE_CHECKING``
blocks included) and fails on one that points up, on a cycle, on a module
missing from this table, and on ``uwsgi`` imported outside the runners.

    surface   extension api openapi cli mule   the Flask extension, HTTP, CLI, uWSGI mule,
              dashboard metrics                the dashboard, Prometheus /metrics
       |
    service   service housekeeping firing      queue/read/cancel/retry; recover lost jobs;
                                               fire periodic jobs
       |
    runners   runner spooler dispatcher compat how jobs reach a process: uWSGI spoolers,
              spoolfile runtime local eager    threads, inline (the only code importing uwsgi);
              webnode                          a web node that only records jobs (multi-host);
                                               uwsgidecorators and uwsgi-tasks under the kit
       |
    worker    worker followups                 run one delivery: claim, call, record, and
                                               queue what a finished job asks for
       |
    store     store rows sqlite postgres       the Store protocol; the SQLite and PostgreSQL stores
       |
    tasks     task decorator registry context  @spool, task names, current_job, the
              webhook                          spoolkit.webhook task
       |
    values    errors states job retry          plain values and rules, no I/O
              schedule encoding lifecycle      (recurrence: where periodic slots fall)
              config recurrence queues stats   (queues: queue names; stats: running totals)

A new runner is a module in ``runners`` implementing ``runner.Runner``; a
new store is a module in ``store`` implementing ``store.Store``.
"""

from __future__ import annotations

LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("values", frozenset({"errors", "states", "job", "retry", "schedule", "encoding", "stats",
                          "lifecycle", "config", "layers", "recurrence", "queues"})),
    ("tasks", frozenset({"task", "decorator", "registry", "context", "webhook"})),
    ("store", frozenset({"store", "rows", "sqlite", "postgres"})),
    ("worker", frozenset({"worker", "followups"})),
    ("runners", frozenset({"runner", "spooler", "dispatcher", "spoolfile", "runtime", "local",
                           "eager", "compat", "webnode"})),
    ("service", frozenset({"service", "housekeeping", "firing"})),
    ("surface", frozenset({"extension", "api", "openapi", "cli", "mule", "dashboard", "metrics",
                           "__init__"})),
)  # fmt: skip

#: The layer whose modules may import ``uwsgi``.
UWSGI_LAYER = "runners"
