"""Entry point of the housekeeping mule: ``mule = spoolkit.mule:run`` in uwsgi.ini.

The mule is forked from the master after the app is loaded, so every app's
JobService is already here; it looks after each (one thread per extra app).
Nothing else in the mule runs jobs.
"""

from __future__ import annotations

import threading

from .errors import ConfigurationError
from .extension import services
from .housekeeping import Housekeeper


def run() -> None:
    if not services:
        raise ConfigurationError("the housekeeping mule found no app with SpoolKit set up")
    keepers = [Housekeeper(s.store, s.runner, s.config) for s in services]
    for keeper in keepers[1:]:
        threading.Thread(target=keeper.run_forever, name="spoolkit-housekeeper",
                         daemon=True).start()  # fmt: skip
    keepers[0].run_forever()
