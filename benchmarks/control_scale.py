#!/usr/bin/env python3
"""Control-plane scale (issue 3, point 5): ``lvsadm -R`` of 10,000 services
with 10 real servers each into a fresh lvsd, then ``lvsadm -L -n`` and
``lvsadm -S -n`` of it, and lvsd's memory.

Targets: restore under 10 s, listing under 2 s, memory under 500 MB.

The rules file is what ``ipvsadm -S -n`` writes (so the saved table must
come back line for line, which is checked): 70 % TCP/IPv4 services on :80,
10 % UDP/IPv4 on :53, 10 % TCP/IPv6 on :443, all with 10 masquerading real
servers, and 10 % firewall-mark services with 10 direct-routing ones;
weights 1..10; one scheduler for all (``--scheduler``, default wlc as
ipvsadm's default; ``mix`` cycles through all 14).

Every time is wall-clock time of the ``lvsadm`` process as a user runs it
(interpreter start, reading stdin, the request, the daemon's work, the
reply); next to it, the CPU time lvsd spent meanwhile (user + system from
/proc/PID/stat), which other load on the machine inflates less.  Memory:
VmRSS and VmHWM (peak) of the lvsd process from
/proc/PID/status, before the restore, after it, and after the listings.
After the restore the script waits for lvsd to go quiet (it works on for a
moment: scheduler timers, the rate estimator) before listing, and reports
that time; at the end, the CPU an idle lvsd spends on such a table.

Modes:

* ``control`` (always): ``lvsd --no-nat --no-dr``, the control plane alone.
* ``nat`` (``--nat``, needs root and iproute2): lvsd with its NAT data plane
  in a fresh network namespace (so its 9,000 listening sockets and VIPs on
  ``lo`` stay there); the time until the plane serves every TCP/UDP service
  is measured too.

``--profile`` runs the same restore and listings in-process under cProfile
and prints the top functions (to find hot spots in the ipvsadm, listing and
ctl code).

    .venv/bin/python benchmarks/control_scale.py [--services 10000] [--dests 10]
        [--scheduler wlc|mix|NAME] [--repeat 3] [--nat] [--no-control]
        [--lvsd-arg=--no-vip] [--profile] [--json OUT]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import ipaddress
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lvs.sched import SCHEDULER_NAMES  # noqa: E402

PY = sys.executable
Completed = subprocess.CompletedProcess[bytes]
TARGETS = {"restore_s": 10.0, "list_s": 2.0, "rss_mb": 500.0}


# ---------------------------------------------------------------------------
# the rules
# ---------------------------------------------------------------------------


def rules(services: int, dests: int, scheduler: str) -> str:
    """An ``ipvsadm -S -n`` text: ``services`` services of ``dests`` real servers."""
    out: list[str] = []
    for i in range(services):
        sched = SCHEDULER_NAMES[i % len(SCHEDULER_NAMES)] if scheduler == "mix" else scheduler
        kind = i % 10
        a, b = divmod(i, 250)
        if kind < 7:
            key, port, method = f"-t 10.{a}.{b}.1:80", 8080, "-m"
        elif kind == 7:
            key, port, method = f"-u 10.{a}.{b}.2:53", 53, "-m"
        elif kind == 8:
            key, port, method = f"-t [{ipaddress.IPv6Address(f'2001:db8:{i:x}::1')}]:443", 443, "-m"
        else:
            key, port, method = f"-f {i + 1}", 0, "-g"
        out.append(f"-A {key} -s {sched}")
        for j in range(dests):
            if kind == 8:
                rip = f"[{ipaddress.IPv6Address(f'2001:db8:ffff:{j:x}::{b + 1:x}')}]:{port}"
            else:
                rip = f"192.168.{j}.{b + 1}:{port}"
            out.append(f"-a {key} -r {rip} {method} -w {j + 1}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# one lvsd
# ---------------------------------------------------------------------------


def memory(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time lvsd has used so far (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Run:
    mode: str
    services: int
    dests: int
    scheduler: str
    restore_s: float = 0.0
    restore_cpu_s: float = 0.0
    plane_ready_s: float | None = None
    list_s: list[float] = field(default_factory=list)
    list_cpu_s: list[float] = field(default_factory=list)
    save_s: list[float] = field(default_factory=list)
    settle_s: float = 0.0
    settle_cpu_s: float = 0.0
    idle_cpu_pct: float = 0.0
    rss_before_mb: float = 0.0
    rss_after_restore_mb: float = 0.0
    rss_after_listing_mb: float = 0.0
    hwm_mb: float = 0.0
    list_lines: int = 0
    save_identical: bool = False
    plane: str = ""


class Lvsd:
    """``lvsd --foreground`` on a fresh socket, optionally in a namespace."""

    def __init__(self, extra: list[str], netns: str | None, log: Path) -> None:
        self.name = f"pylvs-scale-{uuid.uuid4().hex[:8]}"
        self.prefix = ["ip", "netns", "exec", netns] if netns else []
        self.env = {**os.environ, "LVSD_SOCKET": self.name, "LVSADM_NO_AUTOSTART": "1"}
        self.log = log.open("wb")
        # `ip netns exec` execs in place, so the pid is lvsd's
        self.proc = subprocess.Popen(
            [*self.prefix, PY, "-m", "lvsd.main", "--foreground", "--socket", self.name, *extra],
            stdout=subprocess.DEVNULL, stderr=self.log, cwd=ROOT, preexec_fn=_raise_nofile,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while self.lvsadm("-L", "-n").returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("lvsd did not start")
            time.sleep(0.05)

    def lvsadm(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*self.prefix, PY, "-m", "lvsd.cli", *args], input=stdin, capture_output=True, env=self.env,
            cwd=ROOT, timeout=600, check=False,
        )  # fmt: skip

    def timed(self, *args: str, stdin: bytes | None = None) -> tuple[float, Completed]:
        t0 = time.perf_counter()
        r = self.lvsadm(*args, stdin=stdin)
        elapsed = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"lvsadm {' '.join(args)}: {r.returncode} {r.stderr[-500:]!r}")
        return elapsed, r

    def plane_line(self) -> str:
        out = self.lvsadm("--status").stdout.decode()
        return next((ln for ln in out.splitlines() if ln.startswith("data plane: nat")), "")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


IDLE_WINDOW = 4.0


def settle(pid: int, limit: float = 30.0) -> tuple[float, float]:
    """Wait until lvsd uses under 20 % of a CPU over half a second (it works
    on after a restore: scheduler timers, the rate estimator's first passes);
    (seconds waited, CPU seconds it used meanwhile)."""
    t0, c0 = time.perf_counter(), cpu_seconds(pid)
    while time.perf_counter() - t0 < limit:
        c = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - c < 0.1:
            break
    return time.perf_counter() - t0, cpu_seconds(pid) - c0


def served_count(line: str) -> int:
    """TCP + UDP services the NAT plane says it serves."""
    words = line.split()
    try:
        return int(words[words.index("TCP") - 1]) + int(words[words.index("UDP") - 1])
    except (ValueError, IndexError):
        return -1


def measure(mode: str, text: str, args: argparse.Namespace, work: Path, listings: int) -> Run:
    run = Run(" ".join([mode, *args.lvsd_arg]), args.services, args.dests, args.scheduler)
    netns = None
    extra = ["--no-dr", *args.lvsd_arg]
    if mode == "control":
        extra.append("--no-nat")
    else:
        netns = f"pylvs-scale-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
    d = None
    try:
        d = Lvsd(extra, netns, work / f"lvsd-{mode}.log")
        pid = d.proc.pid
        run.rss_before_mb = memory(pid)[0]
        cpu = cpu_seconds(pid)
        run.restore_s, _ = d.timed("-R", stdin=text.encode())
        run.restore_cpu_s = cpu_seconds(pid) - cpu
        if mode == "nat":
            wanted = sum(1 for ln in text.splitlines() if ln.startswith(("-A -t", "-A -u")))
            t0 = time.perf_counter()
            while served_count(d.plane_line()) < wanted and time.perf_counter() - t0 < 600:
                time.sleep(0.2)
            run.plane_ready_s = run.restore_s + (time.perf_counter() - t0)
            run.plane = d.plane_line()
        run.rss_after_restore_mb = memory(pid)[0]
        run.settle_s, run.settle_cpu_s = settle(pid)
        for _ in range(listings):
            cpu = cpu_seconds(pid)
            elapsed, r = d.timed("-L", "-n")
            run.list_cpu_s.append(cpu_seconds(pid) - cpu)
            run.list_s.append(elapsed)
            run.list_lines = r.stdout.count(b"\n")
            elapsed, r = d.timed("-S", "-n")
            run.save_s.append(elapsed)
            saved = r.stdout.decode()
        run.save_identical = sorted(saved.splitlines()) == sorted(text.splitlines())
        run.rss_after_listing_mb, run.hwm_mb = memory(pid)
        cpu = cpu_seconds(pid)
        time.sleep(IDLE_WINDOW)
        run.idle_cpu_pct = 100 * (cpu_seconds(pid) - cpu) / IDLE_WINDOW
    finally:
        if d is not None:
            d.stop()
        if netns:
            subprocess.run(["ip", "netns", "del", netns], check=False)
    return run


# ---------------------------------------------------------------------------
# in-process profile
# ---------------------------------------------------------------------------


def profile(text: str, top: int = 25) -> None:
    from lvs.ctl import IPVS
    from lvs.ipvsadm.commands import run
    from lvs.ipvsadm.names import NullResolver

    ipvs = IPVS()
    resolver = NullResolver()

    def step(title: str, fn: Callable[[], object]) -> None:
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        fn()
        prof.disable()
        print(f"\n== {title}: {time.perf_counter() - t0:.2f} s in-process (under the profiler)")
        pstats.Stats(prof).sort_stats("tottime").print_stats(top)

    def ipvsadm(*argv: str, stdin: str | None = None) -> None:
        out, err = io.StringIO(), io.StringIO()
        rc = run(list(argv), ipvs, 0.0, out, err, resolver=resolver, stdin=stdin)
        assert rc == 0, err.getvalue()[:500]

    step("-R", lambda: ipvsadm("-R", stdin=text))
    step("-L -n", lambda: ipvsadm("-L", "-n"))
    step("-S -n", lambda: ipvsadm("-S", "-n"))


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def verdict(value: float, target: float) -> str:
    return "yes" if value < target else "**no**"


def table(runs: list[Run]) -> str:
    rows = [
        "| mode | scheduler | -R s | lvsd CPU in -R s | NAT plane serving all s | busy after -R s (CPU s) "
        "| -L -n s (median) | lvsd CPU in -L -n s (median) | -S -n s (median) | idle lvsd CPU % "
        "| RSS before MB | RSS after -R MB | RSS after listings MB | peak (VmHWM) MB | -S identical |",
        "| --- | --- |" + " ---: |" * 12 + " --- |",
    ]
    for r in runs:
        ready = f"{r.plane_ready_s:.2f}" if r.plane_ready_s is not None else "–"
        rows.append(
            f"| {r.mode} | {r.scheduler} | {r.restore_s:.2f} | {r.restore_cpu_s:.2f} | {ready} "
            f"| {r.settle_s:.1f} ({r.settle_cpu_s:.2f}) "
            f"| {statistics.median(r.list_s):.2f} | {statistics.median(r.list_cpu_s):.2f} "
            f"| {statistics.median(r.save_s):.2f} | {r.idle_cpu_pct:.0f} "
            f"| {r.rss_before_mb:.0f} | {r.rss_after_restore_mb:.0f} "
            f"| {r.rss_after_listing_mb:.0f} | {r.hwm_mb:.0f} | {'yes' if r.save_identical else '**no**'} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--dests", type=int, default=10)
    ap.add_argument("--scheduler", default="wlc", help="a scheduler name, or 'mix' (all 14 in turn)")
    ap.add_argument("--repeat", type=int, default=1, help="fresh daemons per mode")
    ap.add_argument("--listings", type=int, default=3, help="-L -n and -S -n runs per daemon")
    ap.add_argument("--nat", action="store_true", help="also with the NAT plane, in a network namespace")
    ap.add_argument("--no-control", action="store_true", help="skip the control-plane-only mode")
    ap.add_argument("--lvsd-arg", action="append", default=[], help="extra lvsd argument (repeatable)")
    ap.add_argument("--profile", action="store_true", help="profile the same work in-process")
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args(argv)
    if args.scheduler != "mix" and args.scheduler not in SCHEDULER_NAMES:
        ap.error(f"unknown scheduler {args.scheduler}")
    if args.nat and (os.geteuid() != 0 or shutil.which("ip") is None):
        ap.error("--nat needs root and iproute2")

    text = rules(args.services, args.dests, args.scheduler)
    print(
        f"{args.services} services x {args.dests} real servers, scheduler {args.scheduler}: "
        f"{text.count(chr(10))} lines, {len(text) / 1e6:.1f} MB; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    if args.profile:
        profile(text)
        return 0
    modes = ([] if args.no_control else ["control"]) + (["nat"] if args.nat else [])
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="pylvs-scale-") as tmp:
        for mode in modes:
            for _ in range(args.repeat):
                r = measure(mode, text, args, Path(tmp), args.listings)
                runs.append(r)
                print(json.dumps(asdict(r)), flush=True)
    print()
    print(table(runs))
    print()
    worst = {
        "restore_s": max(r.restore_s for r in runs),
        "list_s": max(max(r.list_s) for r in runs),
        "rss_mb": max(r.hwm_mb for r in runs),
    }
    for key, target in TARGETS.items():
        print(f"{key}: worst {worst[key]:.2f} vs target < {target:g}: {verdict(worst[key], target)}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in runs], indent=2) + "\n")
    return 0 if all(worst[k] < t for k, t in TARGETS.items()) and all(r.save_identical for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
