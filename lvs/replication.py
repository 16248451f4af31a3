"""The table-replication codec of ``lvsd --workers N`` (pure: no sockets).

The main process keeps the table ``lvsadm`` changes; each NAT worker keeps a
copy.  Down the wire go service records (a service with its real servers, in
kernel order); up come per-real-server reports (live connection counts and
the growth of the traffic counters since the last report).  These functions
turn table state into JSON-ready data and back; the transport is
:mod:`forwarding.nat_pool` / :mod:`forwarding.nat_worker`.
"""

from __future__ import annotations

import contextlib
from typing import Any

from .constants import CONN_F_FWD_MASK
from .ctl import IPVS, DestSpec, ServiceSpec
from .model import Service, ServiceKey

#: a worker's counts for one real server: (active, inactive, persistent)
LiveCounts = tuple[int, int, int]
#: (service key, dest af, addr, port): the key of one real server's counts
DestKey = tuple[Any, ...]


def key_tuple(key: ServiceKey) -> list[int]:
    """A service key as a JSON list."""
    return [key.af, key.protocol, key.addr, key.port, key.fwmark]


def service_record(svc: Service) -> dict[str, Any]:
    """A service and its real servers (kernel order, newest first) as JSON data."""
    return {
        "key": key_tuple(svc.key),
        "sched": svc.sched_name,
        "flags": svc.flags,
        "timeout": svc.timeout,
        "netmask": svc.netmask,
        "pe": svc.pe_name,
        "dests": [
            [d.af, d.addr, d.port, d.conn_flags & CONN_F_FWD_MASK, d.weight, d.u_threshold, d.l_threshold]
            for d in svc.destinations
        ],
    }


def apply_service(ipvs: IPVS, rec: dict[str, Any], now: float) -> None:
    """Make ``ipvs``'s copy of a service equal to ``rec`` (through the admin
    operations, so the copy's schedulers see the same adds and edits)."""
    key = ServiceKey(*rec["key"])
    spec = ServiceSpec(key, rec["sched"], rec["flags"], rec["timeout"], rec["netmask"], rec["pe"])
    svc = ipvs.get(key)
    if svc is None:
        svc = ipvs.add_service(spec, now)
    elif (svc.sched_name, svc.flags, svc.timeout, svc.netmask, svc.pe_name) != (
        spec.sched_name,
        spec.flags,
        spec.timeout,
        spec.netmask,
        spec.pe_name,
    ):
        ipvs.edit_service(spec, now)
    want = {(d[0], d[1], d[2]): d for d in rec["dests"]}
    for dest in list(svc.destinations):
        if (dest.af, dest.addr, dest.port) not in want:
            ipvs.del_dest(key, dest.af, dest.addr, dest.port, now)
    # oldest first: each add goes to the head, so the order ends up as the main's
    for af, addr, port, fwd, weight, u, lo in reversed(rec["dests"]):
        spec_d = DestSpec(af, addr, port, fwd=fwd, weight=weight, u_threshold=u, l_threshold=lo)
        dest = svc.find_dest(af, addr, port)
        if dest is None:
            ipvs.add_dest(key, spec_d, now)
        elif (dest.conn_flags & CONN_F_FWD_MASK, dest.weight, dest.u_threshold, dest.l_threshold) != (
            fwd,
            weight,
            u,
            lo,
        ):
            ipvs.edit_dest(key, spec_d, now)


def environment(ipvs: IPVS) -> dict[str, Any]:
    """The timeouts and sysctls, as sent to workers when they change."""
    return {
        "timeouts": list(ipvs.get_timeouts()),
        "sysctl": {n: getattr(ipvs.sysctl, n) for n in ipvs.sysctl.names()},
    }


def apply_environment(ipvs: IPVS, msg: dict[str, Any]) -> None:
    """Set the timeouts and sysctls of :func:`environment` (unknown or bad
    sysctls are skipped: a worker older or newer than its main goes on)."""
    tcp, fin, udp = msg["timeouts"]
    ipvs.set_timeouts(tcp, fin, udp)
    for name, value in msg["sysctl"].items():
        with contextlib.suppress(KeyError, ValueError):
            ipvs.sysctl.set(name, str(value))


def dest_report(
    ipvs: IPVS, last: dict[DestKey, tuple[int, ...]]
) -> tuple[list[list[Any]], dict[DestKey, tuple[int, ...]]]:
    """A worker's report rows, one per real server: key, live counts and the
    growth of (conns, inpkts, outpkts, inbytes, outbytes) since ``last``
    (the snapshot the previous report returned; the new one is returned)."""
    rows = []
    snapshot: dict[DestKey, tuple[int, ...]] = {}
    for svc in ipvs.services.values():
        key = key_tuple(svc.key)
        for d in svc.destinations:
            st = d.stats
            cur = (st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes)
            hk = (tuple(key), d.af, d.addr, d.port)
            prev = last.get(hk, (0, 0, 0, 0, 0))
            snapshot[hk] = cur
            delta = [c - p for c, p in zip(cur, prev)]
            rows.append([key, d.af, d.addr, d.port, d.activeconns, d.inactconns, d.persistconns, *delta])
    return rows, snapshot


def apply_dest_report(ipvs: IPVS, rows: list[list[Any]]) -> dict[DestKey, LiveCounts]:
    """Add a worker's traffic growth to the main table's counters (real
    server, service, totals); return its live counts per real server."""
    counts: dict[DestKey, LiveCounts] = {}
    for key, af, addr, port, active, inact, persist, conns, inp, outp, inb, outb in rows:
        skey = ServiceKey(*key)
        counts[(skey, af, addr, port)] = (active, inact, persist)
        svc = ipvs.get(skey)
        dest = svc.find_dest(af, addr, port) if svc is not None else None
        targets = [ipvs.stats]
        if svc is not None:
            targets.append(svc.stats)
        if dest is not None:
            targets.append(dest.stats)
        for st in targets:
            st.conns += conns
            st.inpkts += inp
            st.outpkts += outp
            st.inbytes += inb
            st.outbytes += outb
    return counts


def show_live_counts(
    ipvs: IPVS, served: set[ServiceKey], per_worker: list[dict[DestKey, LiveCounts]]
) -> None:
    """ActiveConn/InActConn/persistent of the served services' real servers
    become the sums over the workers' last counts."""
    for skey in served:
        svc = ipvs.get(skey)
        if svc is None:
            continue
        for dest in svc.destinations:
            k = (skey, dest.af, dest.addr, dest.port)
            a = i = p = 0
            for c in per_worker:
                got = c.get(k)
                if got is not None:
                    a += got[0]
                    i += got[1]
                    p += got[2]
            dest.activeconns, dest.inactconns, dest.persistconns = a, i, p


__all__ = [
    "apply_dest_report",
    "apply_environment",
    "apply_service",
    "dest_report",
    "environment",
    "key_tuple",
    "service_record",
    "show_live_counts",
]
