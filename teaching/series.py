"""What the plots draw, gathered from a simulation run: per real server, the
new flows it got (cumulative, by flow number), its active and inactive
connection counts after each flow, and for the hashing schedulers (dh, sh,
mh) the owner of every bucket or slot of the lookup table at the end.

Also the scenario rewrites ``--compare`` needs (the same scenario under
another scheduler) and the disruption experiment (how many clients move
when one real server is removed or added, for dh, sh and mh).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from lvs.constants import AF_INET, IPPROTO_TCP
from lvs.model import Flow
from lvs.simulate import Simulation

HASHING = ("dh", "sh", "mh")


@dataclass
class Series:
    """One scenario's run, as the plots need it."""

    title: str = ""
    #: real servers in the order they first appear
    servers: list[str] = field(default_factory=list)
    #: flow number of each sample (one sample per flow)
    x: list[int] = field(default_factory=list)
    #: virtual time of each sample
    t: list[float] = field(default_factory=list)
    #: server -> cumulative new flows, active, inactive (one value per sample)
    flows: dict[str, list[int]] = field(default_factory=dict)
    active: dict[str, list[int]] = field(default_factory=dict)
    inactive: dict[str, list[int]] = field(default_factory=dict)
    #: flows that found no real server (cumulative)
    dropped: list[int] = field(default_factory=list)
    #: (service, scheduler, owners of buckets/slots) for dh/sh/mh services at the end
    tables: list[tuple[str, str, list[str | None]]] = field(default_factory=list)
    schedulers: list[str] = field(default_factory=list)
    #: (flow number, label): table changes between flows (-a, -d, -e, -E)
    marks: list[tuple[int, str]] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        return {s: (v[-1] if v else 0) for s, v in self.flows.items()}


def _table_of(svc) -> list[str | None] | None:  # type: ignore[no-untyped-def]
    sched = svc.scheduler
    if sched is None or sched.name not in HASHING:
        return None
    table = sched.lookup if sched.name == "mh" else sched.table
    return [None if d is None else d.endpoint() for d in table]


def collect(lines: Iterable[str], title: str = "", seed: int = 0, classic: bool = False) -> Series:
    """Run a scenario and gather its series."""
    sim = Simulation(seed=seed, classic=classic)
    s = Series(title=title)
    counts: dict[str, int] = {}
    dropped = 0

    def dests() -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for svc in sim.ipvs:
            if svc.sched_name not in s.schedulers:
                s.schedulers.append(svc.sched_name)
            for d in svc.destinations:
                a, i = out.get(d.endpoint(), (0, 0))
                out[d.endpoint()] = (a + d.activeconns, i + d.inactconns)
        return out

    def add_server(name: str) -> None:
        if name in s.flows:
            return
        s.servers.append(name)
        n = len(s.x)
        s.flows[name] = [0] * n
        s.active[name] = [0] * n
        s.inactive[name] = [0] * n

    def emit(ev: dict) -> None:
        nonlocal dropped
        if "i" not in ev:
            label = _change_label(ev) if s.x else None
            if label:
                s.marks.append((s.x[-1] + 1, label))
            return
        rs = ev.get("real_server")
        if rs is None:
            dropped += 1
        else:
            counts[rs] = counts.get(rs, 0) + 1
            add_server(rs)
        now = dests()
        for name in now:
            add_server(name)
        s.x.append(ev["i"] + 1)
        s.t.append(sim.now)
        s.dropped.append(dropped)
        for name in s.servers:
            a, i = now.get(name, (0, 0))
            s.flows[name].append(counts.get(name, 0))
            s.active[name].append(a)
            s.inactive[name].append(i)

    sim.run(lines, emit)
    s.servers.sort(key=_server_key)
    for svc in sim.ipvs:
        table = _table_of(svc)
        if table is not None:
            s.tables.append((svc.describe(), svc.sched_name, table))
    return s


def _change_label(ev: dict) -> str | None:
    """A short label for an ipvsadm step that changes real servers or the
    scheduler: ``-d 10.1.0.3:53``, ``-e 10.1.0.4:53 w=0``, ``-E -s sh``."""
    if ev.get("step") != "ipvsadm" or ev.get("rc") != 0:
        return None
    words = ev["args"].split()
    if not words or words[0] not in ("-a", "-d", "-e", "-E"):
        return None

    def after(opt: str) -> str | None:
        return words[words.index(opt) + 1] if opt in words[:-1] else None

    parts = [words[0]]
    if after("-r"):
        parts.append(str(after("-r")))
    if words[0] != "-d" and after("-w") is not None:
        parts.append(f"w={after('-w')}")
    if words[0] == "-E" and after("-s"):
        parts.append(f"-s {after('-s')}")
    return " ".join(parts)


def _server_key(name: str) -> tuple[int, int, int]:
    host, _, port = name.rpartition(":")
    ip = ipaddress.ip_address(host.strip("[]"))
    return (ip.version, int(ip), int(port))


def compare_table(runs: dict[str, Series]) -> list[str]:
    """Text: one line per real server, flows and share under each scheduler."""
    servers: list[str] = []
    for s in runs.values():
        servers += [n for n in s.servers if n not in servers]
    servers.sort(key=_server_key)
    head = f"{'real server':<24}" + "".join(f"{name:>16}" for name in runs)
    out = [head]
    for n in servers:
        cells = []
        for s in runs.values():
            totals = s.totals()
            routed = sum(totals.values()) or 1
            v = totals.get(n, 0)
            cells.append(f"{v:>8} {v * 100 / routed:>5.1f}%")
        out.append(f"{n:<24}" + "".join(f"{c:>16}" for c in cells))
    none = [s.dropped[-1] if s.dropped else 0 for s in runs.values()]
    out.append(f"{'no server':<24}" + "".join(f"{v:>16}" for v in none))
    return out


def disruption_table(d: Disruption) -> list[str]:
    out = [
        f"clients that change real server, {d.servers} real servers, {d.clients} clients"
        f" (least possible: {100 / d.servers:.1f}% on removal, {100 / (d.servers + 1):.1f}% on addition)",
        f"{'scheduler':<10}{'remove one':>12}{'add one':>12}",
    ]
    for sched, moved in d.moved.items():
        out.append(f"{sched:<10}{moved['remove one'] * 100:>11.1f}%{moved['add one'] * 100:>11.1f}%")
    return out


SERVICE_OPTIONS = ("-A", "-E", "--add-service", "--edit-service")
_SCHED = re.compile(r"(\s-s\s+|\s--scheduler\s+)(\S+)")


def with_scheduler(lines: Iterable[str], name: str) -> list[str]:
    """The scenario with every ``ipvsadm -A/-E ... -s X`` using ``name`` instead
    (a service without ``-s`` gets ``-s name``)."""
    out = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "ipvsadm" and words[1] in SERVICE_OPTIONS:
            if _SCHED.search(line):
                line = _SCHED.sub(lambda m: m.group(1) + name, line)
            else:
                line = line.rstrip() + f" -s {name}"
        out.append(line)
    return out


# -- disruption: how many clients move when the server set changes ---------------


@dataclass
class Disruption:
    """Share of clients whose real server changes, per scheduler and change."""

    servers: int
    clients: int
    #: scheduler -> change -> share moved (0..1)
    moved: dict[str, dict[str, float]] = field(default_factory=dict)


def _assign(sched: str, servers: list[str], clients: list[int]) -> list[str | None]:
    sim = Simulation()
    vip = "10.0.0.1:80"
    rc, out = sim.ipvsadm(["-A", "-t", vip, "-s", sched])
    assert rc == 0, out
    for rs in servers:
        rc, out = sim.ipvsadm(["-a", "-t", vip, "-r", rs, "-m", "-w", "1"])
        assert rc == 0, out
    (svc,) = list(sim.ipvs)
    scheduler = svc.scheduler
    assert scheduler is not None
    vaddr = 0x0A000001
    result = []
    for c in clients:
        # dh hashes the destination (a cache cluster: one address per object),
        # sh and mh the client address
        flow = (
            Flow(AF_INET, IPPROTO_TCP, 0x0A020001, 40000, c, 80, 0)
            if sched == "dh"
            else Flow(AF_INET, IPPROTO_TCP, c, 40000, vaddr, 80, 0)
        )
        dest = scheduler.schedule(flow, 0.0)
        result.append(None if dest is None else dest.endpoint())
    return result


def disruption(servers: int = 5, clients: int = 4000, schedulers: Iterable[str] = HASHING) -> Disruption:
    """For each scheduler: the share of ``clients`` addresses that map to another
    real server after removing one of ``servers`` (averaged over which one) and
    after adding one more.  The least possible is 1/servers on removal and
    1/(servers+1) on addition (only the clients that must move)."""
    names = [f"10.1.0.{k + 1}:80" for k in range(servers + 1)]
    base, extra = names[:servers], names[servers]
    addrs = [0x0A020000 + k for k in range(clients)]  # 10.2.0.0 onwards
    res = Disruption(servers, clients)
    for sched in schedulers:
        before = _assign(sched, base, addrs)
        removed = []
        for gone in base:
            after = _assign(sched, [s for s in base if s != gone], addrs)
            removed.append(sum(b != a for b, a in zip(before, after)) / clients)
        after_add = _assign(sched, [*base, extra], addrs)
        res.moved[sched] = {
            "remove one": sum(removed) / len(removed),
            "add one": sum(b != a for b, a in zip(before, after_add)) / clients,
        }
    return res
