"""A real nginx for the deploy tests: its configuration written into a temp dir around
a site, ``nginx -t`` on it, and the server started and stopped by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from .support import wait_for


def nginx_command(nginx: str, base: Path, site: str, workers: int = 1) -> list[str]:
    """Write ``site`` and an nginx.conf that includes it into ``base``; the command that
    runs nginx on them (in the foreground, every path under ``base``)."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "site.conf").write_text(site)
    user = "user root;" if os.geteuid() == 0 else ""  # workers must reach 0660 sockets
    temp_paths = " ".join(
        f"{kind}_temp_path {base}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (base / "nginx.conf").write_text(
        f"{user}\ndaemon off;\nworker_processes {workers};\npid {base}/nginx.pid;\n"
        f"error_log {base}/error.log;\nevents {{ worker_connections 64; }}\n"
        f"http {{ access_log {base}/access.log; {temp_paths}\n include {base}/site.conf; }}\n"
    )
    return [nginx, "-p", str(base), "-c", str(base / "nginx.conf")]


def check_config(command: list[str]) -> None:
    """``nginx -t``: the configuration is valid, or the test fails with nginx's words."""
    check = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


@contextlib.contextmanager
def running(command: list[str], port: int) -> Iterator[int]:
    """nginx started with ``command`` until it listens on ``port``; stopped by pid."""
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open(port), 15, "nginx to listen")
        yield port
    finally:
        process.send_signal(signal.SIGQUIT)  # nginx: graceful shutdown
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
