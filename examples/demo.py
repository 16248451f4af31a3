"""make demo: a real lvsd, real backends, real traffic, visible balancing.

1. replays a kernel scenario through the emulated kernel (teaching view);
2. starts three HTTP backends and an lvsd in the foreground on its own
   control socket, configures a weighted round-robin service with lvsadm,
   sends 60 real HTTP requests and shows who answered, then the table with
   its counters and connection entries;
3. serves lvsd's status page and /metrics (``lvsd --http``) and prints
   their URL; on a terminal it keeps a little traffic flowing so the page
   moves, until Ctrl-C (``DEMO_SECONDS=N`` bounds it, 0 ends at once);
4. stops everything it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SOCKET = f"pylvs-demo-{os.getpid()}"
ENV = {**os.environ, "LVSD_SOCKET": SOCKET, "LVSADM_NO_AUTOSTART": "1"}


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m")


def lvsadm(*args: str, show: bool = True) -> str:
    cmd = [PY, "-m", "lvsd.cli", *args]
    if show:
        print("$ lvsadm " + " ".join(args))
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"lvsadm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    if show and proc.stdout:
        print(proc.stdout, end="")
    return proc.stdout


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


BACKEND = r"""
import asyncio, sys
port = int(sys.argv[1])
async def handle(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    body = f"Hello, {port}!\n".encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain(); writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print("ready", flush=True)
    async with server: await server.serve_forever()
asyncio.run(main())
"""


async def fetch(port: int) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    writer.write(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data.split(b"\r\n\r\n", 1)[1].decode().strip()


def replay_part() -> None:
    banner("1. The emulated kernel replays a recorded scenario (wrr over UDP)")
    scn = ROOT / "tests" / "data" / "scenarios" / "wrr-udp.scn"
    out = subprocess.run(
        [PY, "-m", "lvsd.cli", "simulate", str(scn)], capture_output=True, text=True, check=True
    )
    trace = ROOT / "tests" / "data" / "traces" / "wrr-udp.jsonl"
    ours = [json.loads(x) for x in out.stdout.splitlines() if '"i"' in x]
    kernel = [json.loads(x) for x in trace.read_text().splitlines() if '"i"' in x]
    same = sum(a["real_server"] == b["real_server"] for a, b in zip(ours, kernel))
    print(
        "first 12 decisions:", " ".join(d["real_server"].split(":")[0].rsplit(".", 1)[1] for d in ours[:12])
    )
    print(f"{same}/{len(kernel)} decisions identical to Linux 6.1's IPVS")


def live_part() -> None:
    vport, http_port, *ports = free_ports(5)
    procs: list[subprocess.Popen] = []
    try:
        banner("2. Three HTTP backends and a real lvsd")
        for port in ports:
            p = subprocess.Popen([PY, "-c", BACKEND, str(port)], stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        lvsd = subprocess.Popen(
            [PY, "-m", "lvsd.main", "--foreground", "--socket", SOCKET, "--no-vip", "--no-dr",
             "--http", f"127.0.0.1:{http_port}"],
            env=ENV,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(lvsd)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                lvsadm("-L", "-n", show=False)
                break
            except SystemExit:
                time.sleep(0.1)
        vip = f"127.0.0.1:{vport}"
        lvsadm("-A", "-t", vip, "-s", "wrr")
        for weight, port in enumerate(ports, 1):
            lvsadm("-a", "-t", vip, "-r", f"127.0.0.1:{port}", "-m", "-w", str(weight))

        banner("3. 60 HTTP requests to the virtual service")

        async def run() -> list[str]:
            answers = []
            for _ in range(60):
                answers.append(await fetch(vport))
            return answers

        answers = asyncio.run(run())
        print("first 12 answers:", " ".join(a.split(",")[1].strip(" !") for a in answers[:12]))
        for answer, count in sorted(Counter(answers).items()):
            print(f"  {answer:<18} {count:3d} {'#' * count}")
        banner("4. The table, as ipvsadm would show it")
        lvsadm("-L", "-n")
        lvsadm("-L", "-n", "--stats")
        print("$ lvsadm -L -c -n | head -5")
        print("\n".join(lvsadm("-L", "-c", "-n", show=False).splitlines()[:5]))
        watch(vport, http_port)
    finally:
        banner("6. Cleaning up")
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        print("stopped lvsd and the backends")


def watch(vport: int, http_port: int) -> None:
    """Point at the status page and /metrics, and keep traffic flowing."""
    import urllib.request

    banner("5. Watch it: lvsd --http serves a live status page and Prometheus metrics")
    url = f"http://127.0.0.1:{http_port}/"
    print(f"status page:  {url}")
    print(f"metrics:      {url}metrics   (node_exporter's node_ipvs_* names)")
    with urllib.request.urlopen(url + "metrics", timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    print("$ curl -s " + url + "metrics | grep '^node_ipvs_backend_weight'")
    print("\n".join(line for line in lines if line.startswith("node_ipvs_backend_weight")))
    seconds = float(os.environ.get("DEMO_SECONDS", "inf" if sys.stdin.isatty() else "0"))
    if seconds <= 0:
        return
    print(f"\nopen {url} in a browser; 5 requests/s keep flowing; Ctrl-C stops the demo")
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            asyncio.run(fetch(vport))
            time.sleep(0.2)
    except KeyboardInterrupt:
        print()


def main() -> int:
    os.chdir(ROOT)
    replay_part()
    live_part()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
