"""The blog's uwsgi-tasks route (seed 003), with the kit dropped in.

The seed's code is unchanged but for the two lines marked "added". The
blog's other routes (``/``, ``/uwsgi_thread``, ``/uwsgi_spool``) live in
``examples/uwsgi_thread`` and ``examples/uwsgidecorators_spool``.
"""

import os

from flask import Flask, jsonify

from spoolkit import SpoolKit  # added
from tasks import uwsgi_tasks_task

app = Flask(__name__)
app.secret_key = os.urandom(42)
SpoolKit(app)  # added: each uwsgi_tasks_task() call is now a job: GET /jobs, GET /jobs/<id>


@app.route("/uwsgi_tasks", defaults={"duration": 5})
@app.route("/uwsgi_tasks/<int:duration>")
def uwsgi_tasks(duration):
    # https://pypi.org/project/uwsgi-tasks/
    uwsgi_tasks_task(duration)
    return jsonify({"started": True})
