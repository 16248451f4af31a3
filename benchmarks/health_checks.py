"""What health checking costs lvsd (issue 12, point 4).

1,000 real servers with TCP_CHECK at delay_loop 1 (ten virtual servers of a
hundred each, keepalived.conf read by ``lvsd --keepalived-conf``), in a
network namespace made here where 10.200.0.0/22 is local and one listener on
port 80 accepts (and closes) every check's connection.  Beside them, a NAT
service 10.201.1.1:8000 to a keep-alive HTTP backend; a client sends
requests one after another on one connection and times each.

Runs of lvsd on the same table without the checkers and with them
alternate in the same invocation: lvsd's CPU time (user + system, from
/proc/PID/stat, its checker process included; the main process alone
beside it) per wall second while idle but for the checks, and the
keep-alive latency (p50, p99) measured while the checks run.

    sudo .venv/bin/python benchmarks/health_checks.py [--servers 1000] [--seconds 20] [--requests 5000]
        [--rounds 3]

The machine is shared with other sessions: CPU time is the measure that
holds; latencies move with the load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")

ACCEPTOR = """
import socket, selectors
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(4096); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""

BACKEND = """
import asyncio
async def handle(r, w):
    try:
        while True:
            await r.readuntil(b"\\r\\n\\r\\n")
            w.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
            await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        w.close()
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", 9000)
    print("ready", flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""


def conf(servers: int, checks: bool) -> str:
    out = []
    per_vs = 100
    for v in range((servers + per_vs - 1) // per_vs):
        out.append(f"virtual_server 10.201.0.{v + 1} 80 {{\n  delay_loop 1\n  lb_algo wlc\n  lb_kind DR\n"
                   "  protocol TCP\n")  # fmt: skip
        for i in range(v * per_vs, min(servers, (v + 1) * per_vs)):
            addr = f"10.200.{i // 250}.{i % 250 + 1}"
            check = "    TCP_CHECK {\n      connect_timeout 1\n    }\n" if checks else ""
            out.append(f"  real_server {addr} 80 {{\n    weight 1\n{check}  }}\n")
        out.append("}\n")
    out.append(
        "virtual_server 10.201.1.1 8000 {\n  lb_algo rr\n  lb_kind NAT\n  protocol TCP\n"
        "  real_server 127.0.0.1 9000 {\n    weight 1\n  }\n}\n"
    )
    return "".join(out)


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its live children (lvsd's checker process)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / TICKS
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        with contextlib.suppress(OSError):  # it may just have gone
            total += cpu_seconds(int(child))
    return total


def main_loop_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def lvsadm(sock: str, *args: str) -> str:
    env = {**os.environ, "LVSD_SOCKET": sock, "LVSADM_NO_AUTOSTART": "1"}
    return subprocess.run(
        [PY, "-m", "lvsd.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT
    ).stdout


def keepalive_latencies(n: int) -> list[float]:
    s = socket.create_connection(("10.201.1.1", 8000), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    out = []
    for _ in range(n):
        t = time.perf_counter()
        s.sendall(req)
        got = b""
        while not got.endswith(b"ok"):
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed")
            got += chunk
        out.append(time.perf_counter() - t)
    s.close()
    return out


def one_run(args: argparse.Namespace, checks: bool, tmp: Path) -> dict[str, float]:
    path = tmp / f"keepalived-{checks}.conf"
    path.write_text(conf(args.servers, checks))
    sock = f"pylvs-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [PY, "-m", "lvsd.main", "--foreground", "--socket", sock, "--keepalived-conf", str(path), "--no-dr",
         "--log-level", "warning", *(["--health-in-process"] if args.in_process else [])],
        cwd=ROOT, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "10.201.1.1:8000" not in lvsadm(sock, "-L", "-n"):
            if time.monotonic() > deadline:
                raise TimeoutError("lvsd did not start")
            time.sleep(0.2)
        time.sleep(3)  # bootstrap and warmup: every checker is running
        c0, m0, t0 = cpu_seconds(proc.pid), main_loop_cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        c1, m1, t1 = cpu_seconds(proc.pid), main_loop_cpu_seconds(proc.pid), time.monotonic()
        lat = keepalive_latencies(args.requests)
        listed = lvsadm(sock, "-L", "-n").count("Route")
        status = lvsadm(sock, "--status")
        c2 = cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    lat.sort()
    return {
        "checks": checks,
        "cpu_share": (c1 - c0) / (t1 - t0),
        "main_process_cpu_share": (m1 - m0) / (t1 - t0),
        "cpu_s": c1 - c0,
        "wall_s": t1 - t0,
        "cpu_during_requests_s": c2 - c1,
        "p50_us": statistics.median(lat) * 1e6,
        "p99_us": lat[int(len(lat) * 0.99)] * 1e6,
        "real_servers_listed": listed,
        "servers_down": status.count(" down since"),
    }


def inner(args: argparse.Namespace) -> None:
    codes = (ACCEPTOR, BACKEND)
    helpers = [subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True) for code in codes]
    results: list[dict[str, float]] = []
    try:
        for h in helpers:
            assert h.stdout is not None and h.stdout.readline().strip() == "ready"
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):  # alternate, so both see the same changing load
                for checks in (False, True):
                    r = one_run(args, checks, Path(tmp))
                    print(json.dumps(r), flush=True)
                    results.append(r)
    finally:
        for h in helpers:
            h.kill()

    def med(checks: bool, field: str) -> float:
        return statistics.median(r[field] for r in results if r["checks"] == checks)

    cpu, cpu0 = med(True, "cpu_share") * 100, med(False, "cpu_share") * 100
    p99, p99_0 = med(True, "p99_us"), med(False, "p99_us")
    p50, p50_0 = med(True, "p50_us"), med(False, "p50_us")
    print(
        f"# medians of {args.rounds} rounds: lvsd CPU with {args.servers} TCP_CHECKs at delay_loop 1 "
        f"{cpu:.1f} % of a core (without checks {cpu0:.1f} %); keep-alive p99 {p99:.0f} us with, "
        f"{p99_0:.0f} us without ({p99 / p99_0:.2f}x); p50 {p50:.0f} / {p50_0:.0f} us"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs without and with checks")
    ap.add_argument("--in-process", action="store_true", help="lvsd --health-in-process (no checker process)")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        inner(args)
        return 0
    ns = f"i12bench{uuid.uuid4().hex[:6]}"
    run = lambda *a: subprocess.run(["ip", "-n", ns, *a], check=True)  # noqa: E731
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run("link", "set", "lo", "up")
        run("route", "add", "local", "10.200.0.0/22", "dev", "lo")
        run("route", "add", "local", "10.201.0.0/16", "dev", "lo")
        cmd = ["ip", "netns", "exec", ns, PY, str(Path(__file__).resolve()), "--inner", "--servers",
               str(args.servers), "--seconds", str(args.seconds), "--requests", str(args.requests),
               "--rounds", str(args.rounds), *(["--in-process"] if args.in_process else [])]  # fmt: skip
        return subprocess.run(cmd, cwd=ROOT).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    raise SystemExit(main())
