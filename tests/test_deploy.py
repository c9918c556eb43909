"""deploy/: each production file proven against the real program it configures.

nginx, systemd-analyze, shellcheck, logrotate, prometheus and promtool (package
prometheus) come from Debian (scripts/test-deps.sh installs them); hadolint
from PyPI. No container engine runs here, so the Dockerfile is linted and its
key lines checked, not built (see the README's deploy section).
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
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .nginx import check_config, nginx_command, port_open, running
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
    command = nginx_command(tool("nginx"), base, site)
    check_config(command)
    with running(command, port):
        yield port


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


# -- Prometheus: scrape config and alert rules ---------------------------------------------

PROMETHEUS = DEPLOY / "prometheus"


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    done = subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, check=False, cwd=cwd
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} is no longer in the file: update the test"
    return text.replace(old, new)


def _prometheus_config(base: Path, token: str, target: str = "localhost:80") -> Path:
    """deploy/prometheus/ laid out as installed, under ``base`` instead of /etc/prometheus,
    scraping ``target`` every second."""
    config = (PROMETHEUS / "prometheus.yml").read_text().replace("/etc/prometheus/", f"{base}/")
    config = _edit(config, '["localhost:80"]', f'["{target}"]')
    for interval in ("scrape_interval: 30s", "evaluation_interval: 30s", "scrape_timeout: 10s"):
        config = _edit(config, interval, interval.split(":")[0] + ": 1s")
    shutil.copy(PROMETHEUS / "alerts.yml", base / "spoolkit-alerts.yml")
    (base / "spoolkit.token").write_text(token + "\n")
    (base / "prometheus.yml").write_text(config)
    return base / "prometheus.yml"


def test_prometheus_config_and_alert_rules_pass_promtool(tmp_path: Path) -> None:
    config = _prometheus_config(tmp_path, "a-token")
    assert "SUCCESS: 5 rules found" in _promtool("check", "config", str(config))
    _promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in _promtool("test", "rules", "alerts_test.yml")
    # Each alert has its unit test.
    rules = (PROMETHEUS / "alerts.yml").read_text()
    tests = (PROMETHEUS / "alerts_test.yml").read_text()
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", rules, re.M))
    assert len(alerts) == 5
    assert set(re.findall(r"alertname: (\w+)$", tests, re.M)) == alerts


def _api(port: int, path: str) -> Any:
    """Prometheus's HTTP API: the answer's data (a query's: its result)."""
    answer = _http(port, "GET", path)
    assert answer.status == 200, answer
    data = answer.json()["data"]
    return data["result"] if path.startswith("/api/v1/query?") else data


def test_prometheus_scrapes_a_real_server_with_the_example_config(tmp_path: Path) -> None:
    """Debian's Prometheus, with prometheus.yml and alerts.yml as shipped (paths, target and
    interval changed), scrapes a server that demands the token, and evaluates the rules."""
    token = secrets.token_urlsafe(32)
    server = UwsgiServer(tmp_path / "server", SPOOLKIT_SPOOLERS="2", SPOOLKIT_API_TOKEN=token,
                         FLASK_SECRET_KEY=secrets.token_urlsafe(32))  # fmt: skip
    (tmp_path / "prometheus").mkdir()
    config = _prometheus_config(tmp_path / "prometheus", token, f"127.0.0.1:{server.port}")
    port = free_port()
    with server, open(tmp_path / "prometheus.log", "wb") as log:
        prometheus = subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={tmp_path / 'data'}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(lambda: port_open(port) and _http(port, "GET", "/-/ready").status == 200,
                     30, "Prometheus to be ready")  # fmt: skip

            def scraped() -> list[dict[str, Any]] | None:
                found: list[dict[str, Any]] = _api(port, "/api/v1/query?query=spoolkit_spoolers")
                return found if len(found) == 2 else None

            spoolers = wait_for(scraped, 30, "a scrape with the token")
            assert {s["metric"]["state"]: s["value"][1] for s in spoolers} == {
                "alive": "4", "configured": "4"}  # fmt: skip
            assert {s["metric"]["job"] for s in spoolers} == {"spoolkit"}  # what alerts.yml selects
            target = _api(port, "/api/v1/targets")["activeTargets"]
            assert [(t["health"], t["lastError"]) for t in target] == [("up", "")]

            # Every spoolkit_* name the rules use is one Prometheus got from the server.
            query = 'count by (__name__) ({job="spoolkit", __name__=~"spoolkit_.+"})'
            names = {s["metric"]["__name__"] for s in
                     _api(port, "/api/v1/query?query=" + quote(query))}  # fmt: skip
            used = set(re.findall(r"\bspoolkit_\w+", (PROMETHEUS / "alerts.yml").read_text()))
            assert used and used <= names, used - names

            def evaluated() -> list[dict[str, Any]] | None:
                groups = _api(port, "/api/v1/rules")["groups"]
                rules = [rule for group in groups for rule in group["rules"]]
                return rules if rules and all(r["health"] == "ok" for r in rules) else None

            rules = wait_for(evaluated, 30, "the alert rules to be evaluated")
            assert len(rules) == 5, rules
            # A healthy server meets no alert's condition.
            for rule in rules:
                found = _api(port, "/api/v1/query?query=" + quote(rule["query"]))
                assert found == [], (rule["name"], found)
        finally:
            prometheus.terminate()
            try:
                prometheus.wait(30)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait(10)


def _series(name: str, labels: dict[str, str]) -> str:
    pairs = {"job": "spoolkit", "instance": "web1:80", **labels}
    return name + "{" + ", ".join(f"{k}={json.dumps(v)}" for k, v in pairs.items()) + "}"


def test_alerts_fire_on_the_label_sets_a_real_server_exports(tmp_path: Path) -> None:
    """alerts_test.yml's series are written by hand; these come from a real scrape, held
    steady (healthy), or changed from minute 10 on into the troubles the alerts are for."""
    with UwsgiServer(tmp_path / "server") as server:
        assert server.wait_job(server.enqueue("add", 1, 2))["state"] == "succeeded"
        scrape = server.get("/metrics")
        assert scrape.status == 200, scrape
    used = set(re.findall(r"\bspoolkit_\w+", (PROMETHEUS / "alerts.yml").read_text()))
    samples = [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(scrape.body.decode())
        for sample in family.samples
        if sample.name in used
    ]
    assert {name for name, _, _ in samples} == used

    def trouble(name: str, labels: dict[str, str], value: float) -> float:
        """What each sample becomes when the alerts' troubles come."""
        if name == "spoolkit_spoolers" and labels["state"] == "alive":
            return value - 1
        if name == "spoolkit_queue_oldest_ready_seconds" and labels["queue"] == "default":
            return 3600.0
        if name == "spoolkit_housekeeper_last_pass_age_seconds":
            return 3600.0
        if name == "spoolkit_jobs_finished_total" and labels == {
            "task": "tests.jobs.add", "state": "failed"}:  # fmt: skip
            return value + 1
        return value

    def case(troubled: bool, expected: dict[str, int]) -> dict[str, Any]:
        series = [
            {"series": _series(name, labels),
             # Steady, or in trouble from minute 10 on.
             "values": f"{value}x9 {trouble(name, labels, value) if troubled else value}x30"}
            for name, labels, value in samples
        ] + [{"series": _series("up", {}), "values": "1x40"}]  # fmt: skip
        firing = 'count by (alertname) (ALERTS{alertstate="firing"})'
        return {
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [{
                "eval_time": "20m",
                "expr": firing if expected else f"{firing} or vector(0)",
                "exp_samples": [{"labels": f'{{alertname="{name}"}}', "value": count}
                                for name, count in sorted(expected.items())]
                or [{"labels": "{}", "value": 0}],
            }],
        }  # fmt: skip

    unit = {
        "rule_files": [str(PROMETHEUS / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            case(False, {}),
            case(True, {"SpoolkitSpoolersDown": 1, "SpoolkitJobsWaitingTooLong": 1,
                        "SpoolkitHousekeeperLate": 1, "SpoolkitJobsFailed": 1}),
        ],
    }  # fmt: skip
    (tmp_path / "real_test.yml").write_text(json.dumps(unit))  # JSON is YAML
    _promtool("test", "rules", "real_test.yml", cwd=tmp_path)


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
    secret = re.search(r"^FLASK_SECRET_KEY=(\S+)$", env_file.read_text(), re.M)
    assert secret is not None and len(secret.group(1)) >= 40
    assert secret.group(1) != token.group(1)
    # The whole package: the dashboard's templates and static files too.
    for name in ("templates/spoolkit/overview.html", "static/dashboard.css"):
        assert (root / "opt/spoolkit/spoolkit" / name).read_bytes() == (
            REPO / "spoolkit" / name
        ).read_bytes()
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

    # An env file from before the dashboard (no FLASK_SECRET_KEY, here not even a final
    # newline): the update adds a key and changes nothing else, once.
    old = "".join(
        line for line in env_file.read_text().splitlines(keepends=True)
        if "FLASK_SECRET_KEY" not in line and "sign-in cookie" not in line
    ).rstrip("\n")  # fmt: skip
    env_file.write_text(old)
    _install(root)
    updated = env_file.read_text()
    assert updated.startswith(old + "\n")
    assert re.fullmatch(r"# .*\nFLASK_SECRET_KEY=\S{40,}\n", updated[len(old) + 1 :])
    assert (env_file.stat().st_mode & 0o777, env_file.stat().st_gid) == (0o640, gid)
    _install(root)
    assert env_file.read_text() == updated

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
        FLASK_SECRET_KEY=settings["FLASK_SECRET_KEY"],
        PYTHONPATH=str(REPO),  # for tests.jobs (SPOOLKIT_IMPORTS); the kit comes from /opt
    )  # fmt: skip
    with server:
        assert server.get("/healthz").status == 200
        assert b"<form" in server.get("/dashboard/sign-in").body  # templates installed
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
