#!/usr/bin/env python3
"""Re-measure the facts about uWSGI's networked spooler in docs/multihost.md.

A "networked spooler" is a uWSGI instance with a spooler and a `--socket`
(uwsgi protocol): a packet whose modifier1 is 17 is handed to the `spooler`
request plugin (plugins/spooler/spooler_plugin.c), which writes it as a
local spool file and answers a 4-byte header (modifier1 255, size 0,
modifier2 1 on success, 0 on failure).

Every uWSGI process started here listens on 127.0.0.1 on a free port, is
stopped by its pid (SIGINT to the master, then SIGKILL of any pid that is
left), and lives in a temporary directory that is removed at the end.

    .venv/bin/python docs/experiments/networked_spooler.py [--uwsgi PATH] [--only 1,2,...] [--keep]

It prints, per claim, what it sent, what came back and what ran.  Takes
about a minute.
"""

# ruff: noqa: T201  (a script that reports on stdout)
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]

RECEIVER_PY = r'''
import json, os, time
import uwsgi

LOG = os.environ["NS_LOG"]


def _text(x):
    if isinstance(x, bytes):
        return x.decode("latin-1")
    return x


def spooler(env):
    name = env.get("spooler_task_name")
    raw = None
    try:
        # one spooler process only, so dropping its fcntl lock by this
        # open()/close() does not matter here
        with open(name, "rb") as f:
            raw = f.read()
    except OSError as e:
        raw = None
    rec = {
        "pid": os.getpid(),
        "t": time.time(),
        "keys": sorted("%s:%s" % (type(k).__name__, _text(k)) for k in env),
        "env": {_text(k): (_text(v) if len(v) <= 200 else "<%d bytes>" % len(v))
                for k, v in env.items()},
        "file_len": None if raw is None else len(raw),
        "file_header": None if raw is None else raw[:4].hex(),
    }
    if raw is not None:
        pktsize = raw[1] | raw[2] << 8
        rec["file_after_packet"] = len(raw) - 4 - pktsize
    with open(LOG, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return uwsgi.SPOOL_OK


uwsgi.spooler = spooler


def application(environ, start_response):
    path = environ["PATH_INFO"]
    qs = environ.get("QUERY_STRING", "")
    out = {}
    try:
        if path == "/spool":
            target = qs.encode()
            out["result"] = _text(uwsgi.spool({b"task": b"claim1", b"spooler": target}))
        elif path == "/spoolbody":
            out["result"] = _text(uwsgi.spool({b"task": b"claim3-local", b"body": b"B" * 10000}))
    except Exception as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(out).encode()]
'''


# --------------------------------------------------------------------------
# uwsgi packets


def keyvals(d: dict[bytes, bytes]) -> bytes:
    return b"".join(
        struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v for k, v in d.items()
    )


def packet(d: dict[bytes, bytes], modifier1: int = 17, modifier2: int = 0) -> bytes:
    vars_ = keyvals(d)
    return struct.pack("<BHB", modifier1, len(vars_), modifier2) + vars_


def padded(task: bytes, pktsize: int) -> dict[bytes, bytes]:
    """A dict whose keyvals encoding is exactly pktsize bytes."""
    base = len(keyvals({b"task": task, b"pad": b""}))
    return {b"task": task, b"pad": b"p" * (pktsize - base)}


def describe(answer: bytes) -> str:
    if len(answer) == 4:
        m1, size, m2 = struct.unpack("<BHB", answer)
        verdict = "spooled" if m2 == 1 else "refused"
        return f"{answer.hex()} (modifier1={m1} size={size} modifier2={m2}: {verdict})"
    return repr(answer)


def send(port: int, data: bytes, *, read: bool = True, timeout: float = 3.0,
         close: str = "fin", pause: float = 0.0) -> tuple[str, str]:
    """Send data; return (outcome, detail). close='rst' closes with SO_LINGER 0."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            s.sendall(data)
        except OSError as e:
            return "send-error", errno.errorcode.get(e.errno, str(e.errno))
        if pause:
            time.sleep(pause)
        if not read:
            return "not-read", ""
        got = b""
        try:
            while len(got) < 4:
                chunk = s.recv(4 - len(got))
                if not chunk:
                    break
                got += chunk
        except TimeoutError:
            return "timeout", f"no answer within {timeout}s ({len(got)} bytes)"
        except OSError as e:
            return "reset" if e.errno == errno.ECONNRESET else "recv-error", \
                f"{errno.errorcode.get(e.errno, e.errno)} after {len(got)} bytes"
        if len(got) < 4:
            return "eof", f"EOF after {len(got)} bytes"
        # does a reset follow the answer?
        s.settimeout(0.5)
        tail = ""
        try:
            more = s.recv(1)
            tail = "then EOF" if not more else f"then {more!r}"
        except TimeoutError:
            tail = "then nothing"
        except OSError as e:
            tail = f"then {errno.errorcode.get(e.errno, e.errno)}"
        return "answer", describe(got) + ", " + tail
    finally:
        if close == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


# --------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid:
            out.append(int(p.name))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class Receiver:
    """One uWSGI instance: master, 1 worker, 1 spooler."""

    def __init__(self, ctx: Ctx, name: str, extra: tuple[str, ...] = (),
                 strace: Path | None = None, http: bool = False):
        self.ctx = ctx
        self.name = name
        self.dir = ctx.tmp / name
        self.spool = self.dir / "spool"
        self.spool.mkdir(parents=True)
        self.log = self.dir / "ran.jsonl"
        self.log.touch()
        self.uwsgi_log = self.dir / "uwsgi.log"
        self.port = free_port()
        self.http_port = free_port() if http else None
        args = [ctx.uwsgi, "--master", "--processes", "1", "--auto-procname",
                "--socket", f"127.0.0.1:{self.port}",
                "--spooler", str(self.spool), "--spooler-processes", "1",
                "--spooler-frequency", "1",
                "--pythonpath", str(ctx.tmp), "--module", "ns_receiver",
                "--env", f"NS_LOG={self.log}", *extra]
        if http:
            args += ["--http-socket", f"127.0.0.1:{self.http_port}"]
        if strace:
            calls = "openat,write,close,unlink,fsync,fdatasync,syncfs,sync,sync_file_range,msync"
            args = ["strace", "-f", "-tt", "-y", "-s", "64", "-o", str(strace),
                    "-e", f"trace={calls}", *args]
        with open(self.uwsgi_log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.dir, start_new_session=True)
        self.master = self.proc.pid
        self.known: set[int] = set()
        deadline = time.time() + 20
        while time.time() < deadline:
            if strace:
                kids = children(self.proc.pid)
                self.master = kids[0] if kids else self.proc.pid
            if ((self.master != self.proc.pid or not strace)
                    and self.worker() and self.spooler() and self._listening()):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        tail = self.uwsgi_log.read_text()[-2000:]
        raise RuntimeError(f"{name}: uWSGI did not start, see {self.uwsgi_log}:\n{tail}")

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def _role(self, word: str) -> int | None:
        for pid in children(self.master):
            self.known.add(pid)
            if word in cmdline(pid):
                return pid
        return None

    def worker(self) -> int | None:
        return self._role("worker")

    def spooler(self) -> int | None:
        return self._role("spooler")

    def pids(self) -> list[int]:
        return [self.master, *children(self.master)]

    def runs(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def wait_runs(self, n: int, timeout: float = 5.0) -> list[dict]:
        deadline = time.time() + timeout
        while time.time() < deadline and len(self.runs()) < n:
            time.sleep(0.05)
        return self.runs()

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.dir)) for p in self.dir.rglob("uwsgi_spoolfile_on_*"))

    def logged(self, pattern: str) -> list[str]:
        lines = self.uwsgi_log.read_text(errors="replace").splitlines()
        return [line for line in lines if re.search(pattern, line)]

    def outcome(self) -> dict:
        """Pair each "[spooler] written ... to file X" with a following
        "disconnected client, remove spool file" (one worker: its lines are in order)."""
        deleted, last = set(), None
        for line in self.uwsgi_log.read_text(errors="replace").splitlines():
            m = re.search(r"\[spooler\] written \d+ bytes to file .*/(uwsgi_spoolfile_on_\S+)",
                          line)
            if m:
                last = m.group(1)
            elif "disconnected client, remove spool file" in line and last:
                deleted.add(last)
        ran = {x["env"]["spooler_task_name"] for x in self.runs()}
        return {"spooled": len(self.logged(r"\[spooler\] written")), "ran": len(ran),
                "deleted by receiver": len(deleted), "ran although deleted": len(ran & deleted),
                "worker exit(1) on failed unlink": len(self.logged("something horrible happened")),
                "files left": len(self.files())}

    def stop(self) -> None:
        pids = set(self.pids()) | self.known
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        if alive(self.master):
            os.kill(self.master, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        for pid in pids | {self.proc.pid}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        deadline = time.time() + 5
        while time.time() < deadline and any(alive(p) for p in pids):
            time.sleep(0.1)
        left = [p for p in pids if alive(p)]
        if left:
            print(f"  !! {self.name}: pids still alive after stop: {left}")


class Ctx:
    def __init__(self, uwsgi: str, keep: bool):
        self.uwsgi = uwsgi
        self.keep = keep
        self.tmp = Path(tempfile.mkdtemp(prefix="ns-spooler-"))
        (self.tmp / "ns_receiver.py").write_text(RECEIVER_PY)
        self.receivers: list[Receiver] = []

    def receiver(self, name: str, **kw) -> Receiver:
        r = Receiver(self, name, **kw)
        self.receivers.append(r)
        return r

    def close(self) -> None:
        for r in self.receivers:
            r.stop()
        if self.keep:
            print(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def say(*a) -> None:
    print("  " + " ".join(str(x) for x in a), flush=True)


# --------------------------------------------------------------------------
# the claims


def claim1(ctx: Ctx) -> None:
    print("\n[1] uwsgi.spool() cannot send to another host")
    r = ctx.receiver("c1", http=True)
    # a listener standing for "the other host": does anything connect to it?
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(5)
    lst.settimeout(1.0)
    other = lst.getsockname()[1]
    for target in (f"127.0.0.1:{other}", str(r.spool)):
        url = f"http://127.0.0.1:{r.http_port}/spool?{target}"
        body = urllib.request.urlopen(url, timeout=5).read()
        say(f"uwsgi.spool({{b'task': b'claim1', b'spooler': b'{target}'}}) ->", body.decode())
    try:
        conn, _ = lst.accept()
        say("the listener on", other, "got a connection:", conn.recv(100))
        conn.close()
    except TimeoutError:
        say(f"the listener on 127.0.0.1:{other} received no connection")
    lst.close()
    say("receiver log:", r.logged("unable to find spooler") or "-")
    runs = r.wait_runs(1)
    say("jobs run:", [x["env"].get("task") for x in runs], "(only the local-directory one)")
    # the same key arriving over the network names a directory on the receiver
    out = send(r.port, packet({b"task": b"claim1-net", b"spooler": f"127.0.0.1:{other}".encode()}))
    say("network packet with spooler=b'127.0.0.1:<port>' ->", *out)
    r.stop()


def claim2(ctx: Ctx) -> None:
    print("\n[2] raw modifier1-17 packet; the answer follows the file's close(), no fsync")
    trace = ctx.tmp / "c2.strace"
    r = ctx.receiver("c2", strace=trace)
    pkt = packet({b"task": b"claim2", b"arg": b"hello"})
    t0 = time.time()
    out = send(r.port, pkt)
    ms = 1000 * (time.time() - t0)
    say(f"sent {len(pkt)} bytes (header {pkt[:4].hex()}) ->", *out, f"in {ms:.1f} ms")
    r.wait_runs(1)
    time.sleep(0.3)
    r.stop()
    lines = trace.read_text(errors="replace").splitlines()
    shown = []
    fname = None
    for line in lines:
        if fname is None:
            m = re.search(r'openat\(.*"[^"]*/(uwsgi_spoolfile_on_[^"]+)", O_WRONLY\|O_CREAT', line)
            if m:
                fname = m.group(1)
                shown.append(line)
            continue
        if fname in line or ("write(" in line and "socket:" in line):
            shown.append(line)
        if "unlink(" in line and fname in line:
            break
    say("receiver syscalls from the file's creation to its unlink (strace -f -tt -y):")
    for line in shown:
        short = re.sub(r"<[^<>]*(uwsgi_spoolfile_on_[^>]*)>", "<FILE>", line)
        short = re.sub(r'"[^"]*uwsgi_spoolfile_on_[^"]*"', '"FILE"', short)
        say("   ", re.sub(r"/tmp/ns-spooler-[^/]+/", ".../", short)[:160])
    sync_re = r"\b(fsync|fdatasync|syncfs|sync|sync_file_range|msync)\("
    syncs = [line for line in lines if re.search(sync_re, line)]
    say(f"fsync/fdatasync/syncfs/sync/sync_file_range/msync calls in the whole trace: {len(syncs)}")
    for line in syncs[:5]:
        say("   ", line[:200])


def claim3(ctx: Ctx) -> None:
    print("\n[3] the body of a networked spool request is dropped")
    r = ctx.receiver("c3", http=True)
    cases = [
        ("vars include b'body' (100 bytes), no trailing data",
         packet({b"task": b"claim3-a", b"body": b"X" * 100})),
        ("plain vars + 20 trailing bytes after the packet",
         packet({b"task": b"claim3-b"}) + b"TRAILING-BODY-20-BYT"),
        ("plain vars + 10000 trailing bytes after the packet",
         packet({b"task": b"claim3-c"}) + b"T" * 10000),
    ]
    for label, data in cases:
        out = send(r.port, data)
        say(f"{label}: sent {len(data)} bytes ->", *out)
    out = send(r.port, packet({b"task": b"claim3-d"}) + b"T" * 10000, pause=0.5)
    say("same, client reads the answer 0.5 s late ->", *out)
    body = urllib.request.urlopen(f"http://127.0.0.1:{r.http_port}/spoolbody", timeout=5).read()
    say("local uwsgi.spool({b'task': ..., b'body': b'B'*10000}) ->", body.decode()[:60], "...")
    runs = r.wait_runs(5)
    for x in sorted(runs, key=lambda x: x["env"].get("task", "")):
        say(f"ran {x['env'].get('task')}: keys {x['keys']}, file {x['file_len']} bytes, "
            f"{x['file_after_packet']} after the packet")
    r.stop()


def claim4(ctx: Ctx) -> None:
    print("\n[4] packets larger than the receiver's buffer-size are refused")
    for bufsize in (None, 16384):
        extra = [] if bufsize is None else ["--buffer-size", str(bufsize)]
        r = ctx.receiver(f"c4-{bufsize or 'default'}", extra=extra)
        sizes = (3000, 4096, 4097, 8000)
        for n in sizes:
            out = send(r.port, packet(padded(f"claim4-{n}".encode(), n)))
            say(f"buffer-size {bufsize or 'default (4096)'}: packet of {n} bytes of vars ->", *out)
        runs = r.wait_runs(len(sizes), timeout=3)
        say("  jobs run:", sorted(x["env"]["task"] for x in runs))
        say("  receiver log:", [line[-60:] for line in r.logged("invalid request block size")])
        r.stop()


def claim5(ctx: Ctx) -> None:
    print("\n[5] no authentication")
    r = ctx.receiver("c5")
    out = send(r.port, packet({b"task": b"claim5-anyone", b"cmd": b"rm -rf /"}))
    say("a bare TCP client with no credential sends a job ->", *out)
    runs = r.wait_runs(1)
    say("ran:", [x["env"] for x in runs])
    out = send(r.port, packet({b"task": b"claim5-prio", b"priority": b"../escaped"}))
    say("priority=b'../escaped' ->", *out)
    time.sleep(0.3)
    say("spool files now under the receiver's directory (its spool dir is spool/):", r.files())
    far = str(int(time.time()) + 10**8).encode()
    out = send(r.port, packet({b"task": b"claim5-at", b"at": far}))
    say("at=now+10^8 s ->", *out, "; files:", len(r.files()))
    r.stop()


def claim6(ctx: Ctx) -> None:
    print("\n[6a] receiver frozen (SIGSTOP on master, worker, spooler) during the send")
    for close in ("fin", "rst"):
        r = ctx.receiver(f"c6a-{close}")
        pids = r.pids()
        for p in pids:
            os.kill(p, signal.SIGSTOP)
        out = send(r.port, packet({b"task": f"claim6a-{close}".encode()}), timeout=2, close=close)
        say(f"sent while stopped, client gave up and closed ({close.upper()}) ->", *out)
        for p in pids:
            os.kill(p, signal.SIGCONT)
        r.wait_runs(1, timeout=4)
        time.sleep(0.5)
        say("  after SIGCONT:", r.outcome())
        r.stop()

    print("\n[6b] client sends, then closes before reading the answer")
    for close, n in (("fin", 20), ("rst", 300)):
        r = ctx.receiver(f"c6b-{close}")
        refused = 0
        for i in range(n):
            try:
                pkt = packet({b"task": f"claim6b-{close}-{i}".encode()})
                send(r.port, pkt, read=False, close=close)
            except OSError:
                refused += 1
        r.wait_runs(n, timeout=3)
        time.sleep(0.5)
        say(f"{n} x send then close ({close.upper()}) at once, receiver running:", r.outcome(),
            f"connect failed {refused}x" if refused else "")
        r.stop()

    r = ctx.receiver("c6b-rst-stopped")
    n = 10
    for i in range(n):
        w = r.worker()
        os.kill(w, signal.SIGSTOP)
        send(r.port, packet({b"task": f"claim6b-stopped-{i}".encode()}), read=False, close="rst")
        os.kill(w, signal.SIGCONT)
        time.sleep(1.2)
    r.wait_runs(n, timeout=2)
    say(f"{n} x worker SIGSTOPped, send, RST, SIGCONT:", r.outcome())
    r.stop()


def claim7(ctx: Ctx) -> None:
    print("\n[7] a dead node's files stay on its disk")
    r = ctx.receiver("c7")
    out = send(r.port, packet({b"task": b"claim7", b"at": str(int(time.time()) + 3600).encode()}))
    say("job spooled for in an hour ->", *out)
    for p in r.pids():
        os.kill(p, signal.SIGKILL)
    r.proc.wait(5)
    say("after SIGKILL of the whole instance, files on its disk:", r.files())
    say("nothing else holds them: the job exists only in that directory")


CLAIMS = {1: claim1, 2: claim2, 3: claim3, 4: claim4, 5: claim5, 6: claim6, 7: claim7}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uwsgi", default=str(REPO / ".venv" / "bin" / "uwsgi"))
    ap.add_argument("--only", default="", help="comma-separated claim numbers")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    version = subprocess.run([a.uwsgi, "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    print(f"uWSGI {version} ({a.uwsgi}), {time.strftime('%Y-%m-%d %H:%M:%S')}")
    todo = [int(x) for x in a.only.split(",") if x] or list(CLAIMS)
    ctx = Ctx(a.uwsgi, a.keep)
    try:
        for n in todo:
            CLAIMS[n](ctx)
    finally:
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
