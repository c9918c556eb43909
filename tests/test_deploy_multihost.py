"""deploy/multihost/: the multi-host layout proven against the programs it configures.

systemd-analyze verifies both units; nginx -t checks the upstream site, and a real
nginx runs it in front of two web nodes (the production ini's ``[web]`` section on
a TCP uwsgi socket) while two spooler nodes run the jobs. The database is a real
PostgreSQL (tests/pg.py's server, here also on 127.0.0.1 with TLS) set up with
``database.sql`` and ``pg_hba.conf`` as they are, reached with the env example's
address (``sslmode=verify-full``, a SCRAM password). The files' host names and
addresses are rewritten to ports on 127.0.0.1; everything binds there only.

The end-to-end tests share one set of nodes, in this order: the last one kills a
spooler node for good.
"""

from __future__ import annotations

import configparser
import contextlib
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
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from flask import Flask
from psycopg import sql

from bench.common import descendants, free_port, wait_for
from spoolkit.config import Config, load_config
from spoolkit.states import FINISHED

from .nginx import check_config, nginx_command, running
from .pg import FAST, PORT, PostgresCluster
from .support import REPO, UWSGI, Response, UwsgiServer
from .test_deploy import tool

pytestmark = pytest.mark.e2e

DEPLOY = REPO / "deploy"
MULTIHOST = DEPLOY / "multihost"
PRODUCTION_INI = DEPLOY / "uwsgi-production.ini"
ENV_EXAMPLE = MULTIHOST / "spoolkit.env.example"
SITE = MULTIHOST / "nginx-upstream.conf"
UNITS = {"web": MULTIHOST / "spoolkit-web.service",
         "spooler": MULTIHOST / "spoolkit-spooler.service"}  # fmt: skip
FINAL = {state.value for state in FINISHED}
#: Seconds of silence after which a node is taken for dead, on every test node.
NODE_TIMEOUT = 6


# -- the env example -----------------------------------------------------------------------


def _assignments(text: str) -> dict[str, str]:
    """Every ``NAME=value`` line, commented out (``#NAME=value``) or not."""
    return dict(re.findall(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))


def _active(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))


def test_env_example_names_only_real_settings() -> None:
    text = ENV_EXAMPLE.read_text()
    kit = {"SPOOLKIT_" + field.name.upper() for field in fields(Config)}
    inis = (REPO / "uwsgi.ini").read_text() + PRODUCTION_INI.read_text()
    read_by_uwsgi = set(re.findall(r"^if-(?:not-)?env = (SPOOLKIT_\w+)$", inis, re.M))
    assert {"SPOOLKIT_SOCKET", "SPOOLKIT_SPOOL_DIR", "SPOOLKIT_LOG_DIR"} <= read_by_uwsgi
    named = set(re.findall(r"\bSPOOLKIT_[A-Z0-9_]+", text))
    assert named, "no SPOOLKIT_* name found"
    assert named - kit - read_by_uwsgi == set()
    # Every line is a comment, blank, or NAME=value as systemd's EnvironmentFile reads it.
    for line in text.splitlines():
        assert not line or line.startswith("#") or re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", line), line
    # The settings the roles need are set, not left commented.
    assert {"SPOOLKIT_DATABASE", "SPOOLKIT_NODE", "SPOOLKIT_API_TOKEN", "FLASK_SECRET_KEY",
            "SPOOLKIT_SOCKET"} <= _active(text).keys()  # fmt: skip


def test_env_example_values_are_accepted_by_the_kit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kit setting in the file, uncommented, goes through the kit's own parsing."""
    values = {name: value for name, value in _assignments(ENV_EXAMPLE.read_text()).items()
              if name.startswith("SPOOLKIT_")}  # fmt: skip
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    config = load_config(Flask("env_example"))
    assert config.uses_postgres
    assert config.node == values["SPOOLKIT_NODE"]
    assert config.node_timeout == float(values["SPOOLKIT_NODE_TIMEOUT"])
    query = dict(parse_qsl(urlsplit(values["SPOOLKIT_DATABASE"]).query))
    assert query["sslmode"] == "verify-full"
    assert query["sslrootcert"].startswith("/etc/spoolkit/")


def test_the_address_role_and_database_names_agree() -> None:
    """The env example's user and database are the ones database.sql creates and
    pg_hba.conf admits."""
    address = urlsplit(_active(ENV_EXAMPLE.read_text())["SPOOLKIT_DATABASE"])
    user, database = address.username, address.path.lstrip("/")
    script = (MULTIHOST / "database.sql").read_text()
    assert f"CREATE ROLE {user} LOGIN;" in script
    assert f"CREATE DATABASE {database} OWNER {user};" in script
    hba = [line.split() for line in (MULTIHOST / "pg_hba.conf").read_text().splitlines()
           if line and not line.startswith("#")]  # fmt: skip
    assert hba[0][:3] == ["hostssl", database, user] and hba[0][4] == "scram-sha-256"
    assert all(entry[-1] in {"scram-sha-256", "reject"} for entry in hba)


# -- the systemd units ---------------------------------------------------------------------


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


@pytest.mark.parametrize("role", sorted(UNITS))
def test_systemd_analyze_verify_accepts_the_unit(role: str, tmp_path: Path) -> None:
    text = UNITS[role].read_text()
    # verify checks that ExecStart exists: point it at this checkout's uwsgi.
    (tmp_path / UNITS[role].name).write_text(
        text.replace("/opt/spoolkit/.venv/bin/uwsgi", str(UWSGI))
    )
    done = subprocess.run(
        [tool("systemd-analyze"), "verify", str(tmp_path / UNITS[role].name)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    # It exits 0 on unknown keys and bad values, only warning: demand silence.
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""


#: What both roles keep exactly as the single-host unit has it.
SAME = ("Type", "NotifyAccess", "User", "Group", "WorkingDirectory", "EnvironmentFile",
        "ExecReload", "KillSignal", "TimeoutStopSec", "SendSIGKILL", "Restart",
        "RuntimeDirectory", "RuntimeDirectoryMode", "LogsDirectory", "LogsDirectoryMode",
        "UMask", "NoNewPrivileges", "ProtectSystem", "PrivateTmp", "PrivateDevices",
        "ProtectHome", "ProtectKernelTunables", "ProtectKernelModules",
        "ProtectControlGroups", "RestrictSUIDSGID", "LockPersonality",
        "RestrictAddressFamilies")  # fmt: skip


def test_units_differ_from_the_single_host_one_only_by_role() -> None:
    single_unit = _unit(DEPLOY / "systemd" / "spoolkit.service")
    single = single_unit["Service"]
    web, spooler = (_unit(UNITS[role]) for role in ("web", "spooler"))
    for unit in (web, spooler):
        for key in SAME:
            assert unit["Service"][key] == single[key], key
        # install.sh copies README.md to /opt/spoolkit, not deploy/multihost/.
        assert unit["Unit"]["Documentation"] == single_unit["Unit"]["Documentation"]
        # Started after the network, retried for as long as the database is away.
        assert unit["Unit"]["After"] == "network-online.target"
        assert unit["Unit"]["StartLimitIntervalSec"] == "0"
    assert spooler["Service"]["ExecStart"] == single["ExecStart"]
    assert web["Service"]["ExecStart"] == single["ExecStart"] + ":web"
    for key in ("StateDirectory", "StateDirectoryMode", "ReadWritePaths", "LimitNICE"):
        assert spooler["Service"][key] == single[key], key
    # A web node keeps nothing on disk: no state directory, nothing writable but
    # the sockets' and the logs' directories.
    assert "StateDirectory" not in web["Service"] and "LimitNICE" not in web["Service"]
    assert web["Service"]["ReadWritePaths"].split() == ["/var/log/spoolkit", "/run/spoolkit"]
    # Every path a node writes is writable under ProtectSystem=strict.
    stats = re.search(r"^stats = (\S+)", PRODUCTION_INI.read_text(), re.M)
    assert stats is not None
    env = _assignments(ENV_EXAMPLE.read_text())
    spooler_paths = [env[name] for name in ("SPOOLKIT_SPOOL_DIR", "SPOOLKIT_SLOW_SPOOL_DIR",
                                            "RENDER_OUTPUT_DIR", "SPOOLKIT_LOG_DIR")]  # fmt: skip
    for unit, paths in ((web, [stats.group(1), env["SPOOLKIT_LOG_DIR"]]),
                        (spooler, [stats.group(1), *spooler_paths])):  # fmt: skip
        writable = unit["Service"]["ReadWritePaths"].split()
        for path in paths:
            assert any(path.startswith(root + "/") or path == root for root in writable), path


# -- nginx ---------------------------------------------------------------------------------

UPSTREAM_SERVER = re.compile(r"^(\s*server )(\S+\.internal:3031)( [^;\n]*);$", re.M)


def _site(upstreams: Sequence[str], port: int, edits: Sequence[tuple[str, str]] = ()) -> str:
    """The site file with its web nodes replaced by ``upstreams`` (host:port on
    127.0.0.1), listening on ``port``; each ``(old, new)`` edit must apply."""
    text = SITE.read_text()
    found = UPSTREAM_SERVER.findall(text)
    assert len(found) >= 2, "the upstream lists no web node"
    indent, _, params = found[0]
    lines = "\n".join(f"{indent}{address}{params};" for address in upstreams)
    text = UPSTREAM_SERVER.sub("", text).replace(
        "upstream spoolkit_web {", "upstream spoolkit_web {\n" + lines, 1
    )
    edits = (("listen 80;", f"listen 127.0.0.1:{port};"),
             ("include uwsgi_params;", "include /etc/nginx/uwsgi_params;"), *edits)  # fmt: skip
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return text


def _nginx_command(base: Path, site: str) -> list[str]:
    return nginx_command(tool("nginx"), base, site, workers=2)


@contextlib.contextmanager
def _nginx(base: Path, site: str) -> Iterator[int]:
    """A real nginx with ``site``; yields its port. Stopped by pid."""
    port = int(re.findall(r"listen 127\.0\.0\.1:(\d+);", site)[0])
    command = _nginx_command(base, site)
    check_config(command)
    with running(command, port):
        yield port


def test_nginx_accepts_the_upstream_site(tmp_path: Path) -> None:
    port = free_port()
    site = _site([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], port)
    check_config(_nginx_command(tmp_path, site))
    text = SITE.read_text()
    # The limits are the single-host site's.
    single = (DEPLOY / "nginx" / "spoolkit.conf").read_text()
    for line in (
        "client_max_body_size 1m;",
        "uwsgi_connect_timeout 5s;",
        "uwsgi_send_timeout 35s;",
        "uwsgi_read_timeout 35s;",
        'add_header Cache-Control "no-store" always;',
        "error_page 413 = @too_large;",
    ):
        assert line in single and line in text, line
    # A POST that reached a node is never sent to another (see the timeout test).
    assert "uwsgi_next_upstream error timeout;" in text
    assert not re.search(r"^\s*uwsgi_next_upstream .*non_idempotent", text, re.M)


def _http(port: int, method: str, path: str, body: object = None,
          headers: dict[str, str] | None = None, timeout: float = 60) -> Response:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent = {"Content-Type": "application/json"} if body is not None else {}
        sent.update(headers or {})
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=sent)
        answer = conn.getresponse()
        return Response(answer.status, dict(answer.getheaders()), answer.read())
    finally:
        conn.close()


# -- PostgreSQL over TLS, as database.sql and pg_hba.conf set it up ------------------------


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run([tool("openssl"), *args], cwd=cwd, capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr


def _make_certificates(where: Path) -> None:
    """A CA, a server certificate it signs for 127.0.0.1, and another CA."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt",
                 "-days", "2", "-subj", f"/CN=spoolkit test {name}", cwd=where)  # fmt: skip
    _openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=where)  # fmt: skip
    (where / "server.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.crt",
             cwd=where)  # fmt: skip


class TlsCluster(PostgresCluster):
    """tests/pg.py's server (its unix socket, with trust, for the harness) that also
    listens on 127.0.0.1:``port`` with TLS and ``files/pg_hba.conf``."""

    def __init__(self, port: int, files: Path) -> None:
        super().__init__(FAST)
        self.port = port
        self.files = files

    def _command(self, program: str, *args: str) -> list[str]:
        command = super()._command(program, *args)
        if program != "postgres":
            return command
        # After the harness's own -c options: the last one given wins.
        extra = {"listen_addresses": "127.0.0.1", "port": str(self.port), "ssl": "on",
                 "ssl_cert_file": str(self.files / "server.crt"),
                 "ssl_key_file": str(self.files / "server.key"),
                 "hba_file": str(self.files / "pg_hba.conf")}  # fmt: skip
        return [*command, *(arg for item in extra.items() for arg in ("-c", "=".join(item)))]

    def dsn(self, dbname: str = "postgres") -> str:
        return super().dsn(dbname).replace(f"&port={PORT}", f"&port={self.port}")


@dataclass
class Database:
    cluster: TlsCluster
    #: SPOOLKIT_DATABASE: the env example's, pointed at this server and CA.
    dsn: str
    password: str
    files: Path

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """The superuser, on the unix socket, in the kit's database."""
        return self.cluster.connect("spoolkit")


def _address(password: str, port: int, rootcert: Path) -> str:
    """The env example's SPOOLKIT_DATABASE with this server's port, password and CA."""
    example = urlsplit(_active(ENV_EXAMPLE.read_text())["SPOOLKIT_DATABASE"])
    query = dict(parse_qsl(example.query))
    query["sslrootcert"] = str(rootcert)
    netloc = f"{example.username}:{quote(password, safe='')}@127.0.0.1:{port}"
    return urlunsplit(example._replace(netloc=netloc, query=urlencode(query)))


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
    # Readable by the server's user (nobody when the tests run as root).
    files = Path(tempfile.mkdtemp(prefix="spoolkit-tls-"))
    try:
        files.chmod(0o755)
        _make_certificates(files)
        hba = (MULTIHOST / "pg_hba.conf").read_text().replace("10.0.1.0/24", "127.0.0.1/32")
        # The harness's own way in: the superuser on the unix socket.
        (files / "pg_hba.conf").write_text(hba + "local all postgres trust\n")
        for name in ("server.crt", "pg_hba.conf"):
            (files / name).chmod(0o644)
        (files / "server.key").chmod(0o600)
        if os.geteuid() == 0:
            entry = pwd.getpwnam("nobody")
            os.chown(files / "server.key", entry.pw_uid, entry.pw_gid)
        port = free_port()
        cluster = TlsCluster(port, files)
        with cluster:
            assert cluster.bin_dir is not None
            done = subprocess.run(
                [str(cluster.bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                 "-f", str(MULTIHOST / "database.sql"), cluster.dsn()],
                capture_output=True, text=True, check=False, env={"PATH": "/usr/bin:/bin"},
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            # Punctuation that must be percent-encoded in the address, on purpose.
            password = "p@ss:w/rd%" + secrets.token_hex(8)
            with cluster.connect() as conn:
                conn.execute(sql.SQL("ALTER ROLE spoolkit PASSWORD {}").format(password))
            yield Database(cluster, _address(password, port, files / "ca.crt"), password, files)
    finally:
        shutil.rmtree(files, ignore_errors=True)


def _with(dsn: str, **query: str) -> str:
    """``dsn`` with these query parameters changed."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(query=urlencode({**dict(parse_qsl(parts.query)), **query})))


def _refused(dsn: str) -> str:
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(dsn, connect_timeout=10).close()
    return str(refused.value)


def test_the_database_admits_only_the_kits_role_over_verified_tls(database: Database) -> None:
    dsn = database.dsn
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        used = conn.execute(
            "SELECT ssl, current_user, current_database() FROM pg_stat_ssl "
            "WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert used == (True, "spoolkit", "spoolkit")
    parts = urlsplit(dsn)
    plain = _with(dsn, sslmode="disable")
    assert "rejects connection" in _refused(plain) and "no encryption" in _refused(plain)
    wrong_password = parts._replace(netloc=f"spoolkit:nope@127.0.0.1:{database.cluster.port}")
    assert "password authentication failed" in _refused(urlunsplit(wrong_password))
    other_database = parts._replace(path="/postgres")
    assert "rejects connection" in _refused(urlunsplit(other_database))
    superuser = parts._replace(netloc=f"postgres@127.0.0.1:{database.cluster.port}")
    assert "rejects connection" in _refused(urlunsplit(superuser))
    # verify-full checks the certificate's issuer and the host name it names.
    other_ca = _with(dsn, sslrootcert=str(database.files / "other-ca.crt"))
    assert "certificate verify failed" in _refused(other_ca)
    by_name = parts._replace(netloc=parts.netloc.replace("@127.0.0.1:", "@localhost:"))
    assert "does not match host name" in _refused(urlunsplit(by_name))
    with database.cluster.connect() as conn:
        role = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, "
            "left(rolpassword, 14) FROM pg_authid WHERE rolname = 'spoolkit'"
        ).fetchone()
    assert role == (False, False, False, False, False, "SCRAM-SHA-256$")


# -- the nodes -----------------------------------------------------------------------------


class WebNode(UwsgiServer):
    """``uwsgi --ini deploy/uwsgi-production.ini:web`` with ``SPOOLKIT_SOCKET`` on TCP,
    as nginx reaches a web node. The harness itself talks HTTP to an extra
    http-socket (``self.port``)."""

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        super().__init__(base, ini=PRODUCTION_INI, section="web")
        self.extra_env.update(env)
        self.socket_path = None
        self.uwsgi_port = free_port()
        self.extra_env["SPOOLKIT_SOCKET"] = f"127.0.0.1:{self.uwsgi_port}"
        self.extra_args = ("--http-socket", f"127.0.0.1:{self.port}")


def test_a_node_exits_when_the_database_is_away_at_start(database: Database,
                                                         tmp_path: Path) -> None:  # fmt: skip
    """What the units' Restart=on-failure and StartLimitIntervalSec=0 are for: the
    app checks the schema before uWSGI forks, and uWSGI gives up without it."""
    parts = urlsplit(database.dsn)
    away = urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0] + f":{free_port()}"))
    node = WebNode(tmp_path / "web", {"SPOOLKIT_DATABASE": away, "SPOOLKIT_NODE": "early"})
    with pytest.raises(AssertionError, match=r"uwsgi exited with [1-9]") as exited:
        node.start(timeout=30)
    assert "Connection refused" in str(exited.value)
    assert database.password not in node.log_text()


@dataclass
class Nodes:
    web: list[WebNode]
    spoolers: list[UwsgiServer]
    #: Where every node's test tasks record their runs (one directory for all).
    records: Path

    def all(self) -> list[UwsgiServer]:
        return [*self.web, *self.spoolers]

    def records_of(self, tag: str) -> list[dict[str, object]]:
        path = self.records / f"{tag}.jsonl"
        text = path.read_text() if path.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line]

    def ran_on(self, pid: int) -> UwsgiServer:
        """The spooler node whose process ``pid`` is."""
        for node in self.spoolers:
            if node.process is not None and pid in descendants(node.pid):
                return node
        raise AssertionError(f"pid {pid} is in no running spooler node")


@pytest.fixture(scope="module")
def nodes(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    base = tmp_path_factory.mktemp("multihost")
    records = base / "records"
    records.mkdir()
    common = {"SPOOLKIT_DATABASE": database.dsn, "SPOOLKIT_TEST_DIR": str(records),
              "SPOOLKIT_NODE_TIMEOUT": str(NODE_TIMEOUT)}  # fmt: skip
    web = [WebNode(base / name, {**common, "SPOOLKIT_NODE": name}) for name in ("web1", "web2")]
    spoolers = []
    for name in ("spool1", "spool2"):
        spoolers.append(UwsgiServer(base / name, ini=PRODUCTION_INI))
        spoolers[-1].extra_env.update(common, SPOOLKIT_NODE=name)
    found = Nodes(web, spoolers, records)
    try:
        # A web node first, on an empty database: the role creates the schema.
        for node in found.all():
            node.start()
        yield found
    finally:
        for node in found.all():
            node.stop()


@dataclass
class Front:
    """The nginx in front of the web nodes."""

    port: int
    base: Path


@pytest.fixture(scope="module")
def front(nodes: Nodes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """nginx with the upstream site over the two web nodes."""
    site = _site([f"127.0.0.1:{node.uwsgi_port}" for node in nodes.web], free_port())
    base = tmp_path_factory.mktemp("front")
    with _nginx(base, site) as port:
        yield Front(port, base)


def _job(port: int, job_id: str) -> dict[str, object] | None:
    answer = _http(port, "GET", f"/jobs/{job_id}")
    assert answer.status in (200, 202), answer
    job: dict[str, object] = answer.json()
    return job if job["state"] in FINAL else None


def test_jobs_posted_through_nginx_run_on_the_spooler_nodes(
    database: Database, nodes: Nodes, front: Front
) -> None:
    created = []
    for i in range(12):
        answer = _http(
            front.port, "POST", "/jobs", {"task": "tests.jobs.mark", "args": [f"run-{i}"]}
        )
        assert answer.status == 202, answer
        created.append(answer.json()["id"])
    for job_id in created:
        job = wait_for(partial(_job, front.port, job_id), 30, f"job {job_id} to finish")
        assert job["state"] == "succeeded", job
    # Every web node took requests; every job ran in a spooler node's spooler.
    for web in nodes.web:
        assert "POST /jobs" in web.log_text(), web.base.name
    ran = {nodes.ran_on(int(str(nodes.records_of(f"run-{i}")[0]["pid"]))).base.name
           for i in range(12)}  # fmt: skip
    assert ran <= {"spool1", "spool2"}
    # A web node writes no spool file (its unit has no state directory).
    for web in nodes.web:
        assert list((web.base / "spool").iterdir()) == []
    # The password is in no log (encoded or not).
    for node in nodes.all():
        log = node.log_text()
        assert "spoolkit:***@127.0.0.1" in log
        assert database.password not in log and quote(database.password, safe="") not in log
    # The kit's tables belong to its role.
    with database.admin() as conn:
        owners = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE tablename LIKE 'spoolkit%'"
        ).fetchall()
    assert owners == [("spoolkit",)]


def test_healthz_on_any_node_lists_every_node(database: Database, nodes: Nodes,
                                              front: Front) -> None:  # fmt: skip
    def all_listed() -> dict[str, dict[str, object]] | None:
        answer = _http(front.port, "GET", "/healthz")
        assert answer.status == 200, answer
        listed = {str(node["id"]): node for node in answer.json()["nodes"]}
        return listed if len(listed) == 4 else None

    listed = wait_for(all_listed, 20, "every node in /healthz")
    assert set(listed) == {"web1", "web2", "spool1", "spool2"}
    for name in ("spool1", "spool2"):
        assert listed[name]["spoolers"] == {"alive": 4, "configured": 4}
    for name in ("web1", "web2"):
        assert listed[name]["spoolers"] == {"alive": 0, "configured": 0}
    for node in nodes.web:
        health = node.get("/healthz")
        assert health.json()["node"] == {"id": node.base.name, "role": "web"}
        assert database.password not in health.body.decode()


def test_nginx_passes_over_a_stopped_web_node(nodes: Nodes, front: Front) -> None:
    """A refused connection sends even a POST to the other node: it never reached one."""
    stopped = nodes.web[1]
    stopped.stop(signal.SIGINT)  # what systemctl stop sends
    try:
        for i in range(6):
            answer = _http(front.port, "POST", "/jobs", {"task": "tests.jobs.add", "args": [i, 1]})
            assert answer.status == 202, answer
    finally:
        stopped.start()
    errors = (front.base / "error.log").read_text()
    assert f"127.0.0.1:{stopped.uwsgi_port}" in errors and "Connection refused" in errors


class Silent:
    """A TCP listener that reads each request and never answers: a web node that
    hangs once it has the request (stuck, or its answer lost on the way)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = int(self.listener.getsockname()[1])
        self.methods: list[str] = []
        self._held: list[socket.socket] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._done.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            data = b""
            with contextlib.suppress(OSError):
                while len(data) < 4 or len(data) < 4 + int.from_bytes(data[1:3], "little"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            method = re.search(rb"REQUEST_METHOD..([A-Z]+)", data, re.S)
            self.methods.append(method.group(1).decode() if method else "?")
            self._held.append(conn)

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self.listener.close()


def test_a_post_that_timed_out_is_not_sent_to_another_node(
    database: Database, nodes: Nodes, tmp_path: Path
) -> None:
    """Upstream: a node that takes requests and never answers, and a real one. nginx
    gives up on the silent one after the read timeout (here 2 s): a GET then goes to
    the other node, a POST does not (the silent one may have recorded the job). The
    client's retry with its Idempotency-Key gets one job, never two."""
    silent = Silent()
    edits = (("uwsgi_read_timeout 35s;", "uwsgi_read_timeout 2s;"),
             ("uwsgi_send_timeout 35s;", "uwsgi_send_timeout 2s;"))  # fmt: skip
    site = _site([f"127.0.0.1:{silent.port}", f"127.0.0.1:{nodes.web[0].uwsgi_port}"],
                 free_port(), edits)  # fmt: skip
    try:
        with _nginx(tmp_path / "nginx", site) as port:
            answers: dict[str, int] = {}
            while "POST" not in silent.methods:
                assert len(answers) < 6, "the silent node never got a POST"
                key = f"timeout-{len(answers)}-{secrets.token_hex(4)}"
                body = {"task": "tests.jobs.add", "args": [1, len(answers)]}
                answers[key] = _http(port, "POST", "/jobs", body,
                                     {"Idempotency-Key": key}).status  # fmt: skip
            timed_out = [key for key, status in answers.items() if status == 504]
            assert len(timed_out) == 1 and set(answers.values()) <= {202, 504}, answers
            with database.admin() as conn:
                recorded = {row[0] for row in conn.execute(
                    "SELECT idempotency_key FROM spoolkit_jobs WHERE idempotency_key = ANY(%s)",
                    (list(answers),)).fetchall()}  # fmt: skip
            # Sent to the silent node only: the real one never recorded it.
            assert recorded == {key for key, status in answers.items() if status == 202}
            # The client retries with the same key until answered, then once more:
            # one job for the key, the second answer replayed.
            key = timed_out[0]
            body = {"task": "tests.jobs.add", "args": [1, list(answers).index(key)]}

            def answered() -> Response | None:
                answer = _http(port, "POST", "/jobs", body, {"Idempotency-Key": key})
                return answer if answer.status != 504 else None

            first = wait_for(answered, 60, "the retried POST to be answered")
            again = wait_for(answered, 60, "the second retry to be answered")
            assert first.status == 202 and "Idempotent-Replayed" not in first.headers
            assert again.status in (200, 202) and again.headers["Idempotent-Replayed"] == "true"
            assert again.json()["id"] == first.json()["id"]
            # A GET that timed out on the silent node is answered by the other.
            gets = silent.methods.count("GET")
            while silent.methods.count("GET") == gets:
                assert _http(port, "GET", "/healthz").status == 200
    finally:
        silent.close()


def test_reloading_a_spooler_node_reruns_its_job_without_an_attempt(
    nodes: Nodes, front: Front
) -> None:
    """What ``systemctl reload spoolkit-spooler`` does to a running job."""
    answer = _http(front.port, "POST", "/jobs",
                   {"task": "tests.jobs.blocks_first_run", "args": ["reloaded", 60]})  # fmt: skip
    assert answer.status == 202, answer
    job_id = answer.json()["id"]
    run = wait_for(lambda: nodes.records_of("reloaded"), 30, "the job to start")
    nodes.ran_on(int(str(run[0]["pid"]))).reload()
    job = wait_for(lambda: _job(front.port, job_id), 60, "the job to finish")
    assert (job["state"], job["attempts"]) == ("succeeded", 1), job
    history = job["history"]
    assert isinstance(history, list)
    assert [attempt["outcome"] for attempt in history] == ["interrupted", "succeeded"]


def test_a_dead_spooler_nodes_job_runs_on_another(nodes: Nodes, front: Front) -> None:
    """The whole node killed mid-job (a power cut): after ``SPOOLKIT_NODE_TIMEOUT`` a
    live node takes the job back, counting a ``worker_lost`` attempt, and another
    spooler node runs it. (Last: the node stays dead.)"""
    answer = _http(front.port, "POST", "/jobs",
                   {"task": "tests.jobs.blocks_first_run", "args": ["orphaned", 600]})  # fmt: skip
    assert answer.status == 202, answer
    job_id = answer.json()["id"]
    run = wait_for(lambda: nodes.records_of("orphaned"), 30, "the job to start")
    doomed = nodes.ran_on(int(str(run[0]["pid"])))
    doomed.kill_tree()
    job = wait_for(lambda: _job(front.port, job_id), NODE_TIMEOUT + 30, "the job to finish")
    assert (job["state"], job["attempts"]) == ("succeeded", 2), job
    history = job["history"]
    assert isinstance(history, list)
    assert [attempt["outcome"] for attempt in history] == ["worker_lost", "succeeded"]
    second = nodes.records_of("orphaned")[1]
    assert nodes.ran_on(int(str(second["pid"]))) is not doomed
