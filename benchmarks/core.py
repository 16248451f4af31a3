"""What the core costs on this machine: scheduling decisions and the
connection table.

    .venv/bin/python benchmarks/core.py            # full run, writes RESULTS.md
    .venv/bin/python benchmarks/core.py --quick    # smaller, prints only

Decision cost
    µs per ``schedule()`` call of every scheduler (fetched by name with
    ``schedulers.get_scheduler``) at 8, 64 and 512 real servers.  Each call
    is timed on its own with ``time.perf_counter_ns`` (the cost of an empty
    timing pair is subtracted, and calls over max(200 µs, 50x the median)
    are left out as preemptions by other processes); the figure is the mean
    over the decisions of one run, best of several runs.  Real servers get
    weights 1..100 and live-looking counters (active 0..200, inactive
    0..2000).  Between two decisions, outside the timing, the counters move
    the way a live table moves them: the chosen server binds a connection
    (``inactconns += 1``), which then becomes active (SYN_RECV), while an
    older connection somewhere closes (active -> inactive) and another one
    expires (inactive -1); each change is followed by the
    ``counts_changed(dest)`` call the table makes.  Those four calls are
    timed separately ("table-side").  Every decision gets a fresh random
    client (dh/lblc/lblcr: one of 1000 destination addresses); the
    "returning" column draws clients from a pool of 1000.

Connection table, at 10^4, 10^5, 10^6 entries (thread CPU time)
    insert: ``Director.process_in`` of new UDP flows (rr over 8 NAT servers:
    lookup miss, service lookup, schedule, Conn, hash, timer, stats), and
    ``ConnTable.hash`` of prebuilt entries; lookup: ``ConnTable.lookup_in``
    of random live keys, on the table's IntMap (its C look-up) and again on
    the same entries with the fallback (a dict, the Python look-up); expiry:
    one unbudgeted ``Director.tick`` past every deadline, per entry; bytes
    per entry: tracemalloc growth while ``process_in`` creates N entries
    (flows built inside the loop and freed, so the entries own their
    integers), divided by N; the longest
    ``Director.tick(now, budget=B)`` while expiring all N entries, B chosen
    from the measured per-entry cost for about 2 ms per call (CPU and wall);
    the longest single ``process_in`` while filling the largest table, with
    the cyclic GC on and off.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import random
import re
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lvs.conn import Conn  # noqa: E402
from lvs.conntab import ConnTable  # noqa: E402
from lvs.constants import AF_INET, CONN_F_MASQ, IPPROTO_IP, IPPROTO_TCP, IPPROTO_UDP  # noqa: E402
from lvs.core import Director  # noqa: E402
from lvs.ctl import IPVS, DestSpec, ServiceSpec  # noqa: E402
from lvs.model import Flow, ServiceKey  # noqa: E402
from lvs.sched import SCHEDULER_NAMES, get_scheduler  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
HEADING = "## Core (benchmarks/core.py)"
BEGIN = "<!-- core-results:begin (written by benchmarks/core.py) -->"
END = "<!-- core-results:end -->"

VIP = 0x0A000001
SIZES = (8, 64, 512)
#: µs targets at 512 real servers (from the issue)
DECISION_TARGET = {
    **dict.fromkeys(("rr", "wrr", "dh", "sh", "mh"), 2.0),
    **dict.fromkeys(("lc", "wlc", "sed", "nq"), 5.0),
}
LOOKUP_TARGET_US = 1.0
BYTES_TARGET = 300
TICK_TARGET_MS = 10.0
#: hashing by destination address: give them many destinations
BY_VADDR = ("dh", "lblc", "lblcr")

now_ns = time.perf_counter_ns
cpu_ns = time.thread_time_ns


# ----------------------------------------------------------------------------
# decisions
# ----------------------------------------------------------------------------
def timer_overhead_ns(rounds: int = 200_000) -> float:
    """Mean cost of an empty ``t0 = now_ns(); t1 = now_ns()`` pair."""
    best = float("inf")
    for _ in range(5):
        total = 0
        for _ in range(rounds):
            t0 = now_ns()
            t1 = now_ns()
            total += t1 - t0
        best = min(best, total / rounds)
    return best


def build_service(name: str, n: int, rng: random.Random) -> IPVS:
    """A table with one service of ``n`` real servers and live-looking counters."""
    ipvs = IPVS(rng=random.Random(1))
    if name in BY_VADDR:
        key = ServiceKey(AF_INET, IPPROTO_IP, 0, 0, 1)  # fwmark: many destination addresses
    else:
        key = ServiceKey(AF_INET, IPPROTO_TCP, VIP, 80)
    ipvs.add_service(ServiceSpec(key, name))
    for i in range(n):
        ipvs.add_dest(key, DestSpec(AF_INET, 0xC0A80000 + i, 80, CONN_F_MASQ, rng.randint(1, 100)))
    svc = ipvs.get(key)
    assert svc is not None and svc.scheduler is not None
    for dest in svc.destinations:
        dest.activeconns = rng.randint(0, 200)
        dest.inactconns = rng.randint(0, 2000)
        svc.scheduler.counts_changed(dest)
    return ipvs


def trimmed_mean(samples: list[int], overhead: float) -> tuple[float, int]:
    """Mean µs of per-call samples (ns) minus the timing overhead, leaving
    out calls that took over max(200 µs, 50x the median): on this shared
    2-core machine those are preemptions by other processes, not our code.
    Returns (mean µs, how many samples were left out)."""
    ordered = sorted(samples)
    limit = max(200_000, 50 * ordered[len(ordered) // 2])
    kept = [x for x in samples if x <= limit]
    return (sum(kept) / len(kept) - overhead) / 1000, len(samples) - len(kept)


#: calls left out as preemptions, over all decision runs
DROPPED = [0, 0]


def bench_decisions(
    name: str, n: int, decisions: int, runs: int, overhead: float, returning: bool = False
) -> tuple[float, float]:
    """(µs per schedule(), µs of the table-side counts_changed per decision).

    ``returning``: clients (and destinations) come from a pool of 1000
    addresses instead of a fresh random one per decision."""
    # a seed of its own per measurement: mh memoises client hashes across
    # instances, so reusing addresses would turn "new clients" into hits
    rng = random.Random(f"{name}/{n}/{returning}")
    ipvs = build_service(name, n, rng)
    svc = next(iter(ipvs.services.values()))
    sched = svc.scheduler
    assert sched is not None
    dests = svc.destinations
    fwmark = svc.key.fwmark
    changed = sched.counts_changed
    pool = [rng.getrandbits(32) for _ in range(1000)]
    best_sched = best_table = float("inf")
    now = 1.0
    for _ in range(runs):
        flows = [
            Flow(
                AF_INET,
                IPPROTO_TCP,
                rng.choice(pool) if returning else rng.getrandbits(32),
                rng.randint(1024, 65535),
                0x0B000000 + rng.randrange(1000) if fwmark else VIP,
                80,
                fwmark,
            )
            for _ in range(decisions)
        ]
        others = [(rng.choice(dests), rng.choice(dests)) for _ in range(decisions)]
        t_sched = [0] * decisions
        t_table = [0] * decisions
        gc.collect()
        for i, (flow, (closing, expiring)) in enumerate(zip(flows, others)):
            t0 = now_ns()
            dest = sched.schedule(flow, now)
            t1 = now_ns()
            t_sched[i] = t1 - t0
            now += 0.0001
            t0 = now_ns()
            if dest is not None:
                dest.inactconns += 1  # bind: born INACTIVE
                changed(dest)
                dest.inactconns -= 1  # SYN: NONE -> SYN_RECV is active
                dest.activeconns += 1
                changed(dest)
            if closing.activeconns:
                closing.activeconns -= 1  # FIN: leaves an active state
                closing.inactconns += 1
                changed(closing)
            if expiring.inactconns:
                expiring.inactconns -= 1  # expiry of an inactive entry
                changed(expiring)
            t1 = now_ns()
            t_table[i] = t1 - t0
        us, dropped = trimmed_mean(t_sched, overhead)
        tus, tdropped = trimmed_mean(t_table, overhead)
        DROPPED[0] += dropped + tdropped
        DROPPED[1] += 2 * decisions
        best_sched = min(best_sched, us)
        best_table = min(best_table, tus)
    return best_sched, best_table


# ----------------------------------------------------------------------------
# connection table
# ----------------------------------------------------------------------------
def new_director(n_dests: int = 8) -> Director:
    ipvs = IPVS()
    ipvs.sysctl.run_estimation = 0
    key = ServiceKey(AF_INET, IPPROTO_UDP, VIP, 53)
    ipvs.add_service(ServiceSpec(key, "rr"))
    for i in range(n_dests):
        ipvs.add_dest(key, DestSpec(AF_INET, 0xC0A80000 + i, 53, CONN_F_MASQ))
    d = Director(ipvs)
    d.reset_clock(0.0)
    return d


def client(i: int) -> tuple[int, int]:
    """A distinct client endpoint per index: 16384 ports per address."""
    return 0xAC100000 + (i >> 14), 1024 + (i & 0x3FFF)


def make_flows(n: int) -> list[Flow]:
    out = []
    for i in range(n):
        caddr, cport = client(i)
        out.append(Flow(AF_INET, IPPROTO_UDP, caddr, cport, VIP, 53))
    return out


def fill(d: Director, flows: list[Flow], spread: float) -> float:
    """process_in every flow (virtual time spread over ``spread`` s); CPU seconds taken."""
    n = len(flows)
    step = spread / n
    process_in = d.process_in
    t = 0.0
    c0 = cpu_ns()
    for flow in flows:
        process_in(flow, t, 0, 36)
        t += step
    return (cpu_ns() - c0) / 1e9


def bench_insert(n: int, runs: int) -> tuple[float, float]:
    """(µs per process_in of a new flow, µs per ConnTable.hash of a prebuilt entry)."""
    flows = make_flows(n)
    best_pi = best_hash = float("inf")
    for _ in range(runs):
        d = new_director()
        gc.collect()
        best_pi = min(best_pi, fill(d, flows, 100.0) / n * 1e6)
        del d
        gc.collect()
        d = new_director()
        tab = d.conns
        dest = next(iter(d.ipvs.services.values())).destinations[0]
        conns = []
        for flow in flows:
            cp = Conn(AF_INET, IPPROTO_UDP, flow.caddr, flow.cport, VIP, 53, AF_INET, dest.addr, 53, 0)
            cp.expires = 300.0
            conns.append(cp)
        gc.collect()
        h = tab.hash
        c0 = cpu_ns()
        for cp in conns:
            h(cp)
        best_hash = min(best_hash, (cpu_ns() - c0) / n / 1000)
        del d, tab, conns
        gc.collect()
    return best_pi, best_hash


def bench_lookup_and_expiry(n: int, runs: int, lookups: int) -> dict[str, float]:
    """lookup_in µs, expiry µs/entry, budget B and the longest tick(now, B)."""
    flows = make_flows(n)
    rng = random.Random(3)
    res: dict[str, float] = {}
    d = new_director()
    fill(d, flows, 100.0)
    tab = d.conns
    assert len(tab) == n
    keys = []
    for _ in range(lookups):
        f = flows[rng.randrange(n)]
        keys.append((f.caddr, f.cport))
    lookup = tab.lookup_in
    assert all(lookup(IPPROTO_UDP, AF_INET, c, p, VIP, 53) is not None for c, p in keys[:1000])
    # The harness itself misses the cache: at 10^6 entries the (caddr, cport)
    # tuples and their ints are scattered, and walking them costs ~0.4 µs per
    # key before lookup_in runs.  A forwarder's key comes from the packet it
    # just read (hot), so the loop's own cost, measured on the same keys in
    # the same order, is taken off; both figures are kept.

    def timed() -> tuple[float, float]:
        """(µs per lookup_in, µs per key of the bare loop), best of ``runs``."""
        best = float("inf")
        harness = float("inf")
        gc.collect()
        for _ in range(runs):
            c0 = cpu_ns()
            for caddr, cport in keys:
                lookup(IPPROTO_UDP, AF_INET, caddr, cport, VIP, 53)
            best = min(best, (cpu_ns() - c0) / lookups / 1000)
            c0 = cpu_ns()
            for caddr, cport in keys:  # noqa: B007 - the same walk without the lookup
                pass
            harness = min(harness, (cpu_ns() - c0) / lookups / 1000)
        return best, harness

    best, harness = timed()
    res["lookup_raw_us"] = best
    res["lookup_us"] = max(0.0, best - harness)
    # The same look-ups on the fallback where lvs._intmap is not built (a dict
    # and the Python look-up): a table holding the same chain heads.
    plain = ConnTable(native=False)
    plain._tab = dict(tab._tab.items())
    lookup = plain.lookup_in
    best, harness = timed()
    res["lookup_dict_us"] = max(0.0, best - harness)
    del plain

    # expiry: one unbudgeted tick past every deadline (UDP timeout 300 s)
    gc.collect()
    c0 = cpu_ns()
    d.tick(1000.0)
    res["expire_us"] = (cpu_ns() - c0) / n / 1000
    assert len(tab) == 0
    del d, tab
    gc.collect()

    # the longest budgeted tick while expiring everything
    budget = max(100, int(2000.0 / max(res["expire_us"], 0.05)))  # ~2 ms of CPU per call
    d = new_director()
    fill(d, flows, 100.0)
    gc.collect()
    wall = cpu = 0
    calls = 0
    more = True
    while more:
        t0 = now_ns()
        c0 = cpu_ns()
        more = d.tick(1000.0, budget)
        c1 = cpu_ns()
        t1 = now_ns()
        calls += 1
        wall = max(wall, t1 - t0)
        cpu = max(cpu, c1 - c0)
    assert len(d.conns) == 0
    res["budget"] = budget
    res["tick_calls"] = calls
    res["tick_cpu_ms"] = cpu / 1e6
    res["tick_wall_ms"] = wall / 1e6
    del d
    gc.collect()
    return res


def bench_bytes(n: int) -> float:
    """tracemalloc growth per entry while process_in creates n entries."""
    d = new_director()
    process_in = d.process_in
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t = 0.0
    step = 100.0 / n
    for i in range(n):
        caddr, cport = client(i)
        process_in(Flow(AF_INET, IPPROTO_UDP, caddr, cport, VIP, 53), t, 0, 36)
        t += step
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(d.conns) == n
    return (after - before) / n


def bench_insert_latency(n: int, collect: bool) -> tuple[float, float, int]:
    """Longest single process_in while filling n entries: (CPU ms, wall ms,
    index of the slowest insert), with the cyclic GC on or off."""
    d = new_director()
    flows = make_flows(n)
    gc.collect()
    if not collect:
        gc.disable()
    try:
        process_in = d.process_in
        cpu = wall = 0
        where = 0
        t = 0.0
        for i, flow in enumerate(flows):
            t0 = now_ns()
            c0 = cpu_ns()
            process_in(flow, t, 0, 36)
            c1 = cpu_ns()
            t1 = now_ns()
            if c1 - c0 > cpu:
                cpu = c1 - c0
                where = i
            wall = max(wall, t1 - t0)
            t += 0.0001
    finally:
        gc.enable()
    del d
    gc.collect()
    return cpu / 1e6, wall / 1e6, where


# ----------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------
def fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer runs; no RESULTS.md")
    ap.add_argument("--write", action="store_true", help="write RESULTS.md even with --quick")
    ap.add_argument("--no-write", action="store_true", help="only print")
    args = ap.parse_args(argv)
    quick = args.quick
    write = (not quick or args.write) and not args.no_write
    decisions = 2000 if quick else 20000
    runs = 3 if quick else 5
    table_runs = 2 if quick else 3
    table_sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    started = time.time()
    load_start = loadavg()
    out: list[str] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    overhead = timer_overhead_ns()
    cmd = ".venv/bin/python benchmarks/core.py" + (" --quick" if quick else "")
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    emit(f"Command: `{cmd}` — {date}; {machine()}.")
    emit()
    emit("### Decision cost (µs per `schedule()` call)")
    emit()
    emit(
        f"Mean over {decisions} decisions, best of {runs} runs; wall clock per call "
        f"(`perf_counter_ns`, {overhead:.0f} ns timing overhead subtracted). A fresh random client "
        "(and, for dh/lblc/lblcr, one of 1000 destination addresses) per decision, except in the "
        "*returning* column where clients come from a pool of 1000. *table-side*: the four "
        "`counts_changed` calls (bind, SYN_RECV, a FIN elsewhere, an expiry elsewhere) with "
        "their counter updates, which the conn table pays per connection."
    )
    emit()
    emit("| scheduler | 8 | 64 | 512 | 512 returning | target @512 | met | table-side µs @512 |")
    emit("|---|---:|---:|---:|---:|---:|---|---:|")
    misses: list[str] = []
    for name in SCHEDULER_NAMES:
        cls = get_scheduler(name)
        assert cls is not None, name
        row = []
        table_side = 0.0
        for n in SIZES:
            us, tside = bench_decisions(name, n, decisions, runs, overhead)
            row.append(us)
            table_side = tside
        ret, _ = bench_decisions(name, SIZES[-1], decisions, runs, overhead, returning=True)
        target = DECISION_TARGET.get(name)
        met = "–" if target is None else ("yes" if row[-1] <= target else "**no**")
        if target is not None and row[-1] > target:
            misses.append(f"{name} decision {row[-1]:.2f} µs > {target:.0f} µs at 512 (new clients)")
        emit(
            f"| {name} | {fmt(row[0])} | {fmt(row[1])} | {fmt(row[2])} | {fmt(ret)} | "
            f"{'–' if target is None else fmt(target, 0)} | {met} | {fmt(table_side)} |"
        )
    emit()
    emit(f"Calls left out as preemptions (> max(200 µs, 50× the run median)): {DROPPED[0]} of {DROPPED[1]}.")
    emit()
    emit("### Connection table")
    emit()
    emit(
        "UDP flows, rr over 8 NAT real servers, entries created over 100 s of virtual time. "
        "Per-operation costs are thread CPU time (`thread_time_ns`, immune to preemption), "
        f"best of {table_runs} runs (one run at 10^6); "
        "lookups are 200,000 random live keys, best of 5, net of the harness's own walk over those keys "
        "(raw figure in brackets: at 10^6 the scattered key tuples cost the loop ~0.4 µs each). "
        f"The table's hash is {type(new_director().conns._tab).__name__}; *dict: lookup_in* repeats the "
        "look-ups on the same entries with the fallback where lvs._intmap is not built (a dict and "
        "the Python look-up). "
        "The tick budget B aims at ~2 ms of CPU per call."
    )
    emit()
    emit(
        "| entries | insert: process_in µs | insert: ConnTable.hash µs | lookup_in µs | dict: lookup_in µs | "
        "expiry µs/entry | bytes/entry | budget B | longest tick(B) CPU ms | wall ms | calls |"
    )
    emit("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in table_sizes:
        r = 1 if n >= 1_000_000 else table_runs
        pi, hs = bench_insert(n, r)
        le = bench_lookup_and_expiry(n, 5, min(n, 200_000))
        bpe = bench_bytes(n)
        if n >= 1_000_000 and le["lookup_us"] > LOOKUP_TARGET_US:
            misses.append(f"lookup {le['lookup_us']:.2f} µs > 1 µs at {n:,}")
        if bpe > BYTES_TARGET:
            misses.append(f"{bpe:.0f} bytes/entry > {BYTES_TARGET} at {n:,}")
        if le["tick_cpu_ms"] > TICK_TARGET_MS:
            misses.append(f"longest tick {le['tick_cpu_ms']:.1f} ms CPU > 10 ms at {n:,}")
        emit(
            f"| {n:,} | {fmt(pi)} | {fmt(hs)} | {fmt(le['lookup_us'])} ({fmt(le['lookup_raw_us'])}) | "
            f"{fmt(le['lookup_dict_us'])} | "
            f"{fmt(le['expire_us'])} | "
            f"{bpe:.0f} | {int(le['budget'])} | {fmt(le['tick_cpu_ms'])} | {fmt(le['tick_wall_ms'])} | "
            f"{int(le['tick_calls'])} |"
        )
    n_lat = table_sizes[-1]
    on_cpu, on_wall, on_at = bench_insert_latency(n_lat, collect=True)
    off_cpu, off_wall, off_at = bench_insert_latency(n_lat, collect=False)
    emit()
    emit(f"Longest single `process_in` while filling {n_lat:,} entries:")
    emit()
    emit("| cyclic GC | CPU ms | wall ms | at entry # |")
    emit("|---|---:|---:|---:|")
    emit(f"| on (default thresholds) | {fmt(on_cpu, 1)} | {fmt(on_wall, 1)} | {on_at:,} |")
    emit(f"| off (`gc.disable()`) | {fmt(off_cpu, 1)} | {fmt(off_wall, 1)} | {off_at:,} |")
    if on_cpu > TICK_TARGET_MS:
        misses.append(f"a process_in took {on_cpu:.0f} ms CPU (GC) at {n_lat:,}")
    emit()
    emit(
        "Targets: ≤2 µs rr/wrr/dh/sh/mh and ≤5 µs lc/wlc/sed/nq at 512 servers; lookup ≤1 µs at "
        "10^6; ≤300 bytes/entry; expiry never holds the caller >10 ms."
    )
    emit("Missed: " + ("; ".join(misses) if misses else "none") + ".")
    emit()
    emit(
        f"Load average (other work on the machine) at start {load_start}, at end {loadavg()}; "
        f"wall time {time.time() - started:.0f} s."
    )
    if write:
        write_results("\n".join(out))
        print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0


def write_results(body: str) -> None:
    """Replace the text between the markers of the Core section, keeping
    everything else (other sections, the hand-written analysis)."""
    block = f"{BEGIN}\n{body}\n{END}"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _m: block, text, count=1, flags=re.S)
    elif HEADING in text:
        text = text.replace(HEADING, f"{HEADING}\n\n{block}", 1)
    else:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n{block}\n"
    RESULTS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
