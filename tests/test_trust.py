"""lvsd as a skeptical operator tries it: nobody can impersonate it, a crash
does not lose the table, and every change leaves a line in the log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lvsd.client import Client
from lvsd.names import socket_address

from .helpers import PY, ROOT, is_root, lvsadm, running_lvsd, unique_socket, wait_ready

NOBODY = 65534
SYSTEM_PY = shutil.which("python3", path="/usr/bin:/bin")

# a squatter run as nobody: it takes every name it can (the abstract name an
# older lvsd used, the filesystem path if it may) and records what it gets
SQUATTER = r"""
import json, os, socket, sys, time
path, abstract, log, ready, stop = sys.argv[1:6]
took = []
socks = []
got = b""
try:
    for label, addr in (("abstract", "\0" + abstract), ("path", path)):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(addr); s.listen(8); s.setblocking(False); socks.append(s); took.append(label)
        except OSError as exc:
            took.append(f"{label}: {exc.strerror}")
    open(ready, "w").write(json.dumps(took))
    deadline = time.time() + 60
    while time.time() < deadline and not os.path.exists(stop):
        # keep trying to replace lvsd's socket, as a squatter would
        if "path" not in took:
            try:
                os.unlink(path)
                took.append("unlinked lvsd's socket")
            except OSError:
                pass
        for s in socks:
            try:
                c, _ = s.accept()
            except OSError:
                continue
            c.settimeout(1)
            try:
                c.sendall(b'{"id":1,"ok":true,"rc":0,"stdout":"FAKE TABLE\\n","stderr":"","seq":1}\n')
                got += c.recv(65536)
            except OSError:
                pass
            c.close()
        time.sleep(0.005)
finally:
    open(log, "w").write(json.dumps({"took": took, "got": got.decode(errors="replace")}))
"""


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory nobody can write in (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix=f"pylvs-trust-{os.getpid()}-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


needs_root = pytest.mark.skipif(not is_root() or SYSTEM_PY is None, reason="needs root and /usr/bin/python3")


def _squat(path: str, abstract: str, tmp: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Start the squatter as nobody; it stops when ``tmp/stop`` exists."""
    log, ready = tmp / "squatter.json", tmp / "ready.json"
    assert SYSTEM_PY is not None
    proc = subprocess.Popen(
        [SYSTEM_PY, "-c", SQUATTER, path, abstract, str(log), str(ready), str(tmp / "stop")],
        preexec_fn=_as_nobody, cwd="/",
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert time.monotonic() < deadline, "the squatter did not start"
        time.sleep(0.02)
    return proc, log, ready


@needs_root
def test_nobody_cannot_take_lvsds_name_before_or_after_it_starts(open_tmp: Path) -> None:
    """Test point 1: a nobody process holding lvsd's old abstract name and
    trying for its socket path, before and while lvsd runs, gets none of
    root's commands and answers none; lvsd still starts."""
    name = unique_socket()
    path = socket_address(name)
    proc, log, ready = _squat(path, name + ".ctl", open_tmp)
    took = json.loads(ready.read_text())
    assert took[0] == "abstract"  # it holds the name an abstract-socket lvsd used
    assert took[1].startswith("path: ")  # but not lvsd's socket path
    with running_lvsd("--no-nat", "--no-dr", socket_name=name):
        r = lvsadm(name, "-A", "-t", "10.0.0.1:80", "-s", "rr")
        assert r.returncode == 0, r.stderr
        with Client(autostart=False, name=name) as c:
            lvsd_pid = c.call("status")["data"]["pid"]
            assert c.call("ipvsadm", argv=["-L", "-n"], stdin="")["stdout"].count("TCP  10.0.0.1:80 rr") == 1
        time.sleep(0.5)  # the squatter keeps trying while lvsd serves
        (open_tmp / "stop").touch()
        proc.wait(timeout=20)
        result = json.loads(log.read_text())
        assert "unlinked lvsd's socket" not in result["took"]
        assert result["got"] == ""  # root's commands never reached it
        assert "FAKE TABLE" not in lvsadm(name, "-L", "-n").stdout
        with Client(autostart=False, name=name) as c:
            assert c.call("status")["data"]["pid"] == lvsd_pid
        # nobody itself is told no, in ipvsadm's words
        r = subprocess.run(
            [SYSTEM_PY or "", "-c", "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
             "print(s.recv(4096).decode())", path],
            preexec_fn=_as_nobody, capture_output=True, text=True, timeout=30, check=False, cwd="/",
        )  # fmt: skip
        assert "Permission denied (you must be root)" in r.stdout


@needs_root
def test_lvsadm_refuses_a_socket_held_by_another_user(open_tmp: Path) -> None:
    """A control socket (an explicit path) answered by nobody's process:
    lvsadm checks SO_PEERCRED first, sends nothing and says why."""
    path = str(open_tmp / "lvsd.ctl")
    proc, log, _ = _squat(path, unique_socket(), open_tmp)
    r = lvsadm(path, "-A", "-t", "10.0.0.1:80", "-s", "rr")
    (open_tmp / "stop").touch()
    proc.wait(timeout=20)
    assert r.returncode == 2
    assert "SECURITY" in r.stderr and "uid 65534 (nobody)" in r.stderr and "nothing was sent" in r.stderr
    assert json.loads(log.read_text())["got"] == ""
    assert "FAKE TABLE" not in r.stdout


def test_a_second_lvsd_is_refused_and_the_first_keeps_its_socket() -> None:
    with running_lvsd("--no-nat", "--no-dr") as name:
        r = subprocess.run(
            [PY, "-m", "lvsd.main", "--foreground", "--no-nat", "--no-dr", "--socket", name],
            capture_output=True, text=True, timeout=30, check=False, cwd=ROOT,
        )  # fmt: skip
        assert r.returncode == 1 and "another lvsd (pid" in r.stderr, r.stderr
        assert lvsadm(name, "-L", "-n").returncode == 0


def _vip_count(vip: str) -> int:
    out = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True,
                         check=False).stdout  # fmt: skip
    return sum(1 for line in out.splitlines() if f" {vip}/" in line)


def _without_counters(listing: str) -> str:
    """``-L -n`` without ActiveConn/InActConn (connections die with lvsd)."""
    return "\n".join(" ".join(line.split()[:4]) if line.startswith("  ->") else line for line in listing.splitlines())


@pytest.mark.skipif(not is_root(), reason="needs root to add VIPs to lo")
def test_kill_9_under_load_loses_nothing_of_the_table(backends: Any) -> None:
    """Test point 2: lvsd killed with SIGKILL while TCP and UDP traffic flows;
    the next lvsadm -L -n (which starts a new lvsd) shows the same table,
    weights, timeouts and sysctls, says that the previous lvsd died, and each
    VIP is on lo exactly once; traffic flows again."""
    name = unique_socket()
    rnd = int.from_bytes(os.urandom(2), "little")
    vip_t, vip_u = f"10.{200 + rnd % 50}.{rnd >> 8}.{1 + rnd % 200}", f"10.{200 + rnd % 50}.{rnd >> 8}.{201 + rnd % 50}"
    http = [backends.http(0), backends.http(0)]
    udp = [backends.udp_echo(), backends.udp_echo()]
    env = {**os.environ, "LVSD_SOCKET": name, "LVSD_ARGS": "--no-dr"}
    first = subprocess.Popen([PY, "-m", "lvsd.main", "--foreground", "--no-dr", "--socket", name],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)  # fmt: skip
    stop = threading.Event()
    sent = {"tcp": 0, "udp": 0}
    try:
        wait_ready(name)
        for argv in (
            ["-A", "-t", f"{vip_t}:80", "-s", "wrr"],
            ["-a", "-t", f"{vip_t}:80", "-r", f"127.0.0.1:{http[0]}", "-m", "-w", "3"],
            ["-a", "-t", f"{vip_t}:80", "-r", f"127.0.0.1:{http[1]}", "-m", "-w", "1"],
            ["-A", "-u", f"{vip_u}:53", "-s", "rr", "-p", "60"],
            ["-a", "-u", f"{vip_u}:53", "-r", f"127.0.0.1:{udp[0]}", "-m", "-w", "2"],
            ["-a", "-u", f"{vip_u}:53", "-r", f"127.0.0.1:{udp[1]}", "-m", "-w", "0"],
            ["--set", "111", "22", "33"],
        ):
            r = lvsadm(name, *argv)
            assert r.returncode == 0, (argv, r.stderr)
        with Client(autostart=False, name=name) as c:
            assert c.call("sysctl", name="expire_nodest_conn", value="1")["value"] == 1
            assert c.call("sysctl", name="sloppy_tcp", value="1")["value"] == 1

        def load() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    with socket.create_connection((vip_t, 80), timeout=2) as s:
                        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                        s.recv(100)
                    sent["tcp"] += 1
                with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.sendto(b"q", (vip_u, 53))
                    sent["udp"] += 1
                time.sleep(0.005)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        time.sleep(1.0)
        before = lvsadm(name, "-L", "-n")
        timeouts = lvsadm(name, "-L", "--timeout").stdout
        assert "ActiveConn" in before.stdout and sent["tcp"] > 0
        assert _vip_count(vip_t) == 1 and _vip_count(vip_u) == 1
        first.kill()
        first.wait(timeout=10)
        time.sleep(0.3)
        stop.set()
        loader.join(timeout=10)
        after = subprocess.run([PY, "-m", "lvsd.cli", "-L", "-n"], capture_output=True, text=True, env=env,
                               cwd=ROOT, timeout=60, check=False)  # fmt: skip
        assert after.returncode == 0, after.stderr
        assert _without_counters(after.stdout) == _without_counters(before.stdout)
        assert f"the previous lvsd (pid {first.pid}) did not stop cleanly" in after.stderr
        assert "restored 2 services and 4 real servers" in after.stderr
        assert lvsadm(name, "-L", "--timeout").stdout == timeouts
        with Client(autostart=False, name=name) as c:
            assert c.call("sysctl", name="expire_nodest_conn")["value"] == 1
            assert c.call("sysctl", name="sloppy_tcp")["value"] == 1
            second_pid = c.call("status")["data"]["pid"]
        assert _vip_count(vip_t) == 1 and _vip_count(vip_u) == 1
        with socket.create_connection((vip_t, 80), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert b"Hello" in s.recv(100)
        os.kill(second_pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _vip_count(vip_t) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _vip_count(vip_t) == 0 and _vip_count(vip_u) == 0  # a clean stop removes them
    finally:
        stop.set()
        if first.poll() is None:
            first.kill()
            first.wait()
        for vip in (vip_t, vip_u):
            subprocess.run(["ip", "addr", "del", f"{vip}/32", "dev", "lo"], capture_output=True, check=False)


class _Load:
    """HTTP traffic at a fixed rate: ``short`` requests per second on new
    connections and ``keepalive`` connections of ``per_conn`` requests per
    second each, every failure counted."""

    def __init__(self, port: int, short: int, keepalive: int, per_conn: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.ok = 0
        self.failed: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._short, args=(short // 4,), daemon=True) for _ in range(4)]
        self.threads += [threading.Thread(target=self._keepalive, args=(per_conn,), daemon=True)
                         for _ in range(keepalive)]  # fmt: skip
        self.ka_done: list[int] = []

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def _count(self, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.ok += 1
            else:
                self.failed.append(error)

    def _paced(self, rate: int) -> Iterator[None]:
        t = time.monotonic()
        while not self.stop.is_set():
            yield None
            t += 1.0 / rate
            time.sleep(max(0.0, t - time.monotonic()))

    def _short(self, rate: int) -> None:
        for _ in self._paced(rate):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    s.sendall(b"GET /short HTTP/1.0\r\n\r\n")
                    data = b""
                    while chunk := s.recv(4096):
                        data += chunk
                self._count(None if data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok") else f"short: {data!r}")
            except OSError as exc:
                self._count(f"short: {exc!r}")

    def _keepalive(self, rate: int) -> None:
        done = 0
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                f = s.makefile("rb")
                for _ in self._paced(rate):
                    s.sendall(b"GET /ka HTTP/1.1\r\nHost: x\r\n\r\n")
                    status = f.readline()
                    while f.readline() not in (b"\r\n", b""):
                        pass
                    body = f.read(2)
                    self._count(None if status.startswith(b"HTTP/1.1 200") and body == b"ok" else f"ka: {status!r}")
                    done += 1
        except OSError as exc:
            self._count(f"keep-alive after {done} requests: {exc!r}")
        self.ka_done.append(done)


def _keepalive_backend(backends: Any) -> int:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                keep = b"HTTP/1.1" in head.split(b"\r\n", 1)[0]
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n%s\r\nok"
                        % (b"" if keep else b"Connection: close\r\n"))  # fmt: skip
                await w.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        w.close()

    return int(backends.tcp(handle))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_five_restarts_under_load_fail_no_request(backends: Any) -> None:
    """Test point 3: 5 ``lvsadm --restart`` while 100 short requests/s and
    100 keep-alive requests/s (4 connections) flow: no request fails, every
    keep-alive connection opened before the first restart carries all its
    requests through the five restarts (the old lvsd drains it)."""
    rport, vport = _keepalive_backend(backends), _free_port()
    name = unique_socket()
    first = subprocess.Popen([PY, "-m", "lvsd.main", "--foreground", "--no-dr", "--no-vip", "--socket", name],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)  # fmt: skip
    load = _Load(vport, short=100, keepalive=4, per_conn=25)
    pids = [first.pid]
    try:
        wait_ready(name)
        assert lvsadm(name, "-A", "-t", f"127.0.0.1:{vport}", "-s", "rr").returncode == 0
        assert lvsadm(name, "-a", "-t", f"127.0.0.1:{vport}", "-r", f"127.0.0.1:{rport}", "-m").returncode == 0
        load.start()
        time.sleep(1.0)
        for _ in range(5):
            r = lvsadm(name, "--restart")
            assert r.returncode == 0, r.stderr
            pids.append(int(r.stdout.split()[2]))
            time.sleep(1.5)
        load.finish()
        assert load.failed == [], load.failed[:5]
        assert len(load.ka_done) == 4 and min(load.ka_done) > 5 * 1.5 * 25 * 0.5, load.ka_done
        assert load.ok > 1000
        with Client(autostart=False, name=name) as c:
            assert c.call("status")["data"]["pid"] == pids[-1]
        assert f"TCP  127.0.0.1:{vport} rr" in lvsadm(name, "-L", "-n").stdout
        # the old ones are gone once their keep-alive connections closed
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in pids[:-1]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids[:-1])
    finally:
        load.stop.set()
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        first.wait(timeout=20)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _udp_sink(stop: threading.Event, got: list[int]) -> tuple[socket.socket, threading.Thread]:
    """A UDP real server that counts what it receives (and what its own
    receive buffer drops, SO_MEMINFO)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, 33, 32 * 1024 * 1024)  # SO_RCVBUFFORCE
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)

    def run() -> None:
        while not stop.is_set():
            try:
                s.recv(64)
                got[0] += 1
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return s, t


def _meminfo_drops(s: socket.socket) -> int:
    import struct

    return struct.unpack("9I", s.getsockopt(socket.SOL_SOCKET, 55, 36))[8]


def _counter(text: str, label: str) -> int:
    m = re.search(re.escape(label) + r" (\d+)", text)
    assert m, (label, text)
    return int(m.group(1))


@pytest.mark.skipif(not is_root(), reason="needs root to bind 127.1.x.y sources at this rate and size buffers")
def test_udp_churn_under_a_descriptor_limit_is_counted_and_control_answers() -> None:
    """Test point 4: 100,000 UDP sources at up to 5,000/s through an lvsd whose
    RLIMIT_NOFILE is 20,000: lvsadm -L -n answers throughout, idle flow
    sockets are given back, and every datagram sent is either received by
    the real server or counted as lost (by lvsd's counters or the real
    server's own receive buffer)."""
    import resource

    stop = threading.Event()
    got = [0]
    sink, sink_thread = _udp_sink(stop, got)
    vport = _free_port()
    name = unique_socket()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))

    lvsd = subprocess.Popen([PY, "-m", "lvsd.main", "--foreground", "--no-dr", "--no-vip", "--socket", name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                            preexec_fn=limit)  # fmt: skip
    control: list[int] = []
    try:
        wait_ready(name)
        assert lvsadm(name, "-A", "-u", f"127.0.0.1:{vport}", "-s", "rr").returncode == 0
        assert lvsadm(name, "-a", "-u", f"127.0.0.1:{vport}", "-r", f"127.0.0.1:{sink.getsockname()[1]}",
                      "-m").returncode == 0  # fmt: skip

        def ask() -> None:
            while not stop.is_set():
                control.append(lvsadm(name, "-L", "-n", timeout=20).returncode)
                time.sleep(0.5)

        asker = threading.Thread(target=ask, daemon=True)
        asker.start()
        sent = 0
        total, rate = 100_000, 5000
        t0 = time.monotonic()
        for i in range(total):
            src = (f"127.1.{(i >> 8) & 255}.{i & 255}", 20000 + (i >> 16))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(src)
                s.sendto(b"x", ("127.0.0.1", vport))
            sent += 1
            ahead = t0 + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        elapsed = time.monotonic() - t0
        time.sleep(3)  # what is queued reaches the real server
        status = ""
        with Client(autostart=False, name=name) as c:
            for _ in range(50):  # until lvsd's counters stop moving
                data = c.call("status")["data"]
                status = " ".join(data["planes"])
                before = got[0]
                time.sleep(0.6)
                if got[0] == before:
                    break
        stop.set()
        asker.join(timeout=30)
        lost_counted = (
            _counter(status, "UDP dropped")
            + _counter(status, "UDP dropped for want of a descriptor")
            + _counter(status, "UDP dropped by a full receive buffer")
            + _counter(status, "connect failures")
        )
        backend_drops = _meminfo_drops(sink)
        print(f"sent {sent} in {elapsed:.1f} s; received {got[0]}; lvsd counted {lost_counted}; "
              f"real server dropped {backend_drops}; {status}")  # fmt: skip
        assert control and all(rc == 0 for rc in control), control
        assert sent == total
        assert got[0] + lost_counted + backend_drops == sent
        reclaimed = re.search(r"(\d+) idle ones reclaimed", status)
        assert reclaimed and int(reclaimed.group(1)) > 0  # 100k flows in 20k descriptors
        assert lvsadm(name, "-L", "-n").returncode == 0
    finally:
        stop.set()
        lvsd.terminate()
        try:
            lvsd.wait(timeout=30)
        except subprocess.TimeoutExpired:
            lvsd.kill()
            lvsd.wait()
        sink.close()
        sink_thread.join(timeout=5)
