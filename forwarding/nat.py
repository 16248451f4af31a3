"""The NAT data plane in one process: lvsd relays TCP and UDP for virtual
services whose real servers use masquerading (``-m``), asking the core for
every decision.

Which services are served, and their VIPs: :mod:`forwarding.nat_services`.
Each served service gets one listening socket, bound with IP_FREEBIND
(IPV6_FREEBIND) and SO_REUSEADDR, so a service may be created before its
address exists.  The relays: :mod:`forwarding.nat_tcp` (one session per
client connection) and :mod:`forwarding.nat_udp` (one VIP socket per service,
one upstream socket per client flow).  ``lvsd --workers N`` runs N of these
planes in worker processes instead (:mod:`forwarding.nat_pool`).

Entries, expiry, deleted real servers
    Traffic refreshes the entry's timer (every ``SWEEP`` seconds for busy
    flows, so an expiry time shown by ``-L -c`` may lag by that much).  When
    the core expires an entry (its timeout passed without traffic) the proxy
    resets both connections (for UDP: forgets the flow), which is what the
    kernel's behaviour amounts to for the endpoints.  A deleted real server:
    as in the kernel its connections stop passing traffic (both sides are
    paused; they resume if the server is added back before the entry
    expires) and are reset when the entry expires; with
    ``expire_nodest_conn`` they are expired and reset at once.

Counters: what a "packet" is here
    Bytes are counted exactly: payload bytes relayed (InBytes client -> real
    server, OutBytes back), not IP packet lengths as in the kernel; a PROXY
    protocol header is not counted.  A "packet" is one read (one recv() of
    payload on one side, one datagram for UDP) plus each synthetic control
    segment shown to the core, so packet counts are close to the kernel's for
    small exchanges and far below them for bulk.  Per read only an integer is
    bumped; the totals go to the core every ``SWEEP`` seconds and when a
    connection ends.

Client address
    Real servers see connections from the director, not from the client as
    with kernel NAT.  Per real server the PROXY protocol (v1 or v2; v2 also
    for UDP) tells them the client (:mod:`forwarding.proxyproto`).  With
    ``transparent=True`` the upstream socket is bound to the client's address
    (IP_TRANSPARENT, needs CAP_NET_ADMIN); the real server's replies must
    then be routed back through the director.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Callable
from typing import Any

from lvs.constants import AF_INET6, DEST_F_AVAILABLE, SVC_F_PERSISTENT
from lvs.core import Director
from lvs.model import Service

from .nat_common import RelayContext, ServedAddress, _nofile, log, raise_nofile, tune_gc
from .nat_services import NatServices
from .nat_tcp import CONNECTING, TcpSession
from .nat_udp import UdpService

IP_FREEBIND = 15
IPV6_FREEBIND = 78

#: seconds between two sweeps (counters to the core, timers, expiry, dests)
SWEEP = 0.5
#: listen() backlog of a virtual service
BACKLOG = 4096
#: listening sockets a predecessor lvsd handed over (lvsd/restart.py), by
#: (protocol, family, host, port): :meth:`Listener.open` takes its socket
#: from here instead of binding a new one, so no connection is refused
INHERITED: dict[tuple[int, int, str, int], socket.socket] = {}


class Listener(ServedAddress):
    """The listening socket of one served virtual service."""

    def __init__(self, address: ServedAddress, persistent: bool) -> None:
        super().__init__(address.key)
        self.vip = address.vip
        self.sock: socket.socket | None = None
        self.server: Any = None
        self.front: UdpService | None = None
        self.task: asyncio.Future[Any] | None = None
        self.closed = False
        self.persistent = persistent
        self.steered = False
        #: sockets sharing the address (``--workers``: SO_REUSEPORT), 0: alone
        self.reuse_port = 0

    def steer(self, persistent: bool) -> None:
        """With workers: a persistent service steers each client address to
        one worker (so its template is found again); others let the kernel
        spread connections by their 4-tuple."""
        self.persistent = persistent
        sock = self.sock
        if sock is None or self.reuse_port < 2 or persistent == self.steered:
            return
        from .reuseport import attach_client_steering, detach_steering

        try:
            if persistent:
                attach_client_steering(sock, self.af, self.reuse_port)
            else:
                detach_steering(sock)
            self.steered = persistent
        except OSError as exc:
            log.warning("client steering on %s: %s", self.describe(), exc)

    def open(self, ctx: RelayContext, reuse_port: int, on_error: Callable[[str], None]) -> None:
        """Bind and listen now (so traffic queues from this moment); the
        event loop takes the socket over as soon as it runs."""
        af = self.af
        self.reuse_port = reuse_port
        inherited = INHERITED.pop((self.key.protocol, af, self.host, self.vport), None)
        if inherited is not None:
            self.sock = sock = inherited
            self._serve_on(ctx, sock, on_error)
            return
        sock = socket.socket(af, socket.SOCK_DGRAM if self.udp else socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if af == AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            else:
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            if self.udp:
                _size_rcvbuf(sock, ctx.udp_rcvbuf)
            sock.bind((self.host, self.vport))
            if not self.udp:
                sock.listen(BACKLOG)
            self.sock = sock
            if reuse_port > 1:
                # after listen(): a TCP group formed earlier refuses the next bind
                self.steer(self.persistent)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self._serve_on(ctx, sock, on_error)

    def _serve_on(self, ctx: RelayContext, sock: socket.socket, on_error: Callable[[str], None]) -> None:
        loop = asyncio.get_running_loop()
        if self.udp:
            front = self.front = UdpService(ctx, self)
            coro = loop.create_datagram_endpoint(lambda: front, sock=sock)  # type: ignore[arg-type,return-value]
        else:
            coro = loop.create_server(functools.partial(TcpSession, ctx, self), sock=sock, backlog=BACKLOG)
        self.task = asyncio.ensure_future(coro)
        self.task.add_done_callback(functools.partial(self._opened, on_error))

    def _opened(self, on_error: Callable[[str], None], fut: asyncio.Future[Any]) -> None:
        self.task = None
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            on_error(f"cannot serve {self.describe()}: {exc}")
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


class NatPlane(NatServices[Listener]):
    """The NAT data plane of one process (lvsd alone, or one worker).

    ``proxy_protocol`` maps a real server endpoint ``(host, port)`` to the
    PROXY protocol version (1 or 2) it wants (see
    :func:`forwarding.proxyproto.parse_spec` for the ``RIP:PORT=v2`` text
    form); ``transparent`` connects to real servers from the client's
    address; ``reuse_port``: in a worker, the number of workers sharing each
    listening address.
    """

    def __init__(
        self,
        director: Director,
        now_fn: Callable[[], float],
        *,
        manage_vips: bool = True,
        proxy_protocol: dict[tuple[str, int], int] | None = None,
        transparent: bool = False,
        connect_timeout: float = 5.0,
        reuse_port: int = 0,
    ) -> None:
        super().__init__(director, now_fn, manage_vips=manage_vips)
        self.ctx = RelayContext(
            director,
            now_fn,
            proxy_protocol=proxy_protocol,
            transparent=transparent,
            connect_timeout=connect_timeout,
        )
        self.ctx.problems = self.problems
        self.reuse_port = reuse_port
        self.loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_soon = False
        self._sweeps = 0

    # -- life cycle ------------------------------------------------------------------
    def start(self) -> None:
        """Serve the current table and follow its changes (call inside the loop)."""
        self.loop = self.ctx.loop = asyncio.get_running_loop()
        raise_nofile()
        self.ctx.budget.limit = _nofile()
        self.ctx.measure_fds()
        tune_gc()
        self.follow()
        self._sweeper = self.loop.call_later(SWEEP, self._sweep)

    def listening_sockets(self) -> list[list[Any]]:
        """[protocol, family, host, port, fd] of every listening socket, for
        a successor lvsd to inherit (lvsd/restart.py)."""
        return [
            [sf.key.protocol, sf.af, sf.host, sf.vport, sf.sock.fileno()]
            for sf in self.served.values()
            if sf.sock is not None and sf.sock.fileno() >= 0
        ]

    def stop_accepting(self) -> None:
        """A successor serves now: stop taking connections and datagrams
        (the sockets live on in the successor; the VIPs stay); established
        TCP relays go on until they end."""
        if self._sweeper is None:
            return
        self.vips.added.clear()  # the successor owns them now
        self.unfollow()

    async def close(self) -> None:
        """Stop serving: listeners closed, relays reset, VIPs removed."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.unfollow()
        for s in list(self.ctx.sessions):
            s.reset()
        if self.ctx.icmp is not None:
            self.ctx.icmp.close()
        self.vips.close()
        await asyncio.sleep(0)

    def describe(self) -> str:
        ctx = self.ctx
        tcp = sum(1 for sf in self.served.values() if not sf.udp)
        udp = len(self.served) - tcp
        flows = sum(len(sf.front.flows) for sf in self.served.values() if sf.front is not None)
        return (
            f"nat: {tcp} TCP and {udp} UDP services served, {len(ctx.sessions)} TCP relays, "
            f"{flows} UDP flows; accepted {ctx.accepted}, refused {ctx.refused}, "
            f"connect failures {ctx.connect_failures}, connect timeouts {ctx.connect_timeouts}, "
            f"resets {ctx.resets}, expired {ctx.expired}, no-dest {ctx.nodest}, "
            f"UDP flows {ctx.udp_flows_opened}, UDP dropped {ctx.udp_dropped}, "
            f"ICMP unreachable {ctx.icmp.sent if ctx.icmp is not None else 0}; "
            f"limits: {ctx.udp_sockets} UDP flow sockets, {ctx.udp_reclaimed} idle ones reclaimed, "
            f"UDP dropped for want of a descriptor {ctx.udp_fd_drops}, UDP dropped by a full receive buffer "
            f"{ctx.udp_rcvbuf_drops}, TCP refused at the connection limit {ctx.limit_refused} "
            f"(descriptor limit {ctx.budget.limit}, {ctx.budget.reserve} reserved)"
        )

    # -- serving (NatServices) -----------------------------------------------------------
    def open_service(self, svc: Service, address: ServedAddress) -> Listener:
        listener = Listener(address, bool(svc.flags & SVC_F_PERSISTENT))
        listener.open(self.ctx, self.reuse_port, self.problem)
        return listener

    def service_changed(self, svc: Service, served: Listener) -> None:
        if self.reuse_port:
            served.steer(bool(svc.flags & SVC_F_PERSISTENT))

    def close_service(self, served: Listener) -> None:
        served.close()

    def table_changed(self) -> None:
        if not self._sweep_soon and self.loop is not None:
            self._sweep_soon = True
            self.loop.call_soon(self._check_sessions)

    # -- periodic work -----------------------------------------------------------------
    def _check_sessions(self) -> None:
        self._sweep_soon = False
        self._walk(self.now(), flush=False)

    def _sweep(self) -> None:
        try:
            self._walk(self.now(), flush=True)
            ctx = self.ctx
            self._sweeps += 1
            if self._sweeps % 4 == 0:
                ctx.measure_fds()
            for svc in ctx.udp_services:
                dropped = svc.rcvbuf_drops()
                if dropped:
                    ctx.udp_rcvbuf_drops += dropped
                    ctx.note("udp-rcvbuf", f"{svc.service.describe()}: {dropped} datagrams dropped by the "
                             f"kernel: the VIP socket's receive buffer ({ctx.udp_rcvbuf} bytes, "
                             "--udp-rcvbuf) was full")  # fmt: skip
        finally:
            if self.loop is not None:
                self._sweeper = self.loop.call_later(SWEEP, self._sweep)

    def _walk(self, now: float, flush: bool) -> None:
        """Counters to the core, timers refreshed for traffic, connect
        timeouts, expired entries and unavailable real servers."""
        director = self.director
        ctx = self.ctx
        refresh = director.refresh
        nodest_expire = director.ipvs.sysctl.expire_nodest_conn
        deadline = now - ctx.connect_timeout
        for s in list(ctx.sessions):
            cp = s.conn
            if s.state == CONNECTING:
                if s.accepted_at <= deadline and s.task is not None:
                    s.task.cancel()
                continue
            if flush and s.flush():
                refresh(cp, now)
            if not cp.hashed:
                ctx.expired += 1
                s.reset()
                continue
            dest = cp.dest
            if dest is None or not dest.flags & DEST_F_AVAILABLE:
                if nodest_expire:
                    ctx.nodest += 1
                    director.expire_now(cp, now)
                    s.reset()
                else:
                    s.freeze(True)
            elif s.frozen:
                s.freeze(False)
        for sf in list(self.served.values()):
            if sf.front is not None:
                self._walk_udp(sf.front, now, flush)

    def _walk_udp(self, front: UdpService, now: float, flush: bool) -> None:
        director = self.director
        refresh = director.refresh
        timeout = director.ipvs.timeouts.udp
        for addr, f in list(front.flows.items()):
            cp = f.conn
            if flush and f.flush(director, now):
                refresh(cp, now)
                f.last = now
            if not cp.hashed:
                f.close()
                del front.flows[addr]
                continue
            dest = cp.dest
            f.ok = f.transport is not None or f.task is not None
            if dest is None or not dest.flags & DEST_F_AVAILABLE:
                f.ok = False  # the next datagram asks the core (drop or reschedule)
        for key, f in list(front.ops.items()):
            if flush and f.flush(director):
                f.idle = 0
                f.last = now
            elif flush:
                f.idle += 1
                if f.idle * SWEEP >= timeout:
                    f.close()
                    del front.ops[key]


def _size_rcvbuf(sock: socket.socket, size: int) -> None:
    """A UDP VIP socket's receive buffer: SO_RCVBUFFORCE (root may exceed
    net.core.rmem_max), else SO_RCVBUF (capped by rmem_max)."""
    if size <= 0:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


SO_RCVBUFFORCE = 33

__all__ = ["SWEEP", "Listener", "NatPlane"]
