"""Packets per second forwarded by lvsd's DR/TUN plane (issue 5, point 4).

Topology: tests/nsnet.py (client ns with a bridge, director ns running a real
lvsd, one real server ns).  The generator is trafgen (netsniff-ng) in the
client namespace, on CPU 1 only, sending a bounded number of 60-byte UDP
frames (256 flows) to VIP:8080 out of the client's port to the director;
lvsd is pinned to CPU 0.  (trafgen forks a worker per CPU and pins each one
itself, whatever taskset says: without the ``cpu(1):`` prefix of its packet
configuration half of the traffic came from CPU 0, lvsd's own CPU.  Its
pacing option ``-b`` is not used: paced, it runs one worker pinned to CPU 0,
and here it did not hold the rate asked for.)  One run measures, in order:

* the limit: the same frames sent straight to the real server (its
  client-side address), no director in the path;
* DR (``-g``) and IPIP (``-i``) through a fresh lvsd each.

What the real server receives is counted exactly by an nftables rule on the
ingress hook of its interface (``netdev`` family: before the IP stack), which
matches only the benchmark's frames and drops them after counting:

* limit: ``ip daddr <rs client-side address> udp dport 8080`` on eth0;
* DR: ``ip daddr VIP udp dport 8080`` on eth1 (the frame still carries the
  VIP: only the MAC was rewritten);
* IPIP: ``ip daddr RIP ip protocol 4`` (nft's name for 4 is ``ipencap``;
  ``ipip`` is protocol 94) plus the inner destination (VIP) and inner UDP
  port (8080) read at their offsets behind the outer header, so only
  well-formed encapsulations count.

Dropping at ingress matters on a one-host test bed: a veth peer receives in
the sender's context, so whatever the real server's stack did with the
packet (UDP lookup, ICMP port/protocol unreachable, or the userspace IPIP
decapsulation of lvs-realserver) would be charged to lvsd's CPU, which a
real server on its own host never is.  The rule leaves only the veth hop
and one netdev hook in lvsd's context.

Per mode: sent; offered/s = sent / the time from the first to the last frame
arriving at the director (at the real server for the limit), the rate
trafgen reached; forwarded = the rule's counter; elapsed = from the first to
the last frame the real server received (small samplers in the namespaces,
SCHED_FIFO on CPU 1, read the interfaces' rx counters every 2 ms); pps =
forwarded / elapsed; lvsd's user and system CPU time during the run (all
threads, /proc/PID/stat) and CPU per packet = (user + system) / forwarded;
"wait s" = the time lvsd was runnable but waiting for its CPU (schedstat).
The offered rate is whatever trafgen reaches; when lvsd cannot keep up its
receive ring overflows ("ring drops" in ``lvsadm --status``), so pps is the
throughput under overload; on a shared machine other processes also take
CPU 0 from lvsd ("wait s") and the ring overflows while it waits.  Before
each measured run a warm-up repeats until every flow's frames reach the real
server (neighbour resolved, the 256 connection entries exist).

    sudo .venv/bin/python benchmarks/dr_pps.py [--count 200000] [--nice N | --fifo P]

``--nice N`` or ``--fifo P`` (SCHED_FIFO, ``chrt -f P``) give lvsd its core
the way a production data plane gets an isolated one, and trafgen its own
(so the limit is the generator's best); the first output line states which
was used, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import lvsadm, running_lvsd  # noqa: E402
from tests.nsnet import PY, VIP, Topology, rip  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PORT = 8080
FLOWS = 256
#: the generator's and lvsd's CPUs
CPUS = {"gen": "1", "lvsd": "0"}

#: runs in the real server's namespace: the times of the first and last change
#: of an interface's rx counter (sysfs), sampled every 2 ms
SAMPLER = r"""
import json, sys, time
dev, limit = sys.argv[1], float(sys.argv[2])
path = f"/sys/class/net/{dev}/statistics/rx_packets"
def rx():
    with open(path) as fh:
        return int(fh.read())
base = last = rx()
print("ready", flush=True)
first_t = last_t = None
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    time.sleep(0.002)
    cur = rx()
    now = time.monotonic()
    if cur != last:
        if first_t is None:
            first_t = now
        last, last_t = cur, now
    elif last_t is not None and now - last_t > 0.5:
        break
print(json.dumps({"first": first_t, "last": last_t, "rx": last - base}), flush=True)
"""


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(user, system) clock ticks of a process, all its threads."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def mac_of(t: Topology, ns: str, dev: str) -> str:
    return json.loads(t.ns(ns, "ip", "-j", "link", "show", "dev", dev).stdout)[0]["address"]


def trafgen_conf(dst_mac: str, src_mac: str, dst_ip: str, src_ip: str) -> str:
    # cpu(N): trafgen forks one worker per CPU and pins each one itself,
    # whatever taskset says; only this prefix keeps it off lvsd's CPU
    return (
        f"cpu({CPUS['gen']}): {{\n"
        f"  eth(da={dst_mac}, sa={src_mac}, type=0x0800),\n"
        f"  ipv4(daddr={dst_ip}, saddr={src_ip}, ttl=64, df),\n"
        f"  udp(sport=dinc(10000, {10000 + FLOWS - 1}), dport={PORT}),\n"
        "  fill(0x41, 18),\n"
        "}\n"
    )


def hexip(ip: str) -> str:
    return "0x" + "".join(f"{int(x):02x}" for x in ip.split("."))


def sink(t: Topology, ns: str, dev: str, match: str) -> None:
    """An ingress rule on ``dev`` that counts and drops the benchmark's frames."""
    rules = (
        "table netdev lvsbench {\n"
        f'  chain in {{ type filter hook ingress device "{dev}" priority 0;\n'
        f"    {match} counter drop\n"
        "  }\n"
        "}\n"
    )
    subprocess.run(
        [*t.prefix(ns), "nft", "-f", "-"], input=rules, text=True, check=True, capture_output=True, timeout=30
    )


def sink_count(t: Topology, ns: str) -> int:
    out = json.loads(t.ns(ns, "nft", "-j", "list", "table", "netdev", "lvsbench").stdout)
    for item in out["nftables"]:
        rule = item.get("rule")
        if rule:
            for expr in rule["expr"]:
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
    raise RuntimeError("no counter in the sink rule")


def sink_reset(t: Topology, ns: str) -> None:
    t.ns(ns, "nft", "delete", "table", "netdev", "lvsbench", check=False)


def sched_wait(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU
    (/proc/PID/task/*/schedstat, second field)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as fh:
                total += int(fh.read().split()[1])
        except OSError:
            continue
    return total / 1e9


def sched_prefix(nice: int, fifo: int) -> list[str]:
    if fifo:
        return ["chrt", "-f", str(fifo)]
    return ["nice", "-n", str(nice)] if nice else []


#: lvsd's and trafgen's scheduling (``--nice``/``--fifo``)
SCHED: list[str] = []


def run_gen(t: Topology, dev: str, conf: str, count: int) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as fh:
        fh.write(conf)
        path = fh.name
    try:
        r = t.ns(
            t.client, *SCHED, "taskset", "-c", CPUS["gen"], "trafgen", "--dev", dev, "--conf", path,
            "-n", str(count), "--no-sock-mem", "-q", check=False, timeout=300,
        )  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"trafgen failed: {r.stderr.strip()}")
        return r.stdout + r.stderr
    finally:
        os.unlink(path)


def timed_run(t: Topology, points: list[tuple[str, str]], gen_dev: str, conf: str, count: int) -> list[float]:
    """Start a sampler on each (namespace, interface) of ``points``, run the
    generator, return each one's window (first to last frame received).  The
    samplers run SCHED_FIFO on the generator's CPU (they sleep 2 ms between
    two reads of a counter) so that their timing does not depend on its load."""
    procs = []
    try:
        for ns, dev in points:
            rt = ["chrt", "-f", "20", "taskset", "-c", CPUS["gen"]]
            cmd = [*t.prefix(ns), *rt, PY, "-c", SAMPLER, dev, "120"]
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("sampler did not start")
        run_gen(t, gen_dev, conf, count)
        windows = []
        for p in procs:
            assert p.stdout is not None
            res = json.loads(p.stdout.readline())
            p.wait(timeout=130)
            windows.append(res["last"] - res["first"] if res["first"] is not None else 0.0)
        return windows
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()


def warm_up(t: Topology, ns: str, gen_dev: str, conf: str, limit: float = 30) -> int:
    """Send one frame per flow, four times over, until all of them arrive."""
    deadline = time.monotonic() + limit
    rounds = 0
    while time.monotonic() < deadline:
        before = sink_count(t, ns)
        run_gen(t, gen_dev, conf, 4 * FLOWS)
        time.sleep(0.3)
        rounds += 1
        if sink_count(t, ns) - before == 4 * FLOWS:
            return rounds
    raise RuntimeError("warm-up: lvsd does not forward every frame")


def measure(count: int, nice: int = 0, fifo: int = 0) -> list[dict]:
    SCHED[:] = sched_prefix(nice, fifo)
    results = []
    with Topology(1) as t:
        t.realserver_vip(1)
        rs = t.rs[0]
        cmac = mac_of(t, t.client, "veth01")
        dmac = mac_of(t, t.director, "veth10")
        rs_cmac = mac_of(t, rs, "eth0")
        rs_caddr = "10.0.0.3"
        # the limit: straight to the real server over the client bridge
        dev_direct = "veth02"
        t.ns(t.client, "ip", "link", "set", dev_direct, "up")
        conf = trafgen_conf(rs_cmac, cmac, rs_caddr, "10.0.0.2")
        sink(t, rs, "eth0", f"ip daddr {rs_caddr} udp dport {PORT}")
        warm_up(t, rs, dev_direct, conf)
        base = sink_count(t, rs)
        (elapsed,) = timed_run(t, [(rs, "eth0")], dev_direct, conf, count)
        fwd = sink_count(t, rs) - base
        results.append(
            {
                "mode": "direct (limit)",
                "sent": count,
                "forwarded": fwd,
                "elapsed": elapsed,
                "offered": elapsed,
            }
        )
        sink_reset(t, rs)
        t.ns(t.director, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
        pre = t.prefix(t.director)
        matches = {
            "DR": f"ip daddr {VIP} udp dport {PORT}",
            # outer: to the RIP, protocol 4; inner (20 bytes on): daddr VIP, dport 8080
            "IPIP": f"ip daddr {rip(1)} ip protocol 4 @nh,288,32 {hexip(VIP)} @nh,336,16 {PORT}",
        }
        for mode, flag in (("DR", "-g"), ("IPIP", "-i")):
            sink(t, rs, "eth1", matches[mode])
            lvsd_pre = [*pre, *SCHED, "taskset", "-c", CPUS["lvsd"]]
            with running_lvsd("--no-vip", "--no-nat", prefix=lvsd_pre) as sock:
                pid = int(t.ns(t.director, "sh", "-c", f"pgrep -f 'socket {sock}'").stdout.split()[0])
                lvsadm(sock, "-A", "-u", f"{VIP}:{PORT}", "-s", "rr", prefix=pre)
                lvsadm(sock, "-a", "-u", f"{VIP}:{PORT}", "-r", f"{rip(1)}:{PORT}", flag, prefix=pre)
                conf = trafgen_conf(dmac, cmac, VIP, "10.0.0.2")
                rounds = warm_up(t, rs, "veth01", conf)
                base = sink_count(t, rs)
                c0 = cpu_ticks(pid)
                w0 = sched_wait(pid)
                elapsed, offered = timed_run(t, [(rs, "eth1"), (t.director, "veth10")], "veth01", conf, count)
                c1 = cpu_ticks(pid)
                w1 = sched_wait(pid)
                fwd = sink_count(t, rs) - base
                status = lvsadm(sock, "--status", prefix=pre).stdout
                stats = lvsadm(sock, "-L", "-n", "--stats", prefix=pre).stdout
                res = dict(
                    mode=mode,
                    sent=count,
                    forwarded=fwd,
                    elapsed=elapsed,
                    offered=offered,
                    user=(c1[0] - c0[0]) / TICK,
                    sys=(c1[1] - c0[1]) / TICK,
                    wait=w1 - w0,
                    warmup_rounds=rounds,
                    status=status,
                    stats=stats,
                )
                results.append(res)
            sink_reset(t, rs)
    return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200000)
    ap.add_argument("--nice", type=int, default=0, help="run lvsd and trafgen at this nice value")
    ap.add_argument(
        "--fifo", type=int, default=0, help="run lvsd and trafgen SCHED_FIFO at this priority (chrt -f)"
    )
    ap.add_argument("--verbose", "-v", action="store_true", help="print lvsd's status and stats per mode")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    with open("/proc/loadavg", encoding="ascii") as fh:
        load = fh.read().split()[:3]
    sched = f"SCHED_FIFO {a.fifo}" if a.fifo else f"nice {a.nice}"
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs, load average {' '.join(load)}, "
        f"lvsd and trafgen {sched}, count {a.count}"
    )
    res = measure(a.count, a.nice, a.fifo)
    head = ("sent", "offered/s", "forwarded", "elapsed s", "pps", "user s", "sys s", "us/pkt", "wait s")
    print(f"{'mode':16} " + " ".join(f"{h:>10}" for h in head))
    for r in res:
        el = r["elapsed"]
        pps = r["forwarded"] / el if el > 0 else 0
        if "user" in r:
            cpu = r["user"] + r["sys"]
            per = f"{cpu / r['forwarded'] * 1e6:10.2f}" if r["forwarded"] else f"{'-':>10}"
            cpus = f"{r['user']:10.2f} {r['sys']:10.2f}"
            per += f" {r['wait']:10.2f}"
        else:
            per = f"{'-':>10} {'-':>10}"
            cpus = f"{'-':>10} {'-':>10}"
        offered = r["sent"] / r["offered"] if r["offered"] > 0 else 0
        print(
            f"{r['mode']:16} {r['sent']:10d} {offered:10.0f} {r['forwarded']:10d} {el:10.3f} {pps:10.0f} "
            f"{cpus} {per}"
        )
    for r in res:
        if "status" in r:
            plane = [ln.strip() for ln in r["status"].splitlines() if "dr/tun" in ln]
            print(f"# {r['mode']}: {plane[0] if plane else r['status'].strip()}")
            if a.verbose:
                print(r["stats"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
