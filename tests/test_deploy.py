"""deploy/: each production file proven against the real program it configures.

nginx, systemd-analyze, shellcheck and logrotate come from Debian
(scripts/test-deps.sh installs them); hadolint from PyPI. No container
engine runs here, so the Dockerfile is linted and its key lines checked, not
built (see the README's deploy section).
"""

from __future__ import annotations

import configparser
import grp
import hashlib
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import REPO, UWSGI, Response, UwsgiServer, free_port, wait_for

pytestmark = pytest.mark.e2e

DEPLOY = REPO / "deploy"
PRODUCTION_INI = DEPLOY / "uwsgi-production.ini"


def tool(name: str) -> str:
    """A system tool the tests need; missing is a failure (make test installs them)."""
    found = shutil.which(name) or next(
        (path for path in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(path)), None
    )
    if found is None:
        pytest.fail(
            f"{name} is not installed: run the suite with 'make test' (scripts/test-deps.sh)"
        )
    return found


# -- the production ini, behind nginx ------------------------------------------------------


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UwsgiServer]:
    base = tmp_path_factory.mktemp("production")
    (base / "logs").mkdir()
    server = UwsgiServer(base, ini=PRODUCTION_INI, SPOOLKIT_LOG_DIR=str(base / "logs"))
    with server:
        yield server


@pytest.fixture(scope="module")
def nginx(production: UwsgiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Debian's nginx with the kit's site file, paths rewritten to a temp dir."""
    base = tmp_path_factory.mktemp("nginx")
    port = free_port()
    site = (DEPLOY / "nginx" / "spoolkit.conf").read_text()
    site = site.replace("unix:/run/spoolkit/uwsgi.sock", f"unix:{production.socket_path}")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    site = site.replace("include uwsgi_params;", "include /etc/nginx/uwsgi_params;")
    (base / "site.conf").write_text(site)
    user = "user root;" if os.geteuid() == 0 else ""  # workers must reach the 0660 socket
    temp_paths = " ".join(
        f"{kind}_temp_path {base}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (base / "nginx.conf").write_text(
        f"{user}\ndaemon off;\nworker_processes 1;\npid {base}/nginx.pid;\n"
        f"error_log {base}/error.log;\nevents {{ worker_connections 64; }}\n"
        f"http {{ access_log {base}/access.log; {temp_paths}\n include {base}/site.conf; }}\n"
    )
    command = [tool("nginx"), "-p", str(base), "-c", str(base / "nginx.conf")]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: _port_open(port), 15, "nginx to listen")
        yield port
    finally:
        process.send_signal(signal.SIGQUIT)  # nginx: graceful shutdown
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http(port: int, method: str, path: str, body: bytes | None = None) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        return Response(answer.status, dict(answer.getheaders()), answer.read())
    finally:
        conn.close()


def test_job_through_nginx_round_trip(production: UwsgiServer, nginx: int) -> None:
    created = _http(
        nginx, "POST", "/jobs", json.dumps({"task": "tests.jobs.add", "args": [20, 22]}).encode()
    )
    assert created.status == 202, created
    location = created.headers["Location"]
    assert created.headers["Cache-Control"] == "no-store"

    def finished() -> dict[str, object] | None:
        answer = _http(nginx, "GET", location)
        return answer.json() if answer.status == 200 else None

    job = wait_for(finished, 20, "the job to finish through nginx")
    assert job["state"] == "succeeded"
    assert job["result"] == 42
    assert _http(nginx, "GET", "/healthz").status == 200


def test_nginx_refuses_big_bodies_with_a_json_error(nginx: int) -> None:
    answer = _http(
        nginx, "POST", "/jobs", b'{"task": "x", "args": ["' + b"x" * (1024 * 1024) + b'"]}'
    )
    assert answer.status == 413
    assert answer.json() == {"error": "request body too large"}


def test_production_ini_serves_on_its_socket_with_stats_and_log_files(
    production: UwsgiServer,
) -> None:
    assert production.socket_path is not None
    assert production.socket_path.stat().st_mode & 0o777 == 0o660
    assert production.get("/healthz").status == 200
    job = production.wait_job(production.enqueue("add", 1, 2))
    assert job["result"] == 3
    stats = production.stats()
    assert len(stats["spoolers"]) == 4  # two queues, default and slow, two spoolers each
    assert {os.path.basename(s["dir"]) for s in stats["spoolers"]} == {"jobs", "slow"}
    assert all(spooler["pid"] > 0 for spooler in stats["spoolers"])
    assert len(stats["workers"]) == 2
    logs = production.base / "logs"
    wait_for(
        lambda: f"job {job['id']} succeeded" in (logs / "uwsgi.log").read_text(),
        10,
        "the job log line",
    )
    assert "POST /jobs" in (logs / "requests.log").read_text()
    assert "POST /jobs" not in (logs / "uwsgi.log").read_text()


def test_production_ini_only_adds_to_the_shared_section() -> None:
    """Tuning lives in uwsgi.ini [spoolkit]; the overlay must not redefine those knobs."""
    tuned = {
        "processes",
        "spooler-processes",
        "spooler-frequency",
        "spooler-harakiri",
        "harakiri",
        "mule",
    }
    overlay = {
        line.split("=", 1)[0].strip()
        for line in PRODUCTION_INI.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith(";")
    }
    assert not tuned & overlay
    assert "ini" in overlay and "socket" in overlay and "http-socket" not in overlay


# -- stop signals and readiness: the claims the unit file's comments make ---------------


def test_sigint_stops_but_sigquit_reloads_with_die_on_term(tmp_path: Path) -> None:
    server = UwsgiServer(tmp_path)
    server.start()
    try:
        before = set(server.spooler_pids())
        os.kill(server.pid, signal.SIGQUIT)
        wait_for(lambda: (pids := set(server.spooler_pids())) and not pids & before, 30, "a reload")
        assert server.process is not None and server.process.poll() is None  # still running
        os.kill(server.pid, signal.SIGINT)
        assert server.process.wait(30) is not None
    finally:
        server.stop()


def test_type_notify_readiness_reaches_systemd(tmp_path: Path) -> None:
    notify = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(60)
    server = UwsgiServer(tmp_path / "srv", NOTIFY_SOCKET=str(notify))
    try:
        server.start()
        messages = []
        while not any(b"READY=1" in message for message in messages):
            messages.append(listener.recv(4096))
        assert any(b"READY=1" in message for message in messages)
    finally:
        server.stop()
        listener.close()


# -- systemd unit --------------------------------------------------------------------------


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / "spoolkit.service")
    return parser


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    text = (DEPLOY / "systemd" / "spoolkit.service").read_text()
    # verify checks that ExecStart exists: point it at this checkout's uwsgi.
    (tmp_path / "spoolkit.service").write_text(
        text.replace("/opt/spoolkit/.venv/bin/uwsgi", str(UWSGI))
    )
    done = subprocess.run(
        [tool("systemd-analyze"), "verify", str(tmp_path / "spoolkit.service")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    # It exits 0 on unknown keys and bad values, only warning: demand silence.
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""


def test_unit_settings_that_matter() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["KillSignal"] == "SIGINT"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"].endswith("--ini /opt/spoolkit/deploy/uwsgi-production.ini")
    assert service["User"] == "spoolkit"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert service["Restart"] == "on-failure"
    assert service["RuntimeDirectory"] == "spoolkit"
    assert service["LimitNICE"] == "+0"  # what lets SPOOLKIT_SPOOLER_NICE below 19 work
    writable = service["ReadWritePaths"].split()
    # Every path the service writes is writable under ProtectSystem=strict.
    env = dict(
        line.split("=", 1)
        for line in (DEPLOY / "spoolkit.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    socket_path = re.search(r"^socket = (\S+)", PRODUCTION_INI.read_text(), re.M)
    assert socket_path is not None
    for path in (env["SPOOLKIT_SPOOL_DIR"], env["SPOOLKIT_DATABASE"], env["RENDER_OUTPUT_DIR"],
                 socket_path.group(1), "/var/log/spoolkit/uwsgi.log"):  # fmt: skip
        assert any(path.startswith(root + "/") for root in writable), path
    # The niceness spoolkit.env asks for is one the unit's RLIMIT_NICE allows.
    assert int(service["LimitNICE"]) <= int(env["SPOOLKIT_SPOOLER_NICE"]) <= 19


# -- logrotate -----------------------------------------------------------------------------


def test_logrotate_config_rotates_with_copytruncate(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "uwsgi.log").write_text("line\n" * 100)
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    config = (DEPLOY / "logrotate" / "spoolkit").read_text()
    config = config.replace("/var/log/spoolkit", str(logs)).replace(
        "su spoolkit spoolkit", f"su {user} {group}"
    )
    (tmp_path / "spoolkit").write_text(config)
    done = subprocess.run(
        [tool("logrotate"), "-f", "-s", str(tmp_path / "state"), str(tmp_path / "spoolkit")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (logs / "uwsgi.log.1").read_text() == "line\n" * 100
    assert (logs / "uwsgi.log").read_text() == ""  # truncated in place, never moved


# -- install.sh ----------------------------------------------------------------------------


def _throwaway_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        shutil.copy(f"/etc/{name}", root / "etc" / name)
    return root


def _install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(DEPLOY / "install.sh"), "--root", str(root), *args],
        capture_output=True, text=True, check=True, env=env, timeout=600,
    )  # fmt: skip


def _manifest(root: Path) -> dict[str, tuple[int, int, int, str]]:
    found = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if relative.startswith("opt/spoolkit/.venv/") or "__pycache__" in relative:
            continue
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        found[relative] = (info.st_mode, info.st_uid, info.st_gid, digest)
    return found


def _ids(root: Path) -> tuple[int, int]:
    user = next(
        line
        for line in (root / "etc/passwd").read_text().splitlines()
        if line.startswith("spoolkit:")
    )
    group = next(
        line
        for line in (root / "etc/group").read_text().splitlines()
        if line.startswith("spoolkit:")
    )
    return int(user.split(":")[2]), int(group.split(":")[2])


def test_install_sh_is_shellcheck_clean() -> None:
    done = subprocess.run(
        [tool("shellcheck"), str(DEPLOY / "install.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout


def test_install_sh_dry_run_prints_commands_and_changes_nothing(tmp_path: Path) -> None:
    root = _throwaway_root(tmp_path)
    before = _manifest(root)
    out = _install(root, "--dry-run").stdout
    assert f"+ install -d -m 0755 {root}/opt/spoolkit" in out
    assert "+ groupadd --system --prefix" in out
    assert _manifest(root) == before


def test_install_sh_installs_idempotently_and_the_result_runs(tmp_path: Path) -> None:
    root = _throwaway_root(tmp_path)
    _install(root)
    uid, gid = _ids(root)
    state = root / "var/lib/spoolkit"
    assert (state.stat().st_mode & 0o777, state.stat().st_uid, state.stat().st_gid) == (
        0o700,
        uid,
        gid,
    )
    env_file = root / "etc/spoolkit/spoolkit.env"
    assert (env_file.stat().st_mode & 0o777, env_file.stat().st_gid) == (0o640, gid)
    token = re.search(r"^SPOOLKIT_API_TOKEN=(\S+)$", env_file.read_text(), re.M)
    assert token is not None and len(token.group(1)) >= 40
    unit = root / "etc/systemd/system/spoolkit.service"
    assert unit.read_text() == (DEPLOY / "systemd/spoolkit.service").read_text()
    assert (root / "opt/spoolkit/.venv/bin/uwsgi").exists()
    assert "www-data" in next(
        line
        for line in (root / "etc/group").read_text().splitlines()
        if line.startswith("spoolkit:")
    )
    first = _manifest(root)
    _install(root)
    assert _manifest(root) == first  # same files, modes, owners and contents; token kept

    # The installed tree runs: production overlay, env file, paths under the root.
    settings = dict(
        line.split("=", 1)
        for line in env_file.read_text().splitlines()
        if line and not line.startswith("#")
    )
    server = UwsgiServer(
        tmp_path / "run", ini=root / "opt/spoolkit/deploy/uwsgi-production.ini",
        SPOOLKIT_SPOOL_DIR=str(root) + settings["SPOOLKIT_SPOOL_DIR"],
        SPOOLKIT_DATABASE=str(root) + settings["SPOOLKIT_DATABASE"],
        SPOOLKIT_API_TOKEN=settings["SPOOLKIT_API_TOKEN"],
        PYTHONPATH=str(REPO),  # for tests.jobs (SPOOLKIT_IMPORTS); the kit comes from /opt
    )  # fmt: skip
    with server:
        assert server.get("/healthz").status == 200
        assert server.get("/jobs").status == 401  # the generated token is in force
        assert "spool_dir" not in server.get("/healthz").json()  # paths: token holders only
        token = {"Authorization": f"Bearer {settings['SPOOLKIT_API_TOKEN']}"}
        health = server.get("/healthz", headers=token).json()
        assert health["spool_dir"] == str(root / "var/lib/spoolkit/jobs")


def test_install_sh_uninstall_keeps_data_unless_purged(tmp_path: Path) -> None:
    root = _throwaway_root(tmp_path)
    _install(root)
    (root / "var/lib/spoolkit/spoolkit.db").write_text("jobs")
    _install(root, "--uninstall")
    assert not (root / "opt/spoolkit").exists()
    assert not (root / "etc/systemd/system/spoolkit.service").exists()
    assert (root / "var/lib/spoolkit/spoolkit.db").read_text() == "jobs"
    assert (root / "etc/spoolkit/spoolkit.env").exists()
    assert "spoolkit:" in (root / "etc/passwd").read_text()
    _install(root, "--uninstall", "--purge")
    assert not (root / "var/lib/spoolkit").exists()
    assert not (root / "etc/spoolkit").exists()
    assert "spoolkit:" not in (root / "etc/passwd").read_text()
    assert "spoolkit:" not in (root / "etc/group").read_text()


# -- Dockerfile (no container engine here: lint and key lines) -------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    done = subprocess.run(
        [str(hadolint), str(DEPLOY / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_key_lines() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?", text, re.M)
    assert len(stages) == 2 and stages[0][1] == "build"
    assert "COPY --from=build /opt/venv /opt/venv" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)  # non-root, numeric
    assert re.search(r'^CMD \["uwsgi", "--ini", "/opt/spoolkit/uwsgi.ini"\]$', text, re.M)
    assert re.search(r"^STOPSIGNAL SIGINT$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.M)
    assert 'VOLUME ["/var/lib/spoolkit"]' in text
    assert "SPOOLKIT_SPOOL_DIR=/var/lib/spoolkit/jobs" in text
    assert "SPOOLKIT_DATABASE=/var/lib/spoolkit/spoolkit.db" in text
    assert "WITHOUT the same volume has\n# !!! lost every queued" in text
    # Everything the image copies exists and is not excluded by .dockerignore.
    ignore = (REPO / ".dockerignore").read_text()
    for source in ("app.py", "tasks.py", "uwsgi.ini", "requirements.txt", "spoolkit"):
        assert (REPO / source).exists()
        assert f"!{source}" in ignore


def test_dockerfile_healthcheck_command_tells_up_from_down(tmp_path: Path) -> None:
    command = re.search(r'CMD \["python", "-c", "(.+)"\]\n', (DEPLOY / "Dockerfile").read_text())
    assert command is not None
    server = UwsgiServer(tmp_path)
    probe = command.group(1).replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
    with server:
        assert (
            subprocess.run([sys.executable, "-c", probe], check=False, timeout=30).returncode == 0
        )
    down = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, check=False, timeout=30
    )
    assert down.returncode != 0
