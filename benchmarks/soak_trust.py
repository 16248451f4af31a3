"""Soak: lvsd under mixed traffic with reloads, weight flaps and hitless
restarts for a long time; RSS and descriptors sampled, every request and
datagram accounted for.

    .venv/bin/python benchmarks/soak_trust.py --minutes 60 --out benchmarks/raw/soak.jsonl

Traffic (all on loopback, lvsd --no-dr --no-vip): short HTTP requests on new
connections, keep-alive HTTP connections (each reconnects every 30 s so old
lvsd processes can finish draining), UDP request/reply.  Events: every
``--flap`` seconds a real server's weight goes to 0 and back (as a health
checker's quiesce would); every ``--reload`` seconds the YAML config is
rewritten (a weight changes) and reloaded; every ``--restart`` seconds
``lvsadm --restart``.  Every 10 s a sample line: the serving lvsd's pid, RSS
(kB), open descriptors, entries, and the client-side counts.  The last line
is the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.c: dict[str, int] = {}
        self.errors: list[str] = []

    def add(self, key: str, error: str | None = None) -> None:
        with self.lock:
            self.c[key] = self.c.get(key, 0) + 1
            if error is not None and len(self.errors) < 50:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {error}")


def backends(loop: asyncio.AbstractEventLoop, n_tcp: int, n_udp: int) -> tuple[list[int], list[int]]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                keep = b"HTTP/1.1" in head.split(b"\r\n", 1)[0]
                close = b"" if keep else b"Connection: close\r\n"
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n%s\r\nok" % close)
                await w.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        w.close()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, t: Any) -> None:
            self.t = t

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.t.sendto(data, addr)

    async def start() -> tuple[list[int], list[int]]:
        tcp = []
        for _ in range(n_tcp):
            srv = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
            tcp.append(srv.sockets[0].getsockname()[1])
        udp = []
        for _ in range(n_udp):
            t, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
            udp.append(t.get_extra_info("sockname")[1])
        return tcp, udp

    return asyncio.run_coroutine_threadsafe(start(), loop).result(10)


def paced(stop: threading.Event, rate: float) -> Any:
    t = time.monotonic()
    while not stop.is_set():
        yield None
        t += 1.0 / rate
        time.sleep(max(0.0, t - time.monotonic()))


def short_client(port: int, rate: float, stop: threading.Event, counts: Counts) -> None:
    for _ in paced(stop, rate):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            ok = data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok")
            counts.add("short_ok" if ok else "short_failed", None if ok else repr(data[:60]))
        except OSError as exc:
            counts.add("short_failed", f"short: {exc!r}")


def keepalive_client(port: int, rate: float, stop: threading.Event, counts: Counts) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                f = s.makefile("rb")
                until = time.monotonic() + 30
                for _ in paced(stop, rate):
                    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    status = f.readline()
                    while f.readline() not in (b"\r\n", b""):
                        pass
                    ok = status.startswith(b"HTTP/1.1 200") and f.read(2) == b"ok"
                    counts.add("ka_ok" if ok else "ka_failed", None if ok else repr(status))
                    if time.monotonic() > until:
                        break
        except OSError as exc:
            counts.add("ka_failed", f"keep-alive: {exc!r}")


def udp_client(port: int, rate: float, stop: threading.Event, counts: Counts) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    for n, _ in enumerate(paced(stop, rate), 1):
        # a new source port now and then: new flows and expiring ones
        if n % 50 == 0:
            s.close()
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
        msg = b"q%d" % n
        try:
            s.sendto(msg, ("127.0.0.1", port))
            counts.add("udp_sent")
            while True:
                data = s.recv(100)
                if data == msg:
                    counts.add("udp_replied")
                    break
        except OSError as exc:
            counts.add("udp_lost", f"udp: {exc!r}")
    s.close()


def lvsadm(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LVSD_SOCKET": name, "LVSADM_NO_AUTOSTART": "1"}
    return subprocess.run([PY, "-m", "lvsd.cli", *args], capture_output=True, text=True, env=env, timeout=60,
                          check=False, cwd=ROOT)  # fmt: skip


def status(name: str) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from lvsd.client import Client

    with Client(autostart=False, name=name) as c:
        return dict(c.call("status")["data"])


def proc_facts(pid: int) -> tuple[int, int]:
    rss = 0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return rss, fds


def config_text(vport: int, uport: int, tcp: list[int], udp: list[int], bump: bool) -> str:
    lines = ["services:", f"  - tcp: 127.0.0.1:{vport}", "    scheduler: wrr", "    realservers:"]
    for i, p in enumerate(tcp):
        lines += [
            f"      - address: 127.0.0.1:{p}",
            "        method: masq",
            f"        weight: {i + 1 + (2 if bump and i == 0 else 0)}",
        ]
    lines += [f"  - udp: 127.0.0.1:{uport}", "    scheduler: rr", "    realservers:"]
    for p in udp:
        lines += [f"      - address: 127.0.0.1:{p}", "        method: masq", "        weight: 1"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--out", default="benchmarks/raw/soak.jsonl")
    ap.add_argument("--short-rate", type=float, default=40)
    ap.add_argument("--ka-conns", type=int, default=2)
    ap.add_argument("--ka-rate", type=float, default=20)
    ap.add_argument("--udp-rate", type=float, default=40)
    ap.add_argument("--flap", type=float, default=45)
    ap.add_argument("--reload", type=float, default=120)
    ap.add_argument("--restart", type=float, default=300)
    opts = ap.parse_args()
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pylvs-soak-"))
    os.environ["LVSD_STATE_DIR"] = str(work / "state")
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    tcp, udp = backends(loop, 3, 2)
    probe = [socket.socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)]
    for s in probe:
        s.bind(("127.0.0.1", 0))
    vport, uport = probe[0].getsockname()[1], probe[1].getsockname()[1]
    for s in probe:
        s.close()
    cfg = work / "lvsd.yaml"
    cfg.write_text(config_text(vport, uport, tcp, udp, False))
    name = f"pylvs-soak-{os.getpid()}"
    logf = work / "lvsd.log"
    lvsd = subprocess.Popen([PY, "-m", "lvsd.main", "--foreground", "--no-dr", "--no-vip", "--socket", name,
                             "--config", str(cfg), "--log-file", str(logf)], cwd=ROOT)  # fmt: skip
    deadline = time.monotonic() + 30
    while lvsadm(name, "-L", "-n").returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit("lvsd did not start")
        time.sleep(0.2)
    counts = Counts()
    stop = threading.Event()
    threads = [
        threading.Thread(target=short_client, args=(vport, opts.short_rate / 2, stop, counts))
        for _ in range(2)
    ]
    threads += [threading.Thread(target=keepalive_client, args=(vport, opts.ka_rate, stop, counts))
                for _ in range(opts.ka_conns)]  # fmt: skip
    threads += [threading.Thread(target=udp_client, args=(uport, opts.udp_rate, stop, counts))]
    for t in threads:
        t.daemon = True
        t.start()
    t0 = time.monotonic()
    end = t0 + opts.minutes * 60
    next_flap, next_reload, next_restart, next_sample = (
        t0 + opts.flap,
        t0 + opts.reload,
        t0 + opts.restart,
        t0,
    )
    events: dict[str, int] = {"flaps": 0, "reloads": 0, "restarts": 0, "event_failures": 0}
    pids: list[int] = []
    samples = []
    bump = False
    with out.open("w") as fh:
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_flap:
                next_flap += opts.flap
                a = lvsadm(
                    name, "-e", "-t", f"127.0.0.1:{vport}", "-r", f"127.0.0.1:{tcp[2]}", "-m", "-w", "0"
                )
                time.sleep(2)
                b = lvsadm(
                    name, "-e", "-t", f"127.0.0.1:{vport}", "-r", f"127.0.0.1:{tcp[2]}", "-m", "-w", "3"
                )
                events["flaps"] += 1
                events["event_failures"] += (a.returncode != 0) + (b.returncode != 0)
            if now >= next_reload:
                next_reload += opts.reload
                bump = not bump
                cfg.write_text(config_text(vport, uport, tcp, udp, bump))
                r = lvsadm(name, "--reload")
                events["reloads"] += 1
                events["event_failures"] += r.returncode != 0
            if now >= next_restart:
                next_restart += opts.restart
                r = lvsadm(name, "--restart")
                events["restarts"] += 1
                events["event_failures"] += r.returncode != 0
                if r.returncode != 0:
                    counts.errors.append(f"restart: {r.stderr.strip()}")
            if now >= next_sample:
                next_sample += 10
                try:
                    st = status(name)
                except Exception as exc:
                    counts.add("status_failed", f"status: {exc!r}")
                    continue
                pid = st["pid"]
                if pid not in pids:
                    pids.append(pid)
                rss, fds = proc_facts(pid)
                with counts.lock:
                    c = dict(counts.c)
                sample = {"t": round(now - t0, 1), "pid": pid, "rss_kb": rss, "fds": fds,
                          "entries": st["connections"], **c, **events}  # fmt: skip
                samples.append(sample)
                fh.write(json.dumps(sample) + "\n")
                fh.flush()
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(timeout=40)
        final = status(name)
        rss, fds = proc_facts(final["pid"])
        plane = final["planes"][0] if final["planes"] else ""
        # RSS and fds: the first sample of each lvsd after 60 s of its life vs its last
        by_pid: dict[int, list[dict[str, Any]]] = {}
        for s in samples:
            by_pid.setdefault(s["pid"], []).append(s)
        summary = {
            "summary": True,
            "minutes": round((time.monotonic() - t0) / 60, 1),
            **counts.c,
            **events,
            "pids": pids,
            "final_rss_kb": rss,
            "final_fds": fds,
            "rss_kb_per_pid": {
                str(p): [v[min(6, len(v) - 1)]["rss_kb"], v[-1]["rss_kb"]] for p, v in by_pid.items()
            },
            "fds_per_pid": {str(p): [v[min(6, len(v) - 1)]["fds"], v[-1]["fds"]] for p, v in by_pid.items()},
            "lvsd_counters": plane,
            "errors": counts.errors[:20],
        }
        fh.write(json.dumps(summary) + "\n")
    print(json.dumps(summary, indent=1))
    with contextlib.suppress(ProcessLookupError):
        os.kill(final["pid"], 15)
    lvsd.wait(timeout=30)
    print(f"lvsd log: {logf}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
