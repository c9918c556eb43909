"""Seed 000/004's ``@async_api`` pattern, rewritten on the kit.

What the client sees is the same: the call answers ``202 Accepted`` with a
``Location``; that URL answers ``202`` while the work runs, ``200`` after.
What is gone, and why:

* ``@app.before_first_request`` (the cleaner thread): removed in Flask 2.3,
  so the seed no longer imports. The kit's housekeeper purges finished jobs
  after ``SPOOLKIT_RESULT_TTL``; set below to the seed's 5 minutes.
* ``flask_restful``: not needed; plain Flask routes do.
* The ``tasks`` dict, the thread per request and ``/status/<task_id>``: the
  kit's store, its spoolers and its ``GET /jobs/<id>`` (``result`` holds the
  return value; a failure is ``"state": "failed"`` with ``error``, not a 500).
"""

from flask import Flask
from werkzeug.exceptions import HTTPException

import tasks
from spoolkit import SpoolKit, accepted, json_http_error

app = Flask(__name__)
# The seed's cleaner kept finished tasks 5 minutes; the kit's housekeeper does that now.
app.config["SPOOLKIT_RESULT_TTL"] = 5 * 60
SpoolKit(app)
app.register_error_handler(HTTPException, json_http_error)


# Was: class CatchAll(Resource) with @async_api on get(), at "/" and "/<path:path>".
@app.get("/", defaults={"path": ""})
@app.get("/<path:path>")
def start_catch_all(path):
    return accepted(tasks.catch_all.delay(path))  # 202, Location: /jobs/<id>
