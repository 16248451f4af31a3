"""Packets per second forwarded by lvsd's DR/TUN plane (issue 5, point 4).

Topology: tests/nsnet.py (client ns with a bridge, director ns running a real
lvsd, one real server ns).  The generator is trafgen (netsniff-ng) in the
client namespace, pinned to CPU 1, sending a bounded number of 60-byte UDP
frames (256 flows) to VIP:8080 out of the client's port to the director;
lvsd is pinned to CPU 0.  For each mode (DR, IPIP) the script measures:

* sent: frames trafgen sent;
* forwarded: frames that arrived at the real server's director-side port;
* elapsed: from the generator's start until the real server stops receiving;
* pps = forwarded / elapsed;
* CPU per packet = lvsd's own CPU time (user + system, all its threads, from
  /proc/PID/stat) during the run divided by forwarded packets.

The limit: the same frames sent straight to the real server (its client-side
address), counted the same way, no director in the path.

    sudo .venv/bin/python benchmarks/dr_pps.py [--count 300000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import lvsadm, running_lvsd  # noqa: E402
from tests.nsnet import VIP, Topology, rip  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def mac_of(t: Topology, ns: str, dev: str) -> str:
    import json

    return json.loads(t.ns(ns, "ip", "-j", "link", "show", "dev", dev).stdout)[0]["address"]


def trafgen_conf(dst_mac: str, src_mac: str, dst_ip: str, src_ip: str) -> str:
    return (
        "{\n"
        f"  eth(da={dst_mac}, sa={src_mac}, type=0x0800),\n"
        f"  ipv4(daddr={dst_ip}, saddr={src_ip}, ttl=64, df),\n"
        "  udp(sport=dinc(10000, 10255), dport=8080),\n"
        "  fill(0x41, 18),\n"
        "}\n"
    )


def run_gen(t: Topology, dev: str, conf: str, count: int) -> tuple[float, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as fh:
        fh.write(conf)
        path = fh.name
    try:
        t0 = time.monotonic()
        r = t.ns(
            t.client, "taskset", "-c", "1", "trafgen", "--dev", dev, "--conf", path, "-n", str(count),
            "--no-sock-mem", "-q", check=False, timeout=300,
        )  # fmt: skip
        return t0, r.stdout + r.stderr
    finally:
        os.unlink(path)


def rx(t: Topology, ns: str, dev: str) -> int:
    return t.link_stats(ns, dev)["rx"]


def settle(t: Topology, ns: str, dev: str, idle: float = 0.5, limit: float = 60) -> tuple[int, float]:
    """Wait until ``dev`` stops receiving; return (rx count, time of the last change)."""
    last = rx(t, ns, dev)
    last_t = time.monotonic()
    deadline = last_t + limit
    while time.monotonic() < deadline:
        time.sleep(0.1)
        cur = rx(t, ns, dev)
        if cur != last:
            last, last_t = cur, time.monotonic()
        elif time.monotonic() - last_t >= idle:
            break
    return last, last_t


def measure(count: int) -> list[dict]:
    results = []
    with Topology(1) as t:
        t.realserver_vip(1)
        cmac = mac_of(t, t.client, "veth01")
        dmac = mac_of(t, t.director, "veth10")
        rs_cmac = mac_of(t, t.rs[0], "eth0")
        # the limit: straight to the real server over the client bridge
        dev_direct = "veth02"
        t.ns(t.client, "ip", "link", "set", dev_direct, "up")
        base = rx(t, t.rs[0], "eth0")
        t0, _out = run_gen(t, dev_direct, trafgen_conf(rs_cmac, cmac, "10.0.0.3", "10.0.0.2"), count)
        got, t1 = settle(t, t.rs[0], "eth0")
        results.append({"mode": "direct (limit)", "sent": count, "forwarded": got - base, "elapsed": t1 - t0})
        t.ns(t.director, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
        pre = t.prefix(t.director)
        for mode, flag in (("DR", "-g"), ("IPIP", "-i")):
            with running_lvsd("--no-vip", "--no-nat", prefix=["taskset", "-c", "0", *pre]) as sock:
                pid = int(t.ns(t.director, "sh", "-c", f"pgrep -f 'socket {sock}'").stdout.split()[0])
                lvsadm(sock, "-A", "-u", f"{VIP}:8080", "-s", "rr", prefix=pre)
                lvsadm(sock, "-a", "-u", f"{VIP}:8080", "-r", f"{rip(1)}:8080", flag, prefix=pre)
                conf = trafgen_conf(dmac, cmac, VIP, "10.0.0.2")
                run_gen(t, "veth01", conf, 1000)  # warm-up: neighbour, conn entries
                settle(t, t.rs[0], "eth1")
                base = rx(t, t.rs[0], "eth1")
                c0 = cpu_seconds(pid)
                t0, _out = run_gen(t, "veth01", conf, count)
                got, t1 = settle(t, t.rs[0], "eth1")
                cpu = cpu_seconds(pid) - c0
                fwd = got - base
                stats = lvsadm(sock, "-L", "-n", "--stats", prefix=pre).stdout
                results.append(
                    {
                        "mode": mode,
                        "sent": count,
                        "forwarded": fwd,
                        "elapsed": t1 - t0,
                        "cpu": cpu,
                        "stats": stats,
                    }
                )
    return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=300000)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    res = measure(a.count)
    head = ("sent", "forwarded", "elapsed s", "pps", "lvsd CPU s", "us/pkt")
    print(f"{'mode':16} " + " ".join(f"{h:>10}" for h in head))
    for r in res:
        pps = r["forwarded"] / r["elapsed"] if r["elapsed"] > 0 else 0
        cpu = r.get("cpu")
        per = f"{cpu / r['forwarded'] * 1e6:8.2f}" if cpu is not None and r["forwarded"] else f"{'-':>8}"
        cpus = f"{cpu:11.2f}" if cpu is not None else f"{'-':>11}"
        row = f"{r['sent']:10d} {r['forwarded']:10d} {r['elapsed']:10.2f} {pps:10.0f} {cpus} {per}"
        print(f"{r['mode']:16} {row}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
