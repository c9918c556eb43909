"""Test harness: a real ``uwsgi --ini uwsgi.ini`` in a temporary directory,
and the in-process Flask app the faster tests use.

Each server gets free ports on 127.0.0.1, its own spool directory, store
and record directory. It is stopped by pid (SIGTERM to the master, then
SIGKILL to the master and every descendant left), never by name.

``SPOOLKIT_TEST_UWSGI`` names another uwsgi binary (read at import, before
the autouse fixture clears ``SPOOLKIT_*``); by default the one next to
this Python, as ``make test`` builds it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

from flask import Flask

from bench.common import (  # one copy for both
    alive,
    descendants,
    free_port,
    read_stats,
    wait_for,
)
from spoolkit import SpoolKit
from spoolkit.spoolfile import OWN_PREFIX, pack_vars
from spoolkit.states import FINISHED

REPO = Path(__file__).resolve().parent.parent
UWSGI = Path(os.environ.get("SPOOLKIT_TEST_UWSGI") or Path(sys.executable).with_name("uwsgi"))
# The master's line for every spooler it forks, the first ones and each respawn.
SPOOLER_SPAWNED = re.compile(r"^spawned the uWSGI spooler on dir .* with pid (\d+)$", re.M)


def make_app(tmp_path: Path, **config: Any) -> Flask:
    """A Flask app with the kit on a store in ``tmp_path`` and the test tasks imported."""
    app = Flask("testapp")
    app.config.update(
        TESTING=True,
        SECRET_KEY="test-secret-key",  # as a deployment sets it (the dashboard needs it)
        SPOOLKIT_DATABASE=str(tmp_path / "jobs.db"),
        SPOOLKIT_IMPORTS="tests.jobs",
        **config,
    )
    SpoolKit(app)
    return app


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:300]!r}>"


class UwsgiServer:
    """A real uWSGI. By default ``uwsgi.ini`` over HTTP; with ``ini=`` the
    production overlay, reached through its uwsgi-protocol unix socket."""

    def __init__(
        self,
        base: Path,
        ini: Path | None = None,
        extra_args: tuple[str, ...] = (),
        section: str | None = None,
        **env: str,
    ) -> None:
        self.base = base
        self.extra_args = extra_args
        self.ini = ini or REPO / "uwsgi.ini"
        #: A section of the ini to start instead of [uwsgi] ("web": a web node).
        self.section = section
        self.socket_path = base / "uwsgi.sock" if ini is not None else None
        self.port = free_port()
        # The production overlay gets a unix stats socket, like in production.
        self.stats_address = (
            str(base / "stats.sock") if ini is not None else f"127.0.0.1:{free_port()}"
        )
        self.spool_dir = base / "spool" / "jobs"
        self.database = base / "spool" / "spoolkit.db"
        self.records = base / "records"
        self.output = base / "output"
        self.log_path = base / "uwsgi.log"
        self.extra_env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.generation = 0
        for directory in (self.spool_dir.parent, self.records, self.output):
            directory.mkdir(parents=True, exist_ok=True)

    # -- life cycle -------------------------------------------------------------------

    def __enter__(self) -> UwsgiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOLKIT_")}
        env.update(
            SPOOLKIT_HTTP=f"127.0.0.1:{self.port}",
            SPOOLKIT_STATS=self.stats_address,
            **({"SPOOLKIT_SOCKET": str(self.socket_path)} if self.socket_path else {}),
            SPOOLKIT_SPOOL_DIR=str(self.spool_dir),
            SPOOLKIT_DATABASE=str(self.database),
            SPOOLKIT_IMPORTS="tests.jobs",
            # As a deployment sets it: the dashboard signs its cookie with it.
            FLASK_SECRET_KEY="test-secret-key",
            SPOOLKIT_TEST_DIR=str(self.records),
            SPOOLKIT_HOUSEKEEPING_INTERVAL="1",
            RENDER_OUTPUT_DIR=str(self.output),
            RENDER_API_DELAY="0.05",
            PYTHONDONTWRITEBYTECODE="1",
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60) -> UwsgiServer:
        self.generation += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        log.write(f"\n===== start {self.generation} =====\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            [str(UWSGI), "--ini", f"{self.ini}:{self.section}" if self.section else str(self.ini),
             *self.extra_args],
            cwd=str(REPO),
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        try:
            wait_for(self._healthy, timeout, f"uwsgi on port {self.port} to answer /healthz")
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"uwsgi exited with {self.process.returncode}:\n{self.log_tail()}")
        try:
            return self.get("/healthz").status == 200
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Stop the master with ``sig`` and wait; SIGKILL whatever is left, by pid."""
        if self.process is None:
            return
        family = descendants(self.pid)
        if self.process.poll() is None:
            os.kill(self.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(10)
        for pid in family:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid in family:
            wait_for(lambda p=pid: not alive(p), 10, f"pid {pid} to exit")
        self.process = None

    def kill_tree(self) -> None:
        """SIGKILL the master and every process under it at once: a power cut for the software."""
        assert self.process is not None
        family = [self.pid, *descendants(self.pid)]
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)
        self.stop()

    def reload(self, timeout: float = 60) -> None:
        """Graceful reload (SIGHUP): the master re-executes itself, spoolers are killed."""
        os.kill(self.pid, signal.SIGHUP)
        before = set(self.spooler_pids())
        wait_for(
            lambda: (pids := set(self.spooler_pids())) and not pids & before and self._healthy(),
            timeout,
            "the reload to bring up new spoolers",
        )

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_since_start(self) -> str:
        """The log of this run only: what follows the last ``start()``'s marker."""
        return self.log_text().rsplit(f"===== start {self.generation} =====\n", 1)[-1]

    # -- HTTP -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Response:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if self.socket_path is not None:
            return uwsgi_request(self.socket_path, method, path, data or b"", headers)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            sent = {"Content-Type": "application/json"} if data is not None else {}
            sent.update(headers or {})
            conn.request(method, path, body=data, headers=sent)
            answer = conn.getresponse()
            return Response(answer.status, dict(answer.getheaders()), answer.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, body, **kw)

    def enqueue(self, task: str, *args: Any, **options: Any) -> str:
        """POST /jobs and return the job id (asserting 202 and the Location header)."""
        body = {"task": f"tests.jobs.{task}", "args": list(args), **options}
        response = self.post("/jobs", body)
        assert response.status == 202, response
        job_id = str(response.json()["id"])
        assert response.headers["Location"] == f"/jobs/{job_id}"
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"/jobs/{job_id}")
        assert response.status in (200, 202), response
        return dict(response.json())

    def wait_job(
        self, job_id: str, timeout: float = 30, states: Collection[str] | None = None
    ) -> dict[str, Any]:
        """Poll the job until it is in one of ``states`` (by default a final one)."""
        wanted = {state.value for state in FINISHED} if states is None else set(states)

        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["state"] in wanted else None

        return wait_for(reached, timeout, f"job {job_id} to reach {sorted(wanted)}")

    # -- looking inside -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return read_stats(self.stats_address)

    def spooler_pids(self) -> list[int]:
        try:
            return [int(s["pid"]) for s in self.stats().get("spoolers", []) if s.get("pid")]
        except OSError:
            return []

    def spooler_spawns(self) -> list[int]:
        """Pids of every spooler the master forked since the last ``start()``, in order:
        the first ones, then one per respawn."""
        return [int(pid) for pid in SPOOLER_SPAWNED.findall(self.log_since_start())]

    def spooler_deaths(self) -> int:
        """Spoolers the master saw die (and respawned) since the last ``start()``, from
        its log. (The stats socket's per-spooler ``respawns`` counter misses some.)"""
        return self.log_since_start().count("OOOPS the spooler is no more")

    def records_of(self, tag: str) -> list[dict[str, Any]]:
        path = self.records / f"{tag}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def spool_files(self) -> list[Path]:
        return sorted(
            path
            for path in self.spool_dir.rglob("uwsgi_spoolfile_on_*")
            if "quarantine" not in path.parts
        )

    def spool_files_by_job(self) -> dict[str, Path]:
        """The kit's own spool files by job id (name: ``..._spoolkit_<17-digit time>_<id>``)."""
        skip = len(OWN_PREFIX) + 18
        return {
            path.name[skip:]: path
            for path in self.spool_files()
            if path.name.startswith(OWN_PREFIX)
        }

    def spool_file_of(self, job_id: str) -> Path | None:
        return self.spool_files_by_job().get(job_id)

    def drop_spool_file(self, name: str, data: bytes) -> Path:
        """Put a file into the spool as another writer would: whole, by rename."""
        target = self.spool_dir / name
        staging = self.spool_dir / f".drop-{name}"
        staging.write_bytes(data)
        os.rename(staging, target)
        return target


def uwsgi_request(
    socket_path: Path,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> Response:
    """One request over uWSGI's own protocol on a unix socket (what nginx's uwsgi_pass speaks)."""
    path_info, _, query = path.partition("?")
    env = {
        b"REQUEST_METHOD": method.encode(), b"PATH_INFO": path_info.encode(),
        b"QUERY_STRING": query.encode(), b"SERVER_PROTOCOL": b"HTTP/1.1",
        b"SERVER_NAME": b"localhost", b"SERVER_PORT": b"80", b"HTTP_HOST": b"localhost",
        b"REMOTE_ADDR": b"127.0.0.1", b"CONTENT_LENGTH": str(len(body)).encode(),
        b"CONTENT_TYPE": b"application/json",
    }  # fmt: skip
    for name, value in (headers or {}).items():
        env[b"HTTP_" + name.upper().replace("-", "_").encode()] = value.encode()
    packet = pack_vars(env)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(socket_path))
        sock.sendall(bytes([0]) + len(packet).to_bytes(2, "little") + bytes([0]) + packet + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return Response(int(lines[0].split()[1]), headers, payload)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last block; the filler file's path."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 4096)
    return filler


def running_server(base: Path, **env: str) -> UwsgiServer:
    """``with running_server(tmp_path, SPOOLKIT_X="1") as server:`` starts and stops one."""
    return UwsgiServer(base, **env)
