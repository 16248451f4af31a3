"""A /metrics scrape of a big table, and what it costs the loop.

An lvsd-shaped object (the real IPVS table, Observer and HttpServer from
lvsd/) serves /metrics in an asyncio loop; ``curl`` (another process, so the
client takes no GIL time from the loop) scrapes it.  Every callback the loop
runs is timed in thread CPU time (asyncio's Handle._run, wrapped): the
longest is the longest the scrape held the loop by its own work, what a
data-plane callback would have waited on an idle machine.  A heartbeat task
waking every millisecond also records its wall-clock lateness, which on a
loaded machine adds the time the OS gave the CPU to other processes.  Also:
lvsd's CPU time per scrape, the exposition's size, and prometheus-client's
generate_latest over the same families (CPU) for comparison.

    .venv/bin/python benchmarks/metrics_scrape.py [--services 10000] [--reals 10] [--scrapes 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from lvs import metrics as table_metrics
from lvs.constants import AF_INET, CONN_F_MASQ, IPPROTO_TCP
from lvs.ctl import IPVS, DestSpec, ServiceSpec
from lvs.model import ServiceKey
from lvsd.http import HttpServer
from lvsd.metrics import FamiliesCollector, daemon_families
from lvsd.observe import Observer


class FakeDaemon:
    """What the HTTP listener and the metrics need of lvsd."""

    def __init__(self, ipvs: IPVS) -> None:
        self.ipvs = ipvs
        self.planes: list[Any] = []
        self.health = None
        self.opts = argparse.Namespace(http=None, procfs=None)
        self.observer = Observer(self)
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def worker_pool(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"pid": 0, "services": len(self.ipvs.services), "connections": 0, "planes": [], "warnings": []}


def build(services: int, reals: int) -> IPVS:
    ipvs = IPVS()
    rng = random.Random(1)
    for i in range(services):
        key = ServiceKey(AF_INET, IPPROTO_TCP, 0x0A000000 + i, 80)
        ipvs.add_service(ServiceSpec(key, "wlc"))
        for r in range(reals):
            ipvs.add_dest(key, DestSpec(AF_INET, 0xAC100000 + r * 256 + (i % 250), 8080, fwd=CONN_F_MASQ))
        for dest in ipvs.services[key].destinations:
            dest.activeconns = rng.randrange(1000)
            dest.inactconns = rng.randrange(5000)
            dest.stats.conns = rng.randrange(10**7)
            dest.stats.inbytes = rng.randrange(10**10)
            dest.stats.estimate()
    ipvs.stats.conns, ipvs.stats.inbytes = 123456789, 98765432109
    return ipvs


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


GC_PAUSES: list[float] = []
STEP_CPU: list[float] = []
_run = asyncio.events.Handle._run


LONGEST: list[Any] = [0.0, ""]


def _timed_run(self: Any) -> None:
    t = time.thread_time()
    try:
        _run(self)
    finally:
        took = time.thread_time() - t
        STEP_CPU.append(took)
        if took > LONGEST[0]:
            LONGEST[:] = [took, repr(self)[:200]]


asyncio.events.Handle._run = _timed_run  # type: ignore[method-assign]
_gc_start = [0.0]


def _gc_watch(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_start[0] = time.perf_counter()
    elif info.get("generation") == 2:
        GC_PAUSES.append(time.perf_counter() - _gc_start[0])


async def scrape_once(port: int) -> tuple[float, float, float, float, int]:
    """(wall s, lvsd CPU s, longest callback in thread CPU s, longest heartbeat
    lateness s, bytes) of one scrape."""
    lateness: list[float] = []
    GC_PAUSES.clear()
    stop = asyncio.Event()

    async def heartbeat() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append(time.perf_counter() - t - 0.001)

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.05)
    lateness.clear()
    STEP_CPU.clear()
    LONGEST[:] = [0.0, ""]
    c0, t0 = cpu(), time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", f"http://127.0.0.1:{port}/metrics",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    wall, used = time.perf_counter() - t0, cpu() - c0
    stop.set()
    await beat
    return wall, used, LONGEST[0], max(lateness or [0.0]), int(out or 0)


async def run(args: argparse.Namespace) -> None:
    t = time.perf_counter()
    ipvs = build(args.services, args.reals)
    took = time.perf_counter() - t
    print(f"table: {args.services} services x {args.reals} real servers built in {took:.1f} s")
    if args.tune_gc:
        from forwarding.nat import tune_gc

        tune_gc()  # what lvsd's NAT plane does at start (after the table here)
    gc.callbacks.append(_gc_watch)
    daemon = FakeDaemon(ipvs)
    daemon.observer.process_registry = None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = HttpServer(daemon, "127.0.0.1", port)
    daemon.observer.http = server
    await server.start()
    try:
        for i in range(args.scrapes):
            wall, used, hold, late, size = await scrape_once(port)
            print(
                f"scrape {i + 1}: {wall * 1000:7.1f} ms wall, {used * 1000:7.1f} ms lvsd CPU, "
                f"longest callback {hold * 1000:5.2f} ms CPU (heartbeat late by {late * 1000:.1f} ms wall), "
                f"{size / 1e6:.1f} MB, full GCs {len(GC_PAUSES)}"
            )
            if args.verbose:
                print(f"  longest: {LONGEST[1]}")
    finally:
        await server.close()
    # the same families through prometheus-client's writer, for comparison
    fams = table_metrics.families(table_metrics.snapshot(ipvs), daemon_families(daemon))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FamiliesCollector(fams))
    c0 = time.process_time()
    reference = generate_latest(registry)
    ref_cpu = time.process_time() - c0
    c0 = time.process_time()
    ours = table_metrics.render(fams).encode()
    our_cpu = time.process_time() - c0
    samples = sum(len(f.samples) for f in fams)
    print(
        f"{samples} samples: generate_latest {ref_cpu * 1000:.0f} ms CPU, lvs.metrics.render "
        f"{our_cpu * 1000:.0f} ms CPU ({ref_cpu / max(our_cpu, 1e-9):.1f}x), identical: {reference == ours}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--reals", type=int, default=10)
    ap.add_argument("--scrapes", type=int, default=3)
    ap.add_argument("--tune-gc", action="store_true", help="gc.freeze() the built table first")
    ap.add_argument("--verbose", action="store_true", help="name the longest callback")
    ap.add_argument("--gc-on", action="store_true", help="leave the cyclic GC on during scrapes (the before)")
    args = ap.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("needs curl")
    if args.gc_on:
        import contextlib

        import lvsd.metrics

        lvsd.metrics.gc_held = contextlib.nullcontext  # type: ignore[assignment]
    asyncio.run(run(args))  # plain asyncio: its Handle._run is what is timed


if __name__ == "__main__":
    main()
