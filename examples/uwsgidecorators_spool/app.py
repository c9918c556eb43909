"""The blog's spooler routes (seed 003, "uWSGI spooler"), with the kit dropped in.

The seed's code is unchanged but for three lines marked "added": the import
and ``SpoolKit(app)``, and the ``at`` variant, which the blog shows as a
replacement of ``/uwsgi_spool`` and which gets its own URL here so both run.
``prepare_spooler_args`` stays: uwsgidecorators still sends the dict to
``uwsgi.spool()`` as given, and the kit accepts bytes and str alike.
"""

import os
import time

from flask import Flask, jsonify

from spoolkit import SpoolKit  # added
from tasks import spool_task

app = Flask(__name__)
app.secret_key = os.urandom(42)
SpoolKit(app)  # added: each spool_task.spool() is now a job: GET /jobs, GET /jobs/<id>


def prepare_spooler_args(**kwargs):
    args = {}
    for name, value in kwargs.items():
        args[name.encode("utf-8")] = str(value).encode("utf-8")
    return args


@app.route("/uwsgi_spool", defaults={"duration": 5})
@app.route("/uwsgi_spool/<int:duration>")
def uwsgi_spool(duration):
    args = prepare_spooler_args(duration=duration)
    spool_task.spool(args)
    return jsonify({"started": True})


# The blog's `at` variant. It replaced the route above; added: its own URL.
@app.route("/uwsgi_spool_at", defaults={"duration": 5})
@app.route("/uwsgi_spool_at/<int:duration>")
def uwsgi_spool_at(duration):
    at = int(time.time()) + 3  # delay by 3s
    args = prepare_spooler_args(duration=duration, at=at)
    spool_task.spool(args)
    return jsonify({"started": True})
