"""The UDP relay of the NAT data plane (:mod:`forwarding.nat`): the VIP
socket of a UDP service (``_UdpFront``) and one ``_UdpFlow`` per client flow
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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lvs.constants import CONN_F_ONE_PACKET, IPPROTO_UDP
from lvs.core import FORWARD, REJECT, Director
from lvs.model import Flow

from .nat_common import _ipint, log

if TYPE_CHECKING:
    from .nat import _ServedService


class _UdpFlow(asyncio.DatagramProtocol):
    """One client flow of a UDP service and its connected upstream socket."""

    __slots__ = (
        "addr",
        "conn",
        "dest",
        "front",
        "fsend",
        "idle",
        "nin",
        "nout",
        "ok",
        "pending",
        "pin",
        "pout",
        "replied",
        "sendto",
        "t",
        "task",
    )

    def __init__(self, front: _UdpFront, addr: Any, conn: Any) -> None:
        self.front = front
        self.addr = addr
        self.conn = conn
        self.dest = conn.dest
        self.t: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []
        self.sendto: Callable[[bytes], None] = self.pending.append
        self.fsend = front.t.sendto  # type: ignore[union-attr]
        self.ok = True
        self.replied = False
        self.nin = self.nout = self.pin = self.pout = 0
        self.idle = 0
        self.task: asyncio.Future[Any] | None = None

    def factory(self) -> _UdpFlow:
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]
        send = transport.sendto  # type: ignore[attr-defined]
        hdr = self.front.sf.proxy_header_udp(self)
        if hdr:
            self.sendto = lambda d, _s=send, _h=hdr: _s(_h + d)
        else:
            self.sendto = send
        for d in self.pending:
            self.sendto(d)
        self.pending = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.fsend(data, self.addr)
        if self.replied:
            self.nout += len(data)
            self.pout += 1
        else:
            self.replied = True
            self.front.first_reply(self, len(data))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors from the real server: the kernel would relay them

    def close(self) -> None:
        self.ok = False
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.t is not None:
            self.t.close()
            self.t = None

    def flush(self, director: Director) -> bool:
        if not (self.pin or self.pout):
            return False
        conn = self.conn
        if conn.flags & CONN_F_ONE_PACKET:
            # replies to one-packet datagrams: the kernel never hashes their
            # entries, so ip_vs_out finds none and lets the replies pass
            # uncounted (OutPkts/OutBytes stay 0); the proxy relays them
            self.nin = self.nout = self.pin = self.pout = 0
            return True
        if conn.dest is None and self.dest is not None:
            _count(director, self.dest, self.nin, self.nout, self.pin, self.pout)
        else:
            director.add_bytes(conn, self.nin, self.nout, self.pin, self.pout)
        self.nin = self.nout = self.pin = self.pout = 0
        return True


def _count(director: Director, dest: Any, inb: int, outb: int, inp: int, outp: int) -> None:
    """Counters of a flow whose entry is already unbound (it expired with
    traffic still in the batch)."""
    targets = [dest.stats, director.ipvs.stats]
    if dest.svc is not None:
        targets.append(dest.svc.stats)
    for st in targets:
        st.inbytes += inb
        st.outbytes += outb
        st.inpkts += inp
        st.outpkts += outp


class _UdpFront(asyncio.DatagramProtocol):
    """The VIP socket of one UDP service."""

    __slots__ = ("flows", "ops", "sf", "t")

    def __init__(self, sf: _ServedService) -> None:
        self.sf = sf
        self.t: asyncio.DatagramTransport | None = None
        #: client address -> flow
        self.flows: dict[Any, _UdpFlow] = {}
        #: (client address, real server) -> flow, for one-packet scheduling
        self.ops: dict[Any, _UdpFlow] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        f = self.flows.get(addr)
        if f is not None and f.ok:
            f.sendto(data)
            f.nin += len(data)
            f.pin += 1
            return
        self.slow(data, addr, f)

    def error_received(self, exc: Exception) -> None:
        pass

    def slow(self, data: bytes, addr: Any, f: _UdpFlow | None) -> None:
        """A datagram of a new flow (or one whose entry must be looked at)."""
        sf = self.sf
        plane = sf.plane
        flow = Flow(sf.af, IPPROTO_UDP, _ipint(sf.af, addr[0]), addr[1], sf.vaddr, sf.vport)
        # the datagram goes to the core: a persistent --pe sip service keys
        # its templates by the Call-ID in it (lvs.pe_sip; the kernel's
        # dataoff is taken for an IP header without options)
        v = plane.director.process_in(flow, plane.now(), 0, len(data), data)
        if v.action != FORWARD or v.conn is None:
            plane.udp_dropped += 1
            if v.action == REJECT:
                plane.port_unreachable(sf, addr, data)
            return
        cp = v.conn
        if cp.flags & CONN_F_ONE_PACKET:
            key = (addr, cp.daf, cp.daddr, cp.dport)
            g = self.ops.get(key)
            if g is None or not g.ok:
                g = self.ops[key] = self.open_flow(addr, cp)
            g.conn = cp
            g.idle = 0
            g.sendto(data)
            return
        if f is not None and f.conn is cp and (f.t is not None or f.task is not None):
            f.ok = True
            f.sendto(data)
            return
        if f is not None:
            f.close()
        f = self.flows[addr] = self.open_flow(addr, cp)
        f.sendto(data)

    def open_flow(self, addr: Any, cp: Any) -> _UdpFlow:
        f = _UdpFlow(self, addr, cp)
        if cp.dest is None and cp.svc is not None:  # one-packet: already unbound
            f.dest = cp.svc.find_dest(cp.daf, cp.daddr, cp.dport)
        host, port = self.sf.plane.target(cp)
        loop = asyncio.get_running_loop()
        f.task = asyncio.ensure_future(
            loop.create_datagram_endpoint(f.factory, remote_addr=(host, port), family=cp.daf)
        )
        f.task.add_done_callback(functools.partial(self._opened, f))
        self.sf.plane.udp_flows_opened += 1
        return f

    def _opened(self, f: _UdpFlow, fut: asyncio.Future[Any]) -> None:
        f.task = None
        if fut.cancelled():
            return
        if fut.exception() is not None:
            log.debug("UDP upstream for %s: %s", f.addr, fut.exception())
            f.ok = False
            self.sf.plane.connect_failures += 1
            if self.flows.get(f.addr) is f:
                del self.flows[f.addr]
            return
        if not f.ok:  # closed meanwhile
            fut.result()[0].close()

    def first_reply(self, f: _UdpFlow, length: int) -> None:
        """The core sees the first reply of a flow (which assures a
        persistence template); later ones are counted in batches."""
        cp = f.conn
        if cp.dest is not None:
            plane = self.sf.plane
            plane.director.process_out(cp, plane.now(), 0, length)
        else:
            f.nout += length
            f.pout += 1

    def close(self) -> None:
        for f in list(self.flows.values()) + list(self.ops.values()):
            f.close()
        self.flows.clear()
        self.ops.clear()
        if self.t is not None:
            self.t.close()
