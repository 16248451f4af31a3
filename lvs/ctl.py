"""The admin half of the emulated kernel (ip_vs_ctl.c): the service table and
its operations, with the kernel's errnos.

One :class:`IPVS` is one network namespace's table.  Every operation takes the
current virtual time ``now`` (the trash list of deleted real servers is timed).
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .conn import ConnView
from .conntab import ConnTable
from .constants import (
    AF_INET,
    AF_INET6,
    CONN_F_DROUTE,
    CONN_F_FWD_MASK,
    CONN_F_INACTIVE,
    CONN_F_MASQ,
    CONN_F_NOOUTPUT,
    CONN_F_TUNNEL,
    DEST_F_AVAILABLE,
    DEST_F_OVERLOAD,
    DEST_TRASH_PERIOD,
    INT_MAX,
    IPPROTO_IP,
    SVC_F_HASHED,
    TUN_TYPE_IPIP,
)
from .errors import (
    OP_ADD_DEST,
    OP_ADD_SERVICE,
    OP_DEL_DEST,
    OP_DEL_SERVICE,
    OP_EDIT_DEST,
    OP_EDIT_SERVICE,
    OP_GET_SERVICE,
    OP_SET_TIMEOUT,
    OP_START_DAEMON,
    OP_STOP_DAEMON,
    OP_ZERO_SERVICE,
    IPVSError,
)
from .model import Dest, SchedContext, Service, ServiceKey
from .sched import get_scheduler
from .stats import Stats
from .sysctl import DEFAULT_UDP_TIMEOUT, Sysctls, default_tcp_timeouts

#: persistence engines the kernel ships (ip_vs_pe_sip.c)
KNOWN_PE = ("sip",)


@dataclass
class ServiceSpec:
    """What ``ipvsadm -A/-E`` hands the kernel (``struct ip_vs_service_user_kern``)."""

    key: ServiceKey
    sched_name: str = "wlc"
    flags: int = 0
    timeout: int = 0
    netmask: int | None = None
    pe_name: str = ""


@dataclass
class DestSpec:
    """What ``ipvsadm -a/-e`` hands the kernel (``struct ip_vs_dest_user_kern``)."""

    af: int
    addr: int
    port: int
    fwd: int = CONN_F_DROUTE
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    tun_type: int = TUN_TYPE_IPIP
    tun_port: int = 0
    tun_flags: int = 0


@dataclass
class SyncDaemon:
    """A configured sync daemon (``--start-daemon``): lvsd runs it (lvsd/syncd.py)."""

    state: str  # "master" | "backup"
    mcast_ifn: str = "eth0"
    syncid: int = 0
    sync_maxlen: int = 0
    mcast_group: str = ""
    mcast_port: int = 8848
    mcast_ttl: int = 1


@dataclass
class Timeouts:
    """Protocol timeouts in seconds: per TCP state, and UDP."""

    tcp: list[float] = field(default_factory=default_tcp_timeouts)
    udp: float = DEFAULT_UDP_TIMEOUT


def update_overload(dest: Dest) -> None:
    """``ip_vs_dest_update_overload`` (2026 stable kernels): no upper threshold
    clears OVERLOAD; a non-template total at or above it sets the flag; below
    the lower mark (``-y``, or ``u - u/4`` without one) clears it; in between
    the flag stays as it was (hysteresis)."""
    u = dest.u_threshold
    total = dest.activeconns + dest.inactconns
    if u == 0:
        dest.flags &= ~DEST_F_OVERLOAD
    elif total >= u:
        dest.flags |= DEST_F_OVERLOAD
    elif total < (dest.l_threshold or u - (u >> 2)):
        dest.flags &= ~DEST_F_OVERLOAD


def unicast_dest(af: int, addr: int) -> bool:
    """Whether ``ip_vs_new_dest`` takes ``addr`` as a real server: an IPv4 one
    must be unicast or local (``inet_addr_type``: not 0.0.0.0 (6.1's
    ``ipv4_is_zeronet``; 0.1.2.3 is taken), 255.255.255.255, multicast 224/4,
    or the loopback's broadcast 127.255.255.255); an IPv6 one
    unicast and not link-local (``ipv6_addr_type``: not ::, ff00::/8, fe80::/10,
    or v4-mapped ::ffff:0:0/96).  (The kernel would take a link-local address
    configured on the director; pylvs sees no interface addresses.)"""
    if af == AF_INET6:
        return not (addr == 0 or addr >> 120 == 0xFF or addr >> 118 == 0xFE80 >> 6 or addr >> 32 == 0xFFFF)
    return not (addr == 0 or addr >> 28 == 0xE or addr in (0xFFFFFFFF, 0x7FFFFFFF))


def _addr_in_af(af: int, addr_af: int, addr: int) -> int:
    """What ``ip_vs_addr_equal(af, ...)`` compares of an address of family
    ``addr_af``: all of it for IPv6, the first 32-bit word for IPv4."""
    if af == AF_INET6:
        return addr
    return (addr >> 96) & 0xFFFFFFFF if addr_af == AF_INET6 else addr & 0xFFFFFFFF


class IPVS:
    """One network namespace's IPVS: services, real servers, sysctls, timeouts.

    ``classic`` selects the pre-2025 kernel rules (overhead with 256,
    threshold hysteresis of the old code); the default follows recent stable
    kernels, as the oracle's 6.1.192 does.
    """

    def __init__(self, *, rng: random.Random | None = None, classic: bool = False) -> None:
        self.services: dict[ServiceKey, Service] = {}
        self.sysctl = Sysctls()
        self.timeouts = Timeouts()
        self.classic = classic
        self.sched_ctx = SchedContext(rng=rng or random.Random(0), classic=classic, sysctl=self.sysctl)
        self.trash: list[Dest] = []
        #: when the trash timer runs next (None: the trash is empty)
        self.trash_timer: float | None = None
        self.daemons: dict[str, SyncDaemon] = {}
        #: lvsd's sync daemon sockets (lvsd/syncd.py): called with ("start" |
        #: "stop", daemon); may refuse a start with IPVSError.  Without it a
        #: daemon is only recorded.
        self.daemon_hook: Callable[[str, SyncDaemon], None] | None = None
        self.stats = Stats()
        #: called with (service) when a service appears / changes / goes
        self.listeners: list = []
        #: the connection table of the Director that drives this IPVS (None
        #: for a table alone: no entries)
        self.conns: ConnTable | None = None
        #: copies of entries other tables hold for the same director (lvsd's
        #: ``--workers`` processes, gathered before a connection listing)
        self.remote_conns: list[ConnView] = []
        #: how many fwmark services (the kernel's fwm_services counter)
        self._by_port: dict[tuple[int, int, int, int], Service] = {}
        self._by_fwmark: dict[tuple[int, int], Service] = {}
        #: ``ip_vs_expire_nodest_conn_flush`` of the connection table (set by
        #: the Director that owns the entries); run after a real server is
        #: deleted while ``expire_nodest_conn`` is on
        self.nodest_flush: Callable[[float], None] | None = None

    # -- lookup ---------------------------------------------------------------
    def get(self, key: ServiceKey) -> Service | None:
        return self.services.get(key)

    def get_service(self, key: ServiceKey, op: str = OP_GET_SERVICE) -> Service:
        svc = self.services.get(key)
        if svc is None:
            raise IPVSError(op, errno.ESRCH)
        return svc

    def __iter__(self) -> Iterator[Service]:
        return iter(self.services.values())

    def find_service(self, af: int, protocol: int, vaddr: int, vport: int, fwmark: int) -> Service | None:
        """``ip_vs_service_find``: the fwmark table first, then (proto, addr, port),
        then the port-0 catch-all service of that address."""
        if fwmark:
            svc = self._by_fwmark.get((af, fwmark))
            if svc is not None:
                return svc
        svc = self._by_port.get((af, protocol, vaddr, vport))
        if svc is not None:
            return svc
        if vport:
            return self._by_port.get((af, protocol, vaddr, 0))
        return None

    # -- services ---------------------------------------------------------------
    def _check_sched(self, op: str, spec: ServiceSpec) -> type:
        cls = get_scheduler(spec.sched_name)
        if cls is None:
            raise IPVSError(op, errno.ENOENT, f"scheduler {spec.sched_name!r} not found")
        if spec.pe_name and spec.pe_name not in KNOWN_PE:
            raise IPVSError(op, errno.ENOENT, f"persistence engine {spec.pe_name!r} not found")
        if spec.key.af == AF_INET6 and spec.netmask is not None and not 1 <= spec.netmask <= 128:
            raise IPVSError(op, errno.EINVAL, "bad IPv6 prefix length")
        if spec.timeout < 0 or spec.timeout > INT_MAX // 250:
            raise IPVSError(op, errno.EINVAL, "bad persistence timeout")
        return cls

    def add_service(self, spec: ServiceSpec, now: float = 0.0) -> Service:
        """``ip_vs_add_service``: EEXIST if present, ENOENT for an unknown scheduler."""
        key = spec.key
        if key.protocol not in (IPPROTO_IP, 6, 17, 132) or (key.fwmark == 0 and key.protocol == IPPROTO_IP):
            raise IPVSError(OP_ADD_SERVICE, errno.EPROTONOSUPPORT)
        if key in self.services:
            raise IPVSError(OP_ADD_SERVICE, errno.EEXIST)
        cls = self._check_sched(OP_ADD_SERVICE, spec)
        svc = Service(key)
        self._apply_service_spec(svc, spec)
        svc.sched_name = spec.sched_name
        svc.scheduler = cls(svc, self.sched_ctx)
        self.services[key] = svc
        if key.fwmark:
            self._by_fwmark[(key.af, key.fwmark)] = svc
        else:
            self._by_port[(key.af, key.protocol, key.addr, key.port)] = svc
        self._notify("add", svc)
        return svc

    @staticmethod
    def _apply_service_spec(svc: Service, spec: ServiceSpec) -> None:
        svc.flags = spec.flags | SVC_F_HASHED
        svc.timeout = spec.timeout
        if spec.netmask is not None:
            svc.netmask = spec.netmask
        else:
            svc.netmask = 0xFFFFFFFF if svc.af == AF_INET else 128
        svc.pe_name = spec.pe_name

    def edit_service(self, spec: ServiceSpec, now: float = 0.0) -> Service:
        """``ip_vs_edit_service``: flags, timeout, netmask and pe are replaced; a
        different scheduler drops the old one's state and starts the new one
        from the current list."""
        svc = self.get_service(spec.key, OP_EDIT_SERVICE)
        cls = self._check_sched(OP_EDIT_SERVICE, spec)
        if spec.sched_name != svc.sched_name:
            # the kernel unbinds the old scheduler first: if the new one
            # cannot bind (mh with too many servers), none is left
            if svc.scheduler is not None:
                svc.scheduler.done()
            svc.scheduler = None
            svc.sched_name = "none"
            svc.scheduler = cls(svc, self.sched_ctx)
            svc.sched_name = spec.sched_name
        self._apply_service_spec(svc, spec)
        self._notify("edit", svc)
        return svc

    def del_service(self, key: ServiceKey, now: float = 0.0) -> None:
        """``ip_vs_del_service``: the real servers go to the trash list."""
        svc = self.get_service(key, OP_DEL_SERVICE)
        self._remove_service(svc, now)
        self._expire_nodest(now)

    def _remove_service(self, svc: Service, now: float) -> None:
        key = svc.key
        del self.services[key]
        if key.fwmark:
            self._by_fwmark.pop((key.af, key.fwmark), None)
        else:
            self._by_port.pop((key.af, key.protocol, key.addr, key.port), None)
        if svc.scheduler is not None:
            svc.scheduler.done()
        for dest in list(svc.destinations):
            svc.unlink_dest(dest)
            self._to_trash(dest, now)
        svc.scheduler = None
        self._notify("del", svc)

    def flush(self, now: float = 0.0) -> None:
        """``ipvsadm -C``: delete every service."""
        for svc in list(self.services.values()):
            self._remove_service(svc, now)
        self._expire_nodest(now)

    def zero(self, key: ServiceKey | None = None) -> None:
        """``ipvsadm -Z``: zero the counters of one service or of all (and the totals)."""
        if key is not None:
            svc = self.get_service(key, OP_ZERO_SERVICE)
            svcs = [svc]
        else:
            svcs = list(self.services.values())
            self.stats.zero()
        for svc in svcs:
            svc.stats.zero()
            for dest in svc.destinations:
                dest.stats.zero()

    # -- real servers -------------------------------------------------------------
    @staticmethod
    def _check_dest_spec(op: str, svc: Service, spec: DestSpec) -> None:
        if spec.weight < 0 or spec.weight > INT_MAX:
            raise IPVSError(op, errno.ERANGE, "weight out of range")
        if spec.u_threshold < 0 or spec.u_threshold > INT_MAX:
            raise IPVSError(op, errno.ERANGE, "upper threshold out of range")
        if spec.l_threshold < 0 or spec.l_threshold > INT_MAX:
            raise IPVSError(op, errno.ERANGE, "lower threshold out of range")
        if spec.l_threshold > spec.u_threshold:
            raise IPVSError(op, errno.ERANGE, "lower threshold above upper threshold")
        if spec.af != svc.af and (spec.fwd & CONN_F_FWD_MASK) != CONN_F_TUNNEL:
            raise IPVSError(op, errno.EINVAL, "mixed address families need tunnelling")

    def add_dest(self, key: ServiceKey, spec: DestSpec, now: float = 0.0) -> Dest:
        """``ip_vs_add_dest``: ESRCH without the service, EEXIST if present; a real
        server deleted less than 120 s ago comes back from the trash with its
        connection counters."""
        svc = self.get_service(key, OP_ADD_DEST)
        self._check_dest_spec(OP_ADD_DEST, svc, spec)
        if svc.find_dest(spec.af, spec.addr, spec.port) is not None:
            raise IPVSError(OP_ADD_DEST, errno.EEXIST)
        dest = self._trash_get(svc, spec)
        if dest is not None:
            if dest.svc is not svc:
                dest.stats.zero()
        else:
            self._check_dest_address(spec)
            dest = Dest(spec.af, spec.addr, spec.port)
        dest.svc = svc
        self._update_dest(svc, dest, spec, add=True)
        svc.link_dest(dest)
        if svc.scheduler is not None:
            svc.scheduler.add_dest(dest)
        self._notify("edit", svc)
        return dest

    def edit_dest(self, key: ServiceKey, spec: DestSpec, now: float = 0.0) -> Dest:
        """``ip_vs_edit_dest``: ESRCH without the service, ENOENT without the dest."""
        svc = self.get_service(key, OP_EDIT_DEST)
        self._check_dest_spec(OP_EDIT_DEST, svc, spec)
        dest = svc.find_dest(spec.af, spec.addr, spec.port)
        if dest is None:
            raise IPVSError(OP_EDIT_DEST, errno.ENOENT)
        self._update_dest(svc, dest, spec, add=False)
        if svc.scheduler is not None:
            svc.scheduler.upd_dest(dest)
        self._notify("edit", svc)
        return dest

    def del_dest(self, key: ServiceKey, af: int, addr: int, port: int, now: float = 0.0) -> None:
        """``ip_vs_del_dest``: unlink, tell the scheduler, keep it in the trash."""
        svc = self.get_service(key, OP_DEL_DEST)
        dest = svc.find_dest(af, addr, port)
        if dest is None:
            raise IPVSError(OP_DEL_DEST, errno.ENOENT)
        index = svc.unlink_dest(dest)
        if svc.scheduler is not None:
            svc.scheduler.del_dest(dest, index)
        self._to_trash(dest, now)
        self._notify("edit", svc)
        self._expire_nodest(now)

    @staticmethod
    def _check_dest_address(spec: DestSpec) -> None:
        """``ip_vs_new_dest``: EINVAL for an address :func:`unicast_dest` refuses."""
        if not unicast_dest(spec.af, spec.addr):
            raise IPVSError(OP_ADD_DEST, errno.EINVAL, "real server address not unicast")

    def _update_dest(self, svc: Service, dest: Dest, spec: DestSpec, add: bool) -> None:
        """``__ip_vs_update_dest``: weight (last_weight keeps the latest non-zero
        one), forwarding method, tunnel, thresholds and the overload flag."""
        if add or spec.weight != 0:
            dest.last_weight = spec.weight
        dest.weight = spec.weight
        conn_flags = (spec.fwd & CONN_F_FWD_MASK) | CONN_F_INACTIVE
        if (conn_flags & CONN_F_FWD_MASK) != CONN_F_MASQ:
            conn_flags |= CONN_F_NOOUTPUT
        dest.conn_flags = conn_flags
        dest.tun_type = spec.tun_type
        dest.tun_port = spec.tun_port
        dest.tun_flags = spec.tun_flags
        dest.flags |= DEST_F_AVAILABLE
        old_u, old_l = dest.u_threshold, dest.l_threshold
        dest.u_threshold = spec.u_threshold
        dest.l_threshold = spec.l_threshold
        if self.classic:
            # classic kernels only ever clear the flag on edit
            if spec.u_threshold == 0 or spec.u_threshold > old_u:
                dest.flags &= ~DEST_F_OVERLOAD
        elif (old_u, old_l) != (spec.u_threshold, spec.l_threshold):
            update_overload(dest)

    # -- connection counters (ip_vs_bind_dest / ip_vs_unbind_dest) ---------------
    def dest_conn_bound(self, dest: Dest) -> None:
        """A connection was bound to ``dest`` (counters already updated): set
        OVERLOAD when the non-template total reaches the upper threshold."""
        u = dest.u_threshold
        if u and dest.activeconns + dest.inactconns >= u:
            dest.flags |= DEST_F_OVERLOAD

    def dest_conn_unbound(self, dest: Dest) -> None:
        """A connection left ``dest``: maybe clear OVERLOAD by the lower threshold."""
        if not dest.flags & DEST_F_OVERLOAD:
            return
        if self.classic:
            total = dest.activeconns + dest.inactconns
            if dest.l_threshold:
                clear = total < dest.l_threshold
            elif dest.u_threshold:
                clear = total * 4 < dest.u_threshold * 3
            else:
                clear = True
            if clear:
                dest.flags &= ~DEST_F_OVERLOAD
        else:
            update_overload(dest)

    # -- trash ---------------------------------------------------------------------
    def _to_trash(self, dest: Dest, now: float) -> None:
        """``__ip_vs_del_dest``: unavailable, onto the trash list; the trash timer
        starts (60 s) when the list was empty.  ``trash_since`` is the kernel's
        idle_start: unset until a timer run finds the dest unreferenced."""
        dest.flags &= ~DEST_F_AVAILABLE
        dest.trash_since = None
        if not self.trash:
            self.trash_timer = now + DEST_TRASH_PERIOD / 2
        self.trash.insert(0, dest)

    def _expire_nodest(self, now: float) -> None:
        """``ip_vs_enqueue_expire_nodest_conns``: with ``expire_nodest_conn``
        set, a deleted real server's entries go at once (the kernel's work
        runs one jiffy later, before any packet the next command sends)."""
        if self.sysctl.expire_nodest_conn and self.nodest_flush is not None:
            self.nodest_flush(now)

    def _trash_get(self, svc: Service, spec: DestSpec) -> Dest | None:
        """``ip_vs_trash_get_dest``: the newest trashed dest (the list is
        pushed at its head) with the same family, address and port, made for
        a service of the same firewall mark and protocol and, unless that is
        a mark, the same virtual address (compared in the new service's
        family) and port.  The service object may be another one: a service
        deleted and made again gets its old real servers back."""
        vkey = svc.key
        for i, dest in enumerate(self.trash):
            old = dest.svc
            if old is None:
                continue
            okey = old.key
            if (
                dest.af == spec.af
                and dest.addr == spec.addr
                and dest.port == spec.port
                and okey.fwmark == vkey.fwmark
                and okey.protocol == vkey.protocol
                and (
                    vkey.fwmark != 0
                    or (
                        _addr_in_af(vkey.af, okey.af, okey.addr) == _addr_in_af(vkey.af, vkey.af, vkey.addr)
                        and okey.port == vkey.port
                    )
                )
            ):
                del self.trash[i]
                if not self.trash:
                    self.trash_timer = None
                return dest
        return None

    def trash_expire(self, now: float) -> None:
        """``ip_vs_dest_trash_expire``, every 60 s while the trash holds dests:
        a dest still referenced by entries or by an lblc/lblcr cache stays;
        the first run that finds it unreferenced notes the time; 120 s after
        that it is freed."""
        held = {id(d) for svc in self.services.values() if svc.scheduler for d in svc.scheduler.holds()}
        keep = []
        for dest in self.trash:
            if dest.refcnt > 0 or id(dest) in held:
                keep.append(dest)
            elif dest.trash_since is None:
                dest.trash_since = now
                keep.append(dest)
            elif now < dest.trash_since + DEST_TRASH_PERIOD:
                keep.append(dest)
        self.trash = keep
        self.trash_timer = now + DEST_TRASH_PERIOD / 2 if keep else None

    # -- timeouts, daemons -------------------------------------------------------------
    def set_timeouts(self, tcp: int, tcpfin: int, udp: int) -> None:
        """``ipvsadm --set``: ESTABLISHED, FIN_WAIT and UDP timeouts; 0 keeps a value."""
        for v in (tcp, tcpfin, udp):
            if v < 0 or v > INT_MAX // 250:
                raise IPVSError(OP_SET_TIMEOUT, errno.EINVAL)
        if tcp:
            self.timeouts.tcp[1] = tcp
        if tcpfin:
            self.timeouts.tcp[4] = tcpfin
        if udp:
            self.timeouts.udp = udp

    def get_timeouts(self) -> tuple[int, int, int]:
        t = self.timeouts
        return int(t.tcp[1]), int(t.tcp[4]), int(t.udp)

    def start_daemon(self, daemon: SyncDaemon) -> None:
        """``start_sync_thread``: EEXIST if that role runs; the daemon hook
        opens the sockets (and may refuse, e.g. ENODEV)."""
        if daemon.state in self.daemons:
            raise IPVSError(OP_START_DAEMON, errno.EEXIST)
        if self.daemon_hook is not None:
            self.daemon_hook("start", daemon)
        self.daemons[daemon.state] = daemon

    def stop_daemon(self, state: str) -> None:
        if state not in self.daemons:
            raise IPVSError(OP_STOP_DAEMON, errno.ESRCH)
        daemon = self.daemons.pop(state)
        if self.daemon_hook is not None:
            self.daemon_hook("stop", daemon)

    # -- observers ---------------------------------------------------------------------
    def _notify(self, what: str, svc: Service) -> None:
        for cb in self.listeners:
            cb(what, svc)


__all__ = [
    "AF_INET6",
    "CONN_F_INACTIVE",
    "IPVS",
    "DestSpec",
    "ServiceSpec",
    "SyncDaemon",
    "Timeouts",
    "unicast_dest",
]
