"""The NAT data plane: lvsd relays TCP and UDP for virtual services whose real
servers use masquerading (``-m``), asking the core for every decision.

What it serves
    Every TCP and UDP virtual service with a non-zero port and no firewall
    mark that has at least one masquerading real server (or no real server
    yet: then clients are refused at once, as the kernel does).  One listening
    socket per service, bound with IP_FREEBIND (IPV6_FREEBIND) and
    SO_REUSEADDR, so a service may be created before its address exists.  A
    VIP that is not local is added to ``lo`` as a /32 (/128) and removed with
    the service (:mod:`forwarding.vip`; off with ``manage_vips=False``).
    Port-0 (persistent) services, fwmark services and SCTP services with
    masquerading real servers stay valid in the table but are not served:
    :meth:`NatPlane.warnings` says so while they exist, and a warning is
    logged when they are added.  Services whose real servers all use -g/-i
    belong to the DR/TUN plane (forwarding/dr.py); in a mixed service the
    NAT plane relays to every real server, -g/-i ones included.

TCP and UDP
    The relays themselves: :mod:`forwarding.nat_tcp` (one relay per client
    connection, with the TCP states the core sees) and
    :mod:`forwarding.nat_udp` (one VIP socket per service, one upstream
    socket per client flow, ICMP port unreachable, ``-o``).  This module
    holds the plane (:class:`NatPlane`: table changes, sweeps, counters) and
    the listening socket of each served service.

Entries, expiry, deleted real servers
    Traffic re-arms the entry's timer (every ``SWEEP`` seconds for busy
    flows, so an expiry time shown by ``-L -c`` may lag by that much).  When
    the core expires an entry (its timeout passed without traffic) the proxy
    resets both connections (for UDP: forgets the flow), which is what the
    kernel's behaviour amounts to for the endpoints.  Weight 0: existing
    connections go on, new ones go elsewhere (core).  A deleted real server:
    as in the kernel its connections stop passing traffic (both sides are
    paused; they resume if the server is added back before the entry
    expires) and are reset when the entry expires; with
    ``expire_nodest_conn`` they are expired and reset at once.

Counters: what a "packet" is here
    Bytes are counted exactly: payload bytes relayed (InBytes client -> real
    server, OutBytes back), not IP packet lengths as in the kernel; a PROXY
    protocol header is not counted.  A "packet" is one read: one recv() of
    payload on one side (however the TCP stream was segmented), one datagram
    for UDP, plus each synthetic control segment (SYN, SYN+ACK, ACK, FIN,
    RST) shown to the core; so packet counts are close to the kernel's for
    small exchanges and far below them for bulk.  Counts are batched: per read only an integer is
    bumped, and the totals go to the core's counters every ``SWEEP`` seconds
    and when a connection ends.

Client address
    Real servers see connections from the director (its address on the
    route to them), not from the client as with kernel NAT, and their
    replies need no route back through the director.  Per real server the
    PROXY protocol (v1 text or v2 binary; v2 also for UDP, one header per
    datagram) tells them the client; see :mod:`forwarding.proxyproto`.  With
    ``transparent=True`` the upstream socket is bound to the client's address
    (IP_TRANSPARENT, needs CAP_NET_ADMIN) so the real server sees the client
    as with kernel NAT; its replies must then be routed back through the
    director (the real server's default route, plus policy routing on the
    director that delivers them locally).

Workers
    ``workers > 1``: N processes each run this plane on their own copy of
    the table, with SO_REUSEPORT listeners; see :mod:`forwarding.workers` for
    the scheduling semantics across workers, how their counters and entries
    reach the listings, and how a dead worker is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import socket
from collections.abc import Callable
from typing import Any

from lvs.constants import (
    AF_INET6,
    CONN_F_FWD_MASK,
    CONN_F_MASQ,
    DEST_F_AVAILABLE,
    IPPROTO_TCP,
    IPPROTO_UDP,
    SVC_F_PERSISTENT,
)
from lvs.core import FORWARD, Director
from lvs.model import Flow, Service, ServiceKey
from lvs.proto_tcp import SYN

from . import proxyproto
from .connector import Connect
from .nat_common import _fmt, _ipint, log
from .nat_tcp import _CONNECTING, _DONE, HIGH_WATER, TcpSession, _connect_transparent, _rst, _Upstream
from .nat_udp import _UdpFlow, _UdpFront
from .vip import VipManager

IP_FREEBIND = 15
IPV6_FREEBIND = 78

#: seconds between two sweeps (counters to the core, timers, expiry, dests)
SWEEP = 0.5
#: listen() backlog of a virtual service
BACKLOG = 4096


# ----------------------------------------------------------------------------
# services
# ----------------------------------------------------------------------------
class _ServedService:
    """The listening socket of one served virtual service."""

    def __init__(self, plane: NatPlane, svc: Service) -> None:
        self.plane = plane
        self.key: ServiceKey = svc.key
        self.af = svc.key.af
        self.vaddr = svc.key.addr
        self.vport = svc.key.port
        self.host = _fmt(self.af, self.vaddr)
        self.udp = svc.key.protocol == IPPROTO_UDP
        self.sock: socket.socket | None = None
        self.server: Any = None
        self.front: _UdpFront | None = None
        self.task: asyncio.Future[Any] | None = None
        self.vip = False
        self.closed = False
        self.persistent = bool(svc.flags & SVC_F_PERSISTENT)
        self.steered = False

    def steer(self, persistent: bool) -> None:
        """With workers: a persistent service steers each client address to
        one worker (so its template is found again); others let the kernel
        spread connections by their 4-tuple."""
        self.persistent = persistent
        sock = self.sock
        if sock is None or self.plane.reuse_port < 2 or persistent == self.steered:
            return
        from .workers import attach_client_steering, detach_steering

        try:
            if persistent:
                attach_client_steering(sock, self.af, self.plane.reuse_port)
            else:
                detach_steering(sock)
            self.steered = persistent
        except OSError as exc:
            log.warning("client steering on %s: %s", self.describe(), exc)

    def describe(self) -> str:
        return ("UDP " if self.udp else "TCP ") + _endpoint(self.af, self.host, self.vport)

    def open(self) -> None:
        """Bind and listen now (so traffic queues from this moment); the
        event loop takes the socket over as soon as it runs."""
        af = self.af
        sock = socket.socket(af, socket.SOCK_DGRAM if self.udp else socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.plane.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if af == AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            else:
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            sock.bind((self.host, self.vport))
            if not self.udp:
                sock.listen(BACKLOG)
            self.sock = sock
            if self.plane.reuse_port > 1:
                # after listen(): a TCP group formed earlier refuses the next bind
                self.steer(self.persistent)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        loop = asyncio.get_running_loop()
        if self.udp:
            self.front = _UdpFront(self)
            coro = loop.create_datagram_endpoint(lambda: self.front, sock=sock)  # type: ignore[arg-type,return-value]
        else:
            coro = loop.create_server(functools.partial(TcpSession, self), sock=sock, backlog=BACKLOG)
        self.task = asyncio.ensure_future(coro)
        self.task.add_done_callback(self._opened)

    def _opened(self, fut: asyncio.Future[Any]) -> None:
        self.task = None
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self.plane.problem(f"cannot serve {self.describe()}: {exc}")
            return
        result = fut.result()
        if self.udp:
            if self.closed:
                result[0].close()
        else:
            self.server = result
            if self.closed:
                result.close()

    def close(self) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()
            if self.sock is not None:
                self.sock.close()
        if self.server is not None:
            self.server.close()
        if self.front is not None:
            self.front.close()

    # -- TCP accept --------------------------------------------------------------
    def accept(self, s: TcpSession, transport: Any) -> None:
        plane = self.plane
        plane.accepted += 1
        peer = transport.get_extra_info("peername")
        af = self.af
        vaddr = self.vaddr
        if not vaddr:
            vaddr = _ipint(af, transport.get_extra_info("sockname")[0])
        flow = Flow(af, IPPROTO_TCP, _ipint(af, peer[0]), peer[1], vaddr, self.vport)
        now = plane.now()
        v = plane.director.process_in(flow, now, SYN, 0)
        cp = v.conn
        if v.action != FORWARD or cp is None:
            plane.refused += 1
            s.state = _DONE
            _rst(transport)
            return
        s.flow = flow
        s.conn = cp
        s.t0 = now
        transport.set_write_buffer_limits(HIGH_WATER)
        up = s.up = _Upstream(s)
        host, port = plane.target(cp)
        loop = plane.loop
        if plane.transparent:
            coro = _connect_transparent(loop, up, af, peer[0], host, port, cp.daf)
        else:
            coro = loop.create_connection(up.factory, host, port)
        plane.sessions.add(s)
        s.task = Connect(coro, s.connected)

    def proxy_header(self, s: TcpSession) -> bytes:
        plane = self.plane
        if not plane.proxy_protocol:
            return b""
        cp = s.conn
        version = plane.proxy_protocol.get(plane.target(cp))
        if not version:
            return b""
        flow = s.flow
        assert flow is not None
        return proxyproto.header(
            version,
            self.af,
            socket.SOCK_STREAM,
            _fmt(self.af, flow.caddr),
            flow.cport,
            _fmt(self.af, flow.vaddr),
            flow.vport,
        )

    def proxy_header_udp(self, f: _UdpFlow) -> bytes:
        plane = self.plane
        if not plane.proxy_protocol:
            return b""
        version = plane.proxy_protocol.get(plane.target(f.conn))
        if not version:
            return b""
        return proxyproto.header(
            version, self.af, socket.SOCK_DGRAM, f.addr[0], f.addr[1], self.host, self.vport
        )


def _endpoint(af: int, host: str, port: int) -> str:
    return f"[{host}]:{port}" if af == AF_INET6 else f"{host}:{port}"


def unserved_reason(svc: Service) -> str | None:
    """Why the NAT plane does not serve ``svc``: None if it does, ``""`` if
    the service belongs to the DR/TUN plane (every real server is -g/-i:
    that plane reports on it), else the warning text."""
    key = svc.key
    if svc.destinations and not any(d.conn_flags & CONN_F_FWD_MASK == CONN_F_MASQ for d in svc.destinations):
        return ""
    if key.fwmark:
        return "firewall-mark services are kept in the table but the NAT data plane does not serve them"
    if key.protocol not in (IPPROTO_TCP, IPPROTO_UDP):
        return "only TCP and UDP services are served by the NAT data plane"
    if key.port == 0:
        kind = "persistent port-0" if svc.flags & SVC_F_PERSISTENT else "port-0"
        return f"{kind} services are kept in the table but the NAT data plane does not serve them"
    return None


# ----------------------------------------------------------------------------
# the plane
# ----------------------------------------------------------------------------
class NatPlane:
    """The NAT data plane of one lvsd.

    ``proxy_protocol`` maps a real server endpoint ``(host, port)`` to the
    PROXY protocol version (1 or 2) it wants (see
    :func:`forwarding.proxyproto.parse_spec` for the ``RIP:PORT=v2`` text
    form); ``transparent`` connects to real servers from the client's address.
    """

    def __init__(
        self,
        director: Director,
        now_fn: Callable[[], float],
        *,
        manage_vips: bool = True,
        workers: int = 1,
        proxy_protocol: dict[tuple[str, int], int] | None = None,
        transparent: bool = False,
        connect_timeout: float = 5.0,
        reuse_port: int = 0,
    ) -> None:
        self.director = director
        self.now = now_fn
        self.vips = VipManager(manage_vips)
        self.workers = workers
        self.proxy_protocol = dict(proxy_protocol or {})
        self.transparent = transparent
        self.connect_timeout = connect_timeout
        #: in a worker: the number of workers sharing each listening address
        self.reuse_port = reuse_port
        #: with ``workers > 1``, the processes that carry the traffic
        self.pool: Any = None
        self.served: dict[ServiceKey, _ServedService] = {}
        self.sessions: set[TcpSession] = set()
        self._targets: dict[tuple[int, int, int], tuple[str, int]] = {}
        self._unserved: dict[ServiceKey, str] = {}
        self._problems: dict[Any, str] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_soon = False
        # counters shown by describe()
        self.accepted = 0
        self.refused = 0
        self.connect_failures = 0
        self.connect_timeouts = 0
        self.resets = 0
        self.expired = 0
        self.nodest = 0
        self.udp_dropped = 0
        self.udp_flows_opened = 0
        #: ICMP port unreachable for UDP without a real server (forwarding.icmp)
        self.icmp: Any = None

    # -- life cycle ------------------------------------------------------------------
    def start(self) -> None:
        """Serve the current table and follow its changes (call inside the loop)."""
        self.loop = asyncio.get_running_loop()
        _raise_nofile()
        _tune_gc()
        if self.workers > 1:
            from .workers import WorkerPool

            self.pool = WorkerPool(
                self.director,
                self.now,
                self.workers,
                {
                    "proxy_protocol": [[h, p, v] for (h, p), v in self.proxy_protocol.items()],
                    "transparent": self.transparent,
                    "connect_timeout": self.connect_timeout,
                },
            )
            self.pool.start(self.loop)
        self.director.ipvs.listeners.append(self._on_change)
        for svc in list(self.director.ipvs.services.values()):
            self._on_change("add", svc)
        self._sweeper = self.loop.call_later(SWEEP, self._sweep)

    async def close(self) -> None:
        """Stop serving: listeners closed, relays reset, VIPs removed."""
        with contextlib.suppress(ValueError):
            self.director.ipvs.listeners.remove(self._on_change)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for sf in list(self.served.values()):
            sf.close()
        self.served.clear()
        for s in list(self.sessions):
            s.reset()
        if self.pool is not None:
            await self.pool.close()
        if self.icmp is not None:
            self.icmp.close()
        self.vips.close()
        await asyncio.sleep(0)

    def describe(self) -> str:
        if self.pool is not None:
            return f"nat: {len(self.served)} services served by " + self.pool.describe()
        tcp = sum(1 for sf in self.served.values() if not sf.udp)
        udp = len(self.served) - tcp
        flows = sum(len(sf.front.flows) for sf in self.served.values() if sf.front is not None)
        return (
            f"nat: {tcp} TCP and {udp} UDP services served, {len(self.sessions)} TCP relays, "
            f"{flows} UDP flows; accepted {self.accepted}, refused {self.refused}, "
            f"connect failures {self.connect_failures}, connect timeouts {self.connect_timeouts}, "
            f"resets {self.resets}, expired {self.expired}, no-dest {self.nodest}, "
            f"UDP flows {self.udp_flows_opened}, UDP dropped {self.udp_dropped}, "
            f"ICMP unreachable {self.icmp.sent if self.icmp is not None else 0}"
        )

    def warnings(self) -> list[str]:
        out = [f"{key.describe()}: {why}" for key, why in self._unserved.items()]
        out.extend(self._problems.values())
        return out

    def problem(self, text: str, key: Any = None) -> None:
        log.warning("%s", text)
        self._problems[key if key is not None else text] = text

    # -- table changes ---------------------------------------------------------------
    def _on_change(self, what: str, svc: Service) -> None:
        key = svc.key
        if what == "del":
            self._unserved.pop(key, None)
            self._problems.pop(key, None)
            self._unserve(key)
        else:
            why = unserved_reason(svc)
            if why == "":
                self._unserved.pop(key, None)
                self._unserve(key)
            elif why is not None:
                if self._unserved.get(key) != why:
                    log.warning("%s is not served: %s", key.describe(), why)
                self._unserved[key] = why
                self._unserve(key)
            else:
                self._unserved.pop(key, None)
                if key not in self.served:
                    self._serve(svc)
                sf = self.served.get(key)
                if sf is not None and self.reuse_port:
                    sf.steer(bool(svc.flags & SVC_F_PERSISTENT))
                if self.pool is not None and key in self.served:
                    self.pool.update(svc)
        if not self._sweep_soon and self.loop is not None:
            self._sweep_soon = True
            self.loop.call_soon(self._check_sessions)

    def _serve(self, svc: Service) -> None:
        sf = _ServedService(self, svc)
        warning = None
        if sf.host not in ("0.0.0.0", "::"):
            warning = self.vips.acquire(sf.af, sf.host)
            sf.vip = True
        if warning:
            self.problem(f"{sf.describe()}: {warning}", ("vip", svc.key))
        try:
            if self.pool is None:
                sf.open()
        except OSError as exc:
            self.vips.release(sf.af, sf.host)
            self.problem(f"cannot serve {sf.describe()}: {exc.strerror or exc}", svc.key)
            return
        self._problems.pop(svc.key, None)
        self.served[svc.key] = sf
        log.info("serving %s", sf.describe())

    def _unserve(self, key: ServiceKey) -> None:
        sf = self.served.pop(key, None)
        if sf is None:
            return
        sf.close()
        if self.pool is not None:
            self.pool.remove(key)
        self._problems.pop(("vip", key), None)
        if sf.vip:
            self.vips.release(sf.af, sf.host)
        log.info("stopped serving %s", sf.describe())

    def port_unreachable(self, sf: _ServedService, addr: Any, data: bytes) -> None:
        """``ip_vs_leave``: a UDP datagram no real server can take is
        answered with ICMP port unreachable from the VIP, rate-limited per
        client (:mod:`forwarding.icmp`)."""
        if self.icmp is None:
            from .icmp import PortUnreachable

            self.icmp = PortUnreachable()
        if not self.icmp.send(sf.af, addr, sf.host, sf.vport, data, self.now()) and self.icmp.error:
            self._problems["icmp"] = self.icmp.error

    def target(self, cp: Any) -> tuple[str, int]:
        """The real server of an entry as (host, port) text for connect()."""
        key = (cp.daf, cp.daddr, cp.dport)
        t = self._targets.get(key)
        if t is None:
            if len(self._targets) > 4096:
                self._targets.clear()
            t = self._targets[key] = (_fmt(cp.daf, cp.daddr), cp.dport)
        return t

    # -- periodic work -----------------------------------------------------------------
    def _check_sessions(self) -> None:
        self._sweep_soon = False
        self._walk(self.now(), flush=False)

    def _sweep(self) -> None:
        try:
            self._walk(self.now(), flush=True)
        finally:
            if self.loop is not None:
                self._sweeper = self.loop.call_later(SWEEP, self._sweep)

    def _walk(self, now: float, flush: bool) -> None:
        """Counters to the core, timers re-armed for traffic, connect
        timeouts, expired entries and unavailable real servers."""
        director = self.director
        if self.pool is not None:
            self.pool.sync_env()
        arm = director.conns.arm
        nodest_expire = director.ipvs.sysctl.expire_nodest_conn
        deadline = now - self.connect_timeout
        for s in list(self.sessions):
            cp = s.conn
            if s.state == _CONNECTING:
                if s.t0 <= deadline and s.task is not None:
                    s.task.cancel()
                continue
            if flush and s.flush() and cp.hashed:
                cp.expires = max(cp.expires, now + cp.timeout)
                arm(cp)
            if not cp.hashed:
                self.expired += 1
                s.reset()
                continue
            dest = cp.dest
            if dest is None or not dest.flags & DEST_F_AVAILABLE:
                if nodest_expire:
                    self.nodest += 1
                    director.expire_now(cp, now)
                    s.reset()
                else:
                    s.freeze(True)
            elif s.frozen:
                s.freeze(False)
        for sf in list(self.served.values()):
            if sf.front is not None:
                self._walk_udp(sf.front, now, flush)

    def _walk_udp(self, front: _UdpFront, now: float, flush: bool) -> None:
        director = self.director
        arm = director.conns.arm
        timeout = director.ipvs.timeouts.udp
        for addr, f in list(front.flows.items()):
            cp = f.conn
            if flush and f.flush(director) and cp.hashed:
                cp.expires = max(cp.expires, now + cp.timeout)
                arm(cp)
            if not cp.hashed:
                f.close()
                del front.flows[addr]
                continue
            dest = cp.dest
            f.ok = f.t is not None or f.task is not None
            if dest is None or not dest.flags & DEST_F_AVAILABLE:
                f.ok = False  # the next datagram asks the core (drop or reschedule)
        for key, f in list(front.ops.items()):
            if flush and f.flush(director):
                f.idle = 0
            elif flush:
                f.idle += 1
                if f.idle * SWEEP >= timeout:
                    f.close()
                    del front.ops[key]


def _tune_gc() -> None:
    """Every relayed connection allocates a few container objects and leaves a
    connection entry behind (TIME_WAIT, 2 minutes): with the default
    thresholds the cyclic collector runs every few connections and walks a
    table that only grows.  Collect young objects less often, and move what
    exists at start (modules, the table) out of the collector's sight."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 20, 50)


def _raise_nofile() -> None:
    """Use as many descriptors as allowed: every relay costs two."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


__all__ = ["NatPlane", "TcpSession", "unserved_reason"]
