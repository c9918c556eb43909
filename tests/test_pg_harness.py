"""The PostgreSQL harness (tests/pg.py) does what the tests rely on: an unprivileged
server on a private unix socket, a fresh database per test, stops that leave nothing
running, and restarts that keep committed data."""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path

import psycopg
import pytest

from .pg import DURABLE, FAST, PostgresCluster, StopMode, find_bin_dir
from .support import alive

# The harness's fixtures, until conftest.py imports them (then these three lines go).

UNIX_PATH_MAX = 107  # sun_path is 108 bytes, NUL included


def _uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uid of ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", status, re.M)
    assert match is not None
    return [int(uid) for uid in match.groups()]


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _ip_socket_inodes(pid: int) -> set[int]:
    """Inodes of every TCP and UDP socket (v4 and v6) in ``pid``'s network namespace."""
    inodes = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if path.exists():
            for line in path.read_text().splitlines()[1:]:
                inodes.add(int(line.split()[9]))
    return inodes


def _one(conn: psycopg.Connection[tuple[object, ...]], query: str) -> object:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_server_runs_as_an_unprivileged_user(postgres: PostgresCluster) -> None:
    expected = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert expected != 0
    with postgres.connect():  # a backend exists while connected
        family = postgres.processes()
        assert len(family) > 1
        for pid in family:
            assert _uids(pid) == [expected] * 4, pid


def test_server_is_on_a_private_unix_socket_only(postgres: PostgresCluster) -> None:
    with postgres.connect() as conn:
        assert _one(conn, "SHOW listen_addresses") == ""
        assert _one(conn, "SHOW unix_socket_directories") == str(postgres.socket_dir)
        assert _one(conn, "SELECT inet_server_addr()") is None  # this session is on the socket
        ip_sockets = _ip_socket_inodes(postgres.pid)
        for pid in postgres.processes():
            assert not _socket_inodes(pid) & ip_sockets, f"process {pid} has an IP socket"
    socket = postgres.socket_dir / ".s.PGSQL.5432"
    assert socket.is_socket()
    assert len(os.fsencode(socket)) < UNIX_PATH_MAX
    assert str(postgres.socket_dir).startswith("/tmp/spoolkit-pg-")
    assert postgres.socket_dir.stat().st_mode & 0o777 == 0o700
    assert postgres.socket_dir.stat().st_uid == _uids(postgres.pid)[0]


def test_fast_settings_by_default(postgres: PostgresCluster) -> None:
    with postgres.connect() as conn:
        for name, value in FAST.items():
            assert _one(conn, f"SHOW {name}") == value


def test_dsn_names_the_database_on_the_socket(postgres: PostgresCluster, pg_dsn: str) -> None:
    assert pg_dsn.startswith("postgresql://postgres@/t_")
    with psycopg.connect(pg_dsn) as conn:
        assert conn.info.host == str(postgres.socket_dir)
        assert conn.info.dbname.startswith("t_")
        assert _one(conn, "SELECT current_database()") == conn.info.dbname
        assert _one(conn, "SELECT current_user") == "postgres"


@pytest.mark.parametrize("turn", [1, 2])
def test_each_test_gets_a_fresh_database(pg_dsn: str, turn: int) -> None:
    """Whichever of the two runs second would see the first one's table."""
    with psycopg.connect(pg_dsn) as conn:
        assert _one(conn, "SELECT count(*) FROM pg_tables WHERE tablename = 'mark'") == 0
        conn.execute("CREATE TABLE mark (turn int)")
        conn.execute("INSERT INTO mark VALUES (%s)", (turn,))


def test_databases_copy_their_template(postgres: PostgresCluster) -> None:
    calls = []

    def setup(dsn: str) -> None:
        calls.append(dsn)
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE seed (n int)")
            conn.execute("INSERT INTO seed VALUES (1)")

    template = postgres.create_template("harness_template", setup)
    assert postgres.create_template("harness_template", setup) == template
    assert len(calls) == 1
    first, second = (postgres.create_database(template=template) for _ in range(2))
    try:
        with psycopg.connect(postgres.dsn(first), autocommit=True) as conn:
            conn.execute("INSERT INTO seed VALUES (2)")
            assert _one(conn, "SELECT count(*) FROM seed") == 2
        with psycopg.connect(postgres.dsn(second)) as conn:
            assert _one(conn, "SELECT count(*) FROM seed") == 1
        with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
            psycopg.connect(postgres.dsn(template)).close()
    finally:
        postgres.drop_database(first)
        postgres.drop_database(second)
    with postgres.connect() as conn:
        names = conn.execute("SELECT datname FROM pg_database").fetchall()
        assert (first,) not in names
        assert (second,) not in names


def test_a_setup_that_leaves_a_connection_open_is_named(postgres: PostgresCluster) -> None:
    kept: list[psycopg.Connection[tuple[object, ...]]] = []
    try:
        with pytest.raises(AssertionError, match="left 1 connection"):
            postgres.create_template("leaky", lambda dsn: kept.append(psycopg.connect(dsn)))
    finally:
        for conn in kept:
            conn.close()
        postgres.drop_database("leaky")


def test_stops_leave_nothing_and_restarts_keep_committed_data() -> None:
    """A cluster of its own, with fsync on. ``fast`` checkpoints: the next start needs
    no recovery. ``immediate`` is a crash as far as the data goes (no checkpoint): the
    next start replays the WAL, and the commit is there."""
    recovery = "automatic recovery in progress"
    modes: tuple[StopMode, ...] = ("fast", "immediate")
    with PostgresCluster(DURABLE) as cluster:
        with cluster.connect() as conn:
            for name, value in DURABLE.items():
                assert _one(conn, f"SHOW {name}") == value
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        for mode in modes:
            family = cluster.processes()
            cluster.stop(mode)
            assert not cluster.running
            assert [pid for pid in family if alive(pid)] == []
            assert not (cluster.data_dir / "postmaster.pid").exists()
            cluster.start()
            assert cluster.pid not in family
            assert (recovery in cluster.log_text()) == (mode == "immediate")
            with cluster.connect() as conn:
                assert _one(conn, "SELECT n FROM kept") == 42
        base = cluster.base
        assert base is not None
        family = cluster.processes()
    assert [pid for pid in family if alive(pid)] == []
    assert not base.exists()


def test_two_clusters_side_by_side(postgres: PostgresCluster) -> None:
    """As when two test runs share a machine: own directory, own socket, own server."""
    with PostgresCluster() as other:
        assert other.socket_dir != postgres.socket_dir
        assert other.pid != postgres.pid
        with other.connect() as conn:
            conn.execute("CREATE DATABASE only_here")
        with postgres.connect() as conn:
            assert _one(conn, "SELECT count(*) FROM pg_database WHERE datname = 'only_here'") == 0


def test_missing_server_fails_and_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="Debian's package 'postgresql'"):
        find_bin_dir(tmp_path)
    cluster = PostgresCluster(lib_dir=tmp_path)
    with pytest.raises(AssertionError, match="'postgresql'"):
        cluster.start()
    assert cluster.base is None  # nothing was created


def test_newest_version_is_chosen(tmp_path: Path) -> None:
    for version in ("9", "15", "13"):
        (tmp_path / version / "bin").mkdir(parents=True)
        (tmp_path / version / "bin" / "postgres").touch()
    (tmp_path / "common" / "bin").mkdir(parents=True)
    (tmp_path / "common" / "bin" / "postgres").touch()
    assert find_bin_dir(tmp_path) == tmp_path / "15" / "bin"
