"""Cost of one decision of the list schedulers at 512 real servers.

Each decision is ``schedule()`` plus the counter change the connection table
makes when it binds the new connection (``inactconns += 1`` for UDP,
``activeconns += 1`` for TCP) and the ``counts_changed`` call that follows.
Targets: rr/wrr <= 2 µs, lc/wlc/sed/nq <= 5 µs.

    .venv/bin/python benchmarks/sched_list.py [N_SERVERS]
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lvs.constants import AF_INET, IPPROTO_TCP
from lvs.model import Dest, SchedContext, Service, ServiceKey
from lvs.sched import get_scheduler

NAMES = ("rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "ovf", "twos")
WEIGHTS: dict[str, Callable[[int], int]] = {
    "random 1-100": lambda i: random.randint(1, 100),
    "all 1": lambda i: 1,
    "1..n": lambda i: i + 1,
}


def build(name: str, n: int, weight: Callable[[int], int]) -> Service:
    svc = Service(ServiceKey(AF_INET, IPPROTO_TCP, 0x0A000001, 80))
    cls = get_scheduler(name)
    assert cls is not None
    svc.scheduler = cls(svc, SchedContext())
    for i in range(n):
        dest = Dest(AF_INET, 0x0A010000 + i, 80)
        dest.svc = svc
        dest.weight = weight(i)
        svc.link_dest(dest)
        svc.scheduler.add_dest(dest)
    return svc


def per_decision(svc: Service, rounds: int, tcp: bool) -> float:
    sched = svc.scheduler
    sched.schedule(None, 0.0)  # build indexes outside the timing
    start = time.perf_counter()
    for _ in range(rounds):
        dest = sched.schedule(None, 0.0)
        if dest is None:
            continue
        if tcp:
            dest.activeconns += 1
        else:
            dest.inactconns += 1
        sched.counts_changed(dest)
    return (time.perf_counter() - start) / rounds * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    print(f"µs per decision (schedule + bind + counts_changed), {n} servers")
    print(f"{'':6}{'weights':14}{'udp':>8}{'tcp':>8}")
    for name in NAMES:
        for label, weight in WEIGHTS.items():
            random.seed(1)
            udp = per_decision(build(name, n, weight), 20000, tcp=False)
            random.seed(1)
            tcp = per_decision(build(name, n, weight), 20000, tcp=True)
            print(f"{name:6}{label:14}{udp:8.2f}{tcp:8.2f}")


if __name__ == "__main__":
    main()
