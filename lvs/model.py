"""Virtual services, real servers (destinations), flow keys and the scheduler hooks.

These mirror ``struct ip_vs_service``, ``struct ip_vs_dest`` and ``struct
ip_vs_scheduler`` (include/net/ip_vs.h).  A service keeps its destinations in the kernel's
order: a newly added real server is linked at the *head* of the list
(``list_add_rcu`` in ``__ip_vs_update_dest``), so iteration is newest first,
and every scheduler's tie-break depends on that order.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .addr import format_endpoint, format_ip
from .constants import (
    AF_INET,
    AF_INET6,
    CONN_F_FWD_MASK,
    DEST_F_AVAILABLE,
    DEST_F_OVERLOAD,
    PROTO_NAMES,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    TUN_TYPE_IPIP,
)
from .stats import Stats


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """How a service is found: (af, protocol, address, port) or (af, fwmark).

    For a firewall-mark service ``protocol``, ``addr`` and ``port`` are 0.
    """

    af: int
    protocol: int
    addr: int
    port: int
    fwmark: int = 0

    def describe(self) -> str:
        if self.fwmark:
            return f"FWM {self.fwmark}" + (" IPv6" if self.af == AF_INET6 else "")
        return f"{PROTO_NAMES.get(self.protocol, '?')} {format_endpoint(self.af, self.addr, self.port)}"


class Flow:
    """The plain key of a packet or connection, as a forwarder hands it in.

    ``caddr``/``cport``: the client; ``vaddr``/``vport``: the address the
    client used (for a fwmark service, the packet's real destination);
    ``fwmark``: the packet mark, 0 if none.  Addresses are integers (see
    :mod:`lvs.addr`).
    """

    __slots__ = ("af", "caddr", "cport", "fwmark", "protocol", "vaddr", "vport")

    def __init__(
        self,
        af: int,
        protocol: int,
        caddr: int,
        cport: int,
        vaddr: int,
        vport: int,
        fwmark: int = 0,
    ) -> None:
        self.af = af
        self.protocol = protocol
        self.caddr = caddr
        self.cport = cport
        self.vaddr = vaddr
        self.vport = vport
        self.fwmark = fwmark

    def __repr__(self) -> str:
        return (
            f"Flow({PROTO_NAMES.get(self.protocol, self.protocol)} "
            f"{format_endpoint(self.af, self.caddr, self.cport)} -> "
            f"{format_endpoint(self.af, self.vaddr, self.vport)}"
            + (f" mark={self.fwmark}" if self.fwmark else "")
            + ")"
        )


class Dest:
    """A real server of one service (``struct ip_vs_dest``).

    Counters follow the kernel: ``activeconns`` counts non-template
    connections in an active protocol state, ``inactconns`` the other
    non-template connections, ``persistconns`` the persistence templates bound
    to this server.  ``last_weight`` is the latest non-zero weight (only mh
    reads it).  ``flags`` holds AVAILABLE and OVERLOAD.
    """

    __slots__ = (
        "__weakref__",
        "activeconns",
        "addr",
        "af",
        "conn_flags",
        "flags",
        "inactconns",
        "l_threshold",
        "last_weight",
        "persistconns",
        "port",
        "pos",
        "refcnt",
        "sched_data",
        "stats",
        "svc",
        "trash_since",
        "tun_flags",
        "tun_port",
        "tun_type",
        "u_threshold",
        "weight",
    )

    def __init__(self, af: int, addr: int, port: int) -> None:
        self.af = af
        self.addr = addr
        self.port = port
        self.weight = 1
        self.last_weight = 1
        self.conn_flags = 0
        self.flags = DEST_F_AVAILABLE
        self.u_threshold = 0
        self.l_threshold = 0
        self.activeconns = 0
        self.inactconns = 0
        self.persistconns = 0
        self.tun_type = TUN_TYPE_IPIP
        self.tun_port = 0
        self.tun_flags = 0
        self.svc: Service | None = None
        self.stats = Stats()
        #: index in ``svc.destinations`` (kernel order), kept by the service
        self.pos = -1
        #: free for the scheduler's per-destination bookkeeping
        self.sched_data: Any = None
        #: virtual time the dest entered the trash list, or None
        self.trash_since: float | None = None
        #: connections and templates that point at this dest
        self.refcnt = 0

    # -- views -------------------------------------------------------------
    @property
    def fwd_method(self) -> int:
        return self.conn_flags & CONN_F_FWD_MASK

    @property
    def available(self) -> bool:
        return bool(self.flags & DEST_F_AVAILABLE)

    @property
    def overloaded(self) -> bool:
        return bool(self.flags & DEST_F_OVERLOAD)

    @property
    def totalconns(self) -> int:
        return self.activeconns + self.inactconns

    def endpoint(self) -> str:
        return format_endpoint(self.af, self.addr, self.port)

    def __repr__(self) -> str:
        return f"Dest({self.endpoint()} w={self.weight} a={self.activeconns} i={self.inactconns})"


class Service:
    """A virtual service (``struct ip_vs_service``).

    ``destinations`` is in kernel order (newest first).  ``timeout`` is the
    persistence timeout in seconds, ``netmask`` the persistence mask: an
    IPv4 mask as an integer, or an IPv6 prefix length.  ``flags`` holds
    PERSISTENT, ONEPACKET and the scheduler flags SCHED1..3 (``-b``).
    """

    __slots__ = (
        "__weakref__",
        "_addrs",
        "destinations",
        "flags",
        "key",
        "netmask",
        "pe_name",
        "sched_name",
        "scheduler",
        "stats",
        "timeout",
    )

    def __init__(self, key: ServiceKey) -> None:
        self.key = key
        self.sched_name = ""
        self.scheduler: Scheduler | None = None
        self.flags = 0
        self.timeout = 0
        self.netmask = 0xFFFFFFFF if key.af == AF_INET else 128
        self.pe_name = ""
        self.destinations: list[Dest] = []
        self.stats = Stats()
        self._addrs: dict[tuple[int, int, int], Dest] = {}

    # -- identity ----------------------------------------------------------
    @property
    def af(self) -> int:
        return self.key.af

    @property
    def protocol(self) -> int:
        return self.key.protocol

    @property
    def addr(self) -> int:
        return self.key.addr

    @property
    def port(self) -> int:
        return self.key.port

    @property
    def fwmark(self) -> int:
        return self.key.fwmark

    @property
    def persistent(self) -> bool:
        return bool(self.flags & SVC_F_PERSISTENT)

    @property
    def onepacket(self) -> bool:
        return bool(self.flags & SVC_F_ONEPACKET)

    @property
    def num_dests(self) -> int:
        return len(self.destinations)

    # -- destination list (kernel order) -----------------------------------
    def find_dest(self, af: int, addr: int, port: int) -> Dest | None:
        return self._addrs.get((af, addr, port))

    def link_dest(self, dest: Dest) -> None:
        """Link at the head of the list, as ``list_add_rcu`` does."""
        self.destinations.insert(0, dest)
        self._addrs[(dest.af, dest.addr, dest.port)] = dest
        self._renumber()

    def unlink_dest(self, dest: Dest) -> int:
        """Remove from the list; returns the index the dest had."""
        index = dest.pos
        del self.destinations[index]
        del self._addrs[(dest.af, dest.addr, dest.port)]
        dest.pos = -1
        self._renumber()
        return index

    def _renumber(self) -> None:
        for i, d in enumerate(self.destinations):
            d.pos = i

    def describe(self) -> str:
        return self.key.describe()

    def __repr__(self) -> str:
        return f"Service({self.describe()} {self.sched_name} dests={len(self.destinations)})"


@dataclass
class SchedContext:
    """What a scheduler may read besides its service: the random source (twos),
    the kernel generation (``classic`` selects pre-2025 behaviour) and the
    sysctls (lblc/lblcr expiration)."""

    rng: random.Random = field(default_factory=lambda: random.Random(0))
    classic: bool = False
    #: the table's sysctls (``lvs.sysctl.Sysctls``); None outside a table
    sysctl: Any = None

    @property
    def lblc_expiration(self) -> float:
        """sysctl net.ipv4.vs.lblc_expiration, seconds (default 24 h)."""
        return float(self.sysctl.lblc_expiration) if self.sysctl is not None else 24 * 60 * 60.0

    @property
    def lblcr_expiration(self) -> float:
        """sysctl net.ipv4.vs.lblcr_expiration, seconds (default 24 h)."""
        return float(self.sysctl.lblcr_expiration) if self.sysctl is not None else 24 * 60 * 60.0


class Scheduler:
    """``struct ip_vs_scheduler``: the hooks every scheduler implements, bound
    to one service.  The table calls:

    * ``Scheduler(svc, ctx)`` when a service gets the scheduler
      (``init_service``), with ``svc.destinations`` already in kernel order;
    * ``add_dest(dest)`` after a real server was linked at the head of the list;
    * ``del_dest(dest, index)`` after it was unlinked (``index`` is where it was);
    * ``upd_dest(dest)`` after a real server was edited (weight, thresholds...);
    * ``counts_changed(dest)`` after the connection table changed a real
      server's counters or its OVERLOAD flag (pylvs only: it keeps the
      incremental indexes exact);
    * ``schedule(flow, now)`` to pick a real server for a new connection, or None;
    * ``done()`` when the service drops the scheduler (``done_service``);
    * ``tick(now)`` now and then, for schedulers with timers (lblc, lblcr).

    A destination is *eligible* for a new connection when its weight is above
    0 and its OVERLOAD flag is clear; each scheduler spells out its own
    variations of that rule where the kernel has them.
    """

    name: ClassVar[str] = ""
    #: False: the choice reads no connection counter, only OVERLOAD (and
    #: weights), so ``counts_changed`` is called only when OVERLOAD flips
    watches_counts: ClassVar[bool] = True

    def __init__(self, svc: Service, ctx: SchedContext) -> None:
        self.svc = svc
        self.ctx = ctx

    def add_dest(self, dest: Dest) -> None:
        """A real server was linked at the head of the list."""

    def del_dest(self, dest: Dest, index: int) -> None:
        """A real server was unlinked from position ``index``."""

    def upd_dest(self, dest: Dest) -> None:
        """A real server's weight, thresholds or flags were edited."""

    def counts_changed(self, dest: Dest) -> None:
        """``dest``'s connection counters (activeconns, inactconns) or its
        OVERLOAD flag just changed.

        The connection table calls ``svc.scheduler.counts_changed(dest)``
        after every such change (bind, unbind, active/inactive transition,
        threshold flag flip).  Schedulers with an incremental index refresh
        the dest's key here; the kernel has no such hook because it walks
        the list on every decision.
        """

    def schedule(self, flow: Flow, now: float) -> Dest | None:
        raise NotImplementedError

    def done(self) -> None:
        """The service drops this scheduler."""

    def tick(self, now: float) -> None:
        """Periodic work (garbage collection of caches)."""

    def holds(self) -> Iterable[Dest]:
        """The real servers this scheduler's own state holds a reference on
        (``ip_vs_dest_hold``): such a dest stays in the trash after deletion
        until the reference goes.  Only lblc and lblcr keep any."""
        return ()

    def explain(self) -> str:
        """A one-line description of the scheduler's state, for teaching."""
        return self.name


__all__ = [
    "AF_INET",
    "AF_INET6",
    "Dest",
    "Flow",
    "SchedContext",
    "Scheduler",
    "Service",
    "ServiceKey",
    "format_ip",
]
