"""The UDP relay of the NAT data plane (:mod:`forwarding.nat`): the VIP
socket of a UDP service (``UdpService``) and one ``UdpFlow`` per client flow
with its connected upstream socket.

UDP
    One socket per virtual service; every new client (address, port) is shown
    to the core (which decides new vs existing entry, persistence and
    one-packet scheduling, ``-o``); each client flow gets its own connected
    upstream socket; replies are sent back from the VIP socket.  Known flows
    take a fast path (a dict look-up and a send); a flow lives as long as its
    entry (UDP timeout, ``--set``).  A datagram for which no real server is
    available (none, all of weight 0 or overloaded) is dropped and answered
    with ICMP port unreachable from the VIP, rate-limited per client, as
    ``ip_vs_leave`` does (:mod:`forwarding.icmp`); a connected client socket
    then gets ECONNREFUSED.  With ``-o`` every datagram is scheduled and its
    entry is gone right after it (never in ``-L -c``, ActiveConn/InActConn
    back to 0); the upstream socket per (client, real server) is kept for
    the UDP timeout to carry the replies.  The replies are relayed from the
    VIP but not counted: the kernel never hashes a one-packet entry, so its
    ip_vs_out finds none for them and lets them pass uncounted (OutPkts and
    OutBytes of a -o service stay 0; its NAT does not even rewrite them).
    A new flow's datagram is handed to the core with its payload: for a
    persistent service with ``--pe sip`` the core picks the template of the
    datagram's Call-ID and drops a datagram without one (:mod:`lvs.pe_sip`);
    later datagrams of a known flow keep its real server, as ``ip_vs_in``
    finds the entry before any scheduling (with ``-o`` every datagram is
    scheduled, so each one follows its own Call-ID).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
from collections.abc import Callable
from typing import Any

from lvs.constants import CONN_F_ONE_PACKET, IPPROTO_UDP
from lvs.core import FORWARD, REJECT, Director
from lvs.model import Flow

from . import proxyproto
from .nat_common import RelayContext, ServedAddress, ip_int

SO_MEMINFO = 55
SK_MEMINFO_DROPS = 8


class UdpFlow(asyncio.DatagramProtocol):
    """One client flow of a UDP service and its connected upstream socket."""

    __slots__ = (
        "addr",
        "conn",
        "counted",
        "dest",
        "front",
        "idle",
        "in_bytes",
        "in_packets",
        "last",
        "ok",
        "out_bytes",
        "out_packets",
        "pending",
        "replied",
        "reply",
        "sendto",
        "task",
        "transport",
    )

    def __init__(self, front: UdpService, addr: Any, conn: Any) -> None:
        self.front = front
        self.addr = addr
        self.conn = conn
        self.dest = conn.dest
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []
        self.sendto: Callable[[bytes], None] = self.pending.append
        self.reply = front.transport.sendto  # type: ignore[union-attr]
        self.ok = True
        self.replied = False
        self.in_bytes = self.out_bytes = self.in_packets = self.out_packets = 0
        self.idle = 0
        self.task: asyncio.Future[Any] | None = None
        #: when it last carried traffic (the sweep notes it): the least
        #: recently used idle flows give their socket back under pressure
        self.last = front.ctx.now()
        #: its socket counts in the descriptor budget
        self.counted = True
        front.ctx.udp_sockets += 1

    def factory(self) -> UdpFlow:
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        send = transport.sendto  # type: ignore[attr-defined]
        hdr = self.front.proxy_header(self)
        if hdr:
            self.sendto = lambda d, _s=send, _h=hdr: _s(_h + d)
        else:
            self.sendto = send
        for d in self.pending:
            self.sendto(d)
        self.pending = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.reply(data, self.addr)
        if self.replied:
            self.out_bytes += len(data)
            self.out_packets += 1
        else:
            self.replied = True
            self.front.first_reply(self, len(data))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors from the real server: the kernel would relay them

    def close(self) -> None:
        self.ok = False
        if self.counted:
            self.counted = False
            self.front.ctx.udp_sockets -= 1
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def flush(self, director: Director, now: float | None = None) -> bool:
        """Hand the batched counters to the core (with ``now``: the client
        datagrams count toward the entry's sync threshold too)."""
        if not (self.in_packets or self.out_packets):
            return False
        conn = self.conn
        if conn.flags & CONN_F_ONE_PACKET:
            # replies to one-packet datagrams: the kernel never hashes their
            # entries, so ip_vs_out finds none and lets the replies pass
            # uncounted (OutPkts/OutBytes stay 0); the proxy relays them
            self.in_bytes = self.out_bytes = self.in_packets = self.out_packets = 0
            return True
        if conn.dest is None and self.dest is not None:
            director.add_bytes_unbound(
                self.dest, self.in_bytes, self.out_bytes, self.in_packets, self.out_packets
            )
        else:
            director.add_bytes(conn, self.in_bytes, self.out_bytes, self.in_packets, self.out_packets, now)
        self.in_bytes = self.out_bytes = self.in_packets = self.out_packets = 0
        return True


class UdpService(asyncio.DatagramProtocol):
    """The VIP socket of one UDP service."""

    __slots__ = ("_drops", "ctx", "flows", "ops", "service", "transport")

    def __init__(self, ctx: RelayContext, service: ServedAddress) -> None:
        self.ctx = ctx
        self.service = service
        self.transport: asyncio.DatagramTransport | None = None
        #: client address -> flow
        self.flows: dict[Any, UdpFlow] = {}
        #: (client address, real server) -> flow, for one-packet scheduling
        self.ops: dict[Any, UdpFlow] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ctx.udp_services.append(self)
        self._drops = 0

    def rcvbuf_drops(self) -> int:
        """Datagrams the kernel dropped since the last call because the VIP
        socket's receive buffer was full (SO_MEMINFO's drop count)."""
        t = self.transport
        sock = t.get_extra_info("socket") if t is not None else None
        if sock is None:
            return 0
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (SK_MEMINFO_DROPS + 1))
        except OSError:
            return 0
        total = struct.unpack(f"{SK_MEMINFO_DROPS + 1}I", raw)[SK_MEMINFO_DROPS]
        new, self._drops = total - self._drops, total
        return max(0, new)

    def forget(self, f: UdpFlow) -> None:
        """Close an idle flow's socket to give the descriptor back; its
        entry stays in the table, a later datagram opens a new socket to the
        same real server."""
        if self.flows.get(f.addr) is f:
            del self.flows[f.addr]
        else:
            for key, g in list(self.ops.items()):
                if g is f:
                    del self.ops[key]
                    break
        f.close()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        f = self.flows.get(addr)
        if f is not None and f.ok:
            f.sendto(data)
            f.in_bytes += len(data)
            f.in_packets += 1
            return
        self.slow(data, addr, f)

    def error_received(self, exc: Exception) -> None:
        pass

    def slow(self, data: bytes, addr: Any, f: UdpFlow | None) -> None:
        """A datagram of a new flow (or one whose entry must be looked at)."""
        service = self.service
        ctx = self.ctx
        flow = Flow(
            service.af, IPPROTO_UDP, ip_int(service.af, addr[0]), addr[1], service.vaddr, service.vport
        )
        # the datagram goes to the core: a persistent --pe sip service keys
        # its templates by the Call-ID in it (lvs.pe_sip; the kernel's
        # dataoff is taken for an IP header without options)
        v = ctx.director.process_in(flow, ctx.now(), 0, len(data), data)
        if v.action != FORWARD or v.conn is None:
            ctx.udp_dropped += 1
            if v.action == REJECT:
                ctx.port_unreachable(service, addr, data)
            return
        cp = v.conn
        if cp.flags & CONN_F_ONE_PACKET:
            key = (addr, cp.daf, cp.daddr, cp.dport)
            g = self.ops.get(key)
            if g is None or not g.ok:
                if not ctx.udp_room():
                    self._no_fd(addr)
                    return
                g = self.ops[key] = self.open_flow(addr, cp)
            g.conn = cp
            g.idle = 0
            g.sendto(data)
            return
        if f is not None and f.conn is cp and (f.transport is not None or f.task is not None):
            f.ok = True
            f.sendto(data)
            return
        if f is not None:
            f.close()
            del self.flows[addr]
        if not ctx.udp_room():
            self._no_fd(addr)
            return
        f = self.flows[addr] = self.open_flow(addr, cp)
        f.sendto(data)

    def _no_fd(self, addr: Any) -> None:
        ctx = self.ctx
        ctx.udp_fd_drops += 1
        ctx.note("udp-fd", f"{self.service.describe()}: datagram from {addr[0]}:{addr[1]} dropped: "
                 f"no descriptor for a new flow socket ({ctx.udp_sockets} UDP flow sockets, "
                 f"{len(ctx.sessions)} TCP relays, limit {ctx.budget.limit}, none idle for 1 s)")  # fmt: skip

    def open_flow(self, addr: Any, cp: Any) -> UdpFlow:
        f = UdpFlow(self, addr, cp)
        if cp.dest is None and cp.svc is not None:  # one-packet: already unbound
            f.dest = cp.svc.find_dest(cp.daf, cp.daddr, cp.dport)
        host, port = self.ctx.target(cp)
        loop = asyncio.get_running_loop()
        f.task = asyncio.ensure_future(
            loop.create_datagram_endpoint(f.factory, remote_addr=(host, port), family=cp.daf)
        )
        f.task.add_done_callback(functools.partial(self._opened, f))
        self.ctx.udp_flows_opened += 1
        return f

    def _opened(self, f: UdpFlow, fut: asyncio.Future[Any]) -> None:
        f.task = None
        if fut.cancelled():
            return
        if fut.exception() is not None:
            f.ok = False
            self.ctx.connect_failures += 1
            self.ctx.note("udp-connect", f"{self.service.describe()}: cannot open a UDP socket to the "
                          f"real server {self.ctx.target(f.conn)}: {fut.exception()}")  # fmt: skip
            f.close()
            if self.flows.get(f.addr) is f:
                del self.flows[f.addr]
            return
        if not f.ok:  # closed meanwhile
            fut.result()[0].close()

    def proxy_header(self, f: UdpFlow) -> bytes:
        """The PROXY protocol v2 header each datagram of ``f`` carries to its
        real server (empty: none wanted)."""
        version = self.ctx.proxy_version(f.conn)
        if not version:
            return b""
        service = self.service
        return proxyproto.header(
            version, service.af, socket.SOCK_DGRAM, f.addr[0], f.addr[1], service.host, service.vport
        )

    def first_reply(self, f: UdpFlow, length: int) -> None:
        """The core sees the first reply of a flow (which assures a
        persistence template); later ones are counted in batches."""
        cp = f.conn
        if cp.dest is not None:
            ctx = self.ctx
            ctx.director.process_out(cp, ctx.now(), 0, length)
        else:
            f.out_bytes += length
            f.out_packets += 1

    def close(self) -> None:
        for f in list(self.flows.values()) + list(self.ops.values()):
            f.close()
        self.flows.clear()
        self.ops.clear()
        if self in self.ctx.udp_services:
            self.ctx.udp_services.remove(self)
        if self.transport is not None:
            self.transport.close()
