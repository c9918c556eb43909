"""Entry point of the housekeeping mule: ``mule = spoolkit.mule:run`` in uwsgi.ini.

The mule is forked from the master after the app is loaded, so every app's
JobService is already here; it looks after each (one thread per extra app).
Nothing else in the mule runs jobs.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from .errors import ConfigurationError
from .extension import services
from .housekeeping import Housekeeper


def _leave(signum: int, frame: FrameType | None) -> None:
    os._exit(0)


def run() -> None:
    if not services:
        raise ConfigurationError("the housekeeping mule found no app with SpoolKit set up")
    # uWSGI's own handler of these (end_me) calls exit() inside the signal handler; when
    # it lands while the mule is inside malloc (in SQLite, say), Python's finalization
    # waits on malloc's lock for ever, and so does a reloading master (seen under load).
    # A Python handler runs between bytecodes instead; the mule has nothing to flush.
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _leave)
    keepers = [Housekeeper(s.store, s.runner, s.config, s.periodic) for s in services]
    for keeper in keepers[1:]:
        threading.Thread(target=keeper.run_forever, name="spoolkit-housekeeper",
                         daemon=True).start()  # fmt: skip
    keepers[0].run_forever()
