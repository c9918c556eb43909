"""The blog's uWSGI thread route (seed 003), with the kit dropped in.

The seed's code is unchanged but for the two lines marked "added". The kit
serves ``/jobs`` and ``/healthz`` beside it, but ``uwsgi_task`` is no job of
the kit: see tasks.py.
"""

import os

from flask import Flask, jsonify

from spoolkit import SpoolKit  # added
from tasks import uwsgi_task

app = Flask(__name__)
app.secret_key = os.urandom(42)
SpoolKit(app)  # added: serves /jobs, but uwsgi_task() below still only starts a thread


@app.route("/uwsgi_thread", defaults={"duration": 5})
@app.route("/uwsgi_thread/<int:duration>")
def uwsgi_thread(duration):
    uwsgi_task(duration)
    return jsonify({"started": True})
