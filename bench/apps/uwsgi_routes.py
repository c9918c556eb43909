"""Producer routes shared by the uWSGI-based systems: the enqueue loop runs inside
the uWSGI worker, because uwsgi.spool() (and the wake-up that comes with it) only
exists there. ``enqueue(i)``, ``enqueue_at(i, at)`` and ``enqueue_sleepy(i)`` are
each system's own call."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from flask import Flask, request


def add_routes(
    app: Flask,
    enqueue: Callable[[int], object],
    enqueue_at: Callable[[int, float], object],
    enqueue_sleepy: Callable[[int], object],
) -> None:
    @app.get("/bench/enqueue")
    def enqueue_many() -> dict[str, float]:
        n, start = int(request.args["n"]), int(request.args.get("start", 0))
        t0 = time.time()
        for i in range(start, start + n):
            enqueue(i)
        return {"t0": t0, "t1": time.time()}

    @app.get("/bench/enqueue_at")
    def enqueue_later() -> dict[str, float]:
        n, start, at = (
            int(request.args["n"]),
            int(request.args.get("start", 0)),
            float(request.args["at"]),
        )
        t0 = time.time()
        for i in range(start, start + n):
            enqueue_at(i, at)
        return {"t0": t0, "t1": time.time()}

    @app.get("/bench/one")
    def one() -> dict[str, float]:
        i = int(request.args["i"])
        t0 = time.time()
        enqueue(i)
        return {"t0": t0}

    @app.get("/bench/burst")
    def burst() -> dict[str, float]:
        n, start, gap = (
            int(request.args["n"]),
            int(request.args["start"]),
            float(request.args["gap"]),
        )
        last = 0.0
        for i in range(start, start + n):
            last = time.time()
            enqueue_sleepy(i)
            time.sleep(gap)
        return {"last": last}

    @app.get("/bench/burn")
    def burn() -> dict[str, float]:
        # Web load: a request that takes ``ms`` of CPU, like a view rendering a page.
        until = time.process_time() + float(request.args.get("ms", 5)) / 1000
        spins = 0
        while time.process_time() < until:
            spins += 1
        return {"spins": spins}

    @app.post("/bench/http")
    def http_enqueue() -> tuple[str, int, dict[str, str]]:
        # The raw systems' HTTP route: parse the JSON body, spool, answer 202 JSON.
        i = int(request.get_json(force=True)["args"][0])
        enqueue(i)
        return json.dumps({"accepted": i}), 202, {"Content-Type": "application/json"}
