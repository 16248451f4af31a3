"""``lvsadm simulate --report`` on a 10^5-flow scenario (issue 14: under 10 s).

Writes two scenarios with 100,000 flows each to a temporary directory, eight
real servers of weights 1..8:

* ``tcp``: wlc over TCP; the first 50,000 connections are opened and closed
  (``hold=0``), a minute passes, then 50,000 are held open (three-way
  handshake, each an ESTABLISHED entry), with two snapshots;
* ``udp``: wrr over UDP, 100,000 datagrams from 60,000 clients.

Each runs as a user runs it, ``python -m lvsd.cli simulate --report FILE``
with the output to /dev/null, in a child process; reported: the child's CPU
time (user + system) and wall time, best of REPS, and the same scenario as
plain JSON lines (no ``--report``) for the ratio.  The machine is shared, so
CPU time is the number to compare; wall time is shown for the target.

    .venv/bin/python benchmarks/teaching_report.py [REPS]
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVERS = [f"10.1.0.{k}:80" for k in range(1, 9)]


def scenario(proto: str) -> str:
    flag = "-t" if proto == "tcp" else "-u"
    sched = "wlc" if proto == "tcp" else "wrr"
    lines = ["local 10.1.0.0/24 10.2.0.0/16", "listen " + " ".join(SERVERS),
             f"ipvsadm -A {flag} 10.0.0.1:80 -s {sched}"]
    lines += [f"ipvsadm -a {flag} 10.0.0.1:80 -r {rs} -m -w {k}" for k, rs in enumerate(SERVERS, 1)]
    if proto == "tcp":
        lines += [
            "flows tcp 50000 src=10.2.0.1:1024 dst=10.0.0.1:80 srcmod=60000 hold=0",
            "sleep 60",
            "snapshot",
            "flows tcp 50000 src=10.2.0.1:30000 dst=10.0.0.1:80 srcmod=60000",
            "snapshot",
        ]
    else:
        lines += ["flows udp 100000 src=10.2.0.1:1024 dst=10.0.0.1:80 srcmod=60000", "snapshot"]
    return "\n".join(lines) + "\n"


def run(args: list[str]) -> tuple[float, float]:
    """(CPU seconds of the child, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(os.devnull, "w") as sink:
        cmd = [sys.executable, "-m", "lvsd.cli", "simulate", *args]
        subprocess.run(cmd, stdout=sink, check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'scenario':<10}{'mode':<10}{'CPU s':>8}{'wall s':>8}{'CPU us/flow':>13}")
        for proto in ("tcp", "udp"):
            path = Path(tmp) / f"{proto}-100k.scn"
            path.write_text(scenario(proto))
            results = {}
            for mode, extra in (("report", ["--report"]), ("json", [])):
                best = min((run([*extra, str(path)]) for _ in range(reps)), key=lambda r: r[0])
                results[mode] = best
                print(f"{proto:<10}{mode:<10}{best[0]:>8.2f}{best[1]:>8.2f}{best[0] / 1e5 * 1e6:>13.1f}")
            ratio = results["report"][0] / results["json"][0]
            print(f"{proto:<10}{'ratio':<10}{ratio:>8.2f}  (report / json, CPU)")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
