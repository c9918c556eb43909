"""Entry point of the housekeeping mule: ``mule = spoolkit.mule:run`` in uwsgi.ini.

The mule is forked from the master after the app is loaded, so the app's
JobService is already here; nothing else in the mule runs jobs.
"""

from __future__ import annotations

from .housekeeping import Housekeeper
from .service import current_service


def run() -> None:
    Housekeeper(current_service()).run_forever()
