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

TCP
    A client connection is accepted by the local stack, then shown to the core
    as a SYN (``process_in(flow, now, SYN)``).  No real server (REJECT), DROP
    or no service: the client gets a reset at once (SO_LINGER 0).  FORWARD:
    lvsd connects to the entry's real server (``connect_timeout``, 5 s); a
    refusal or a timeout resets the client and is counted.  The entry's TCP
    state then follows the two real connections through synthetic segments:

    * connected: SYN+ACK out, ACK in (SYN_RECV -> ESTABLISHED);
    * client EOF: FIN in; real server EOF: FIN out; so a connection closed
      from both sides ends in TIME_WAIT as in the kernel (CLOSE_WAIT /
      FIN_WAIT in between, which the kernel counts as inactive).  The ACKs
      that acknowledge the FINs change no state in any table and are not
      shown to the core;
    * a reset from either side: RST to the core (CLOSE) and a reset to the
      other side.

    So ``lvsadm -L -n`` shows ActiveConn/InActConn as the kernel would for the
    same traffic and lc/wlc/sed/nq balance on live counts.  Data is relayed
    both ways with back-pressure (a side whose send buffer passes the high
    water mark pauses reading on the other side) and half-close (write_eof).

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
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from lvs.constants import (
    AF_INET6,
    CONN_F_FWD_MASK,
    CONN_F_MASQ,
    CONN_F_ONE_PACKET,
    DEST_F_AVAILABLE,
    IPPROTO_TCP,
    IPPROTO_UDP,
    SVC_F_PERSISTENT,
)
from lvs.core import FORWARD, REJECT, Director
from lvs.model import Flow, Service, ServiceKey
from lvs.proto_tcp import ACK, DIR_INPUT, DIR_OUTPUT, FIN, RST, SYN

from . import proxyproto
from .connector import Connect
from .vip import VipManager

log = logging.getLogger("lvsd.nat")

IP_FREEBIND = 15
IPV6_FREEBIND = 78
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
_LINGER_RST = struct.pack("ii", 1, 0)

#: seconds between two sweeps (counters to the core, timers, expiry, dests)
SWEEP = 0.5
#: listen() backlog of a virtual service
BACKLOG = 4096
#: write buffer high water mark of each relayed side
HIGH_WATER = 256 * 1024

_CONNECTING, _OPEN, _DONE = 0, 1, 2

#: size of the read buffer
READ_BUF = 256 * 1024
#: the one read buffer every bulk TCP relay reads into (the loop runs one callback
#: at a time): a read lands here, is written to the other side at once, and
#: if the kernel did not take it all, the transport keeps a reference to it and
#: a fresh buffer takes its place.  No bytes object is made per read.
_mv = memoryview(bytearray(READ_BUF))


def _always() -> int:
    return 1


#: a read this large means bulk: that side switches to reading into the
#: shared buffer (plain reads are cheaper for small messages, buffered reads
#: save a copy of every byte)
BULK_READ = 64 * 1024


class _BulkIn(asyncio.BufferedProtocol):
    """The client side of a relay once it carries bulk data."""

    __slots__ = ("s",)

    def __init__(self, s: TcpSession) -> None:
        self.s = s

    def get_buffer(self, sizehint: int) -> memoryview:
        return _mv

    def buffer_updated(self, nbytes: int) -> None:
        global _mv
        s = self.s
        s.sw(_mv[:nbytes])
        if s.swq():
            _mv = memoryview(bytearray(READ_BUF))
        s.nin += nbytes
        s.pin += 1

    def eof_received(self) -> bool:
        return self.s.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.s.connection_lost(exc)

    def pause_writing(self) -> None:
        self.s.pause_writing()

    def resume_writing(self) -> None:
        self.s.resume_writing()


class _BulkOut(asyncio.BufferedProtocol):
    """The real server's side of a relay once it carries bulk data."""

    __slots__ = ("u",)

    def __init__(self, u: _Upstream) -> None:
        self.u = u

    def get_buffer(self, sizehint: int) -> memoryview:
        return _mv

    def buffer_updated(self, nbytes: int) -> None:
        global _mv
        u = self.u
        u.cw(_mv[:nbytes])
        if u.cwq():
            _mv = memoryview(bytearray(READ_BUF))
        u.nout += nbytes
        u.pout += 1

    def eof_received(self) -> bool:
        return self.u.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.u.connection_lost(exc)

    def pause_writing(self) -> None:
        self.u.pause_writing()

    def resume_writing(self) -> None:
        self.u.resume_writing()


_ipcache: dict[str, int] = {}


def _ipint(af: int, host: str) -> int:
    """An address text as the core's integer (cached: clients repeat)."""
    v = _ipcache.get(host)
    if v is None:
        if len(_ipcache) > 65536:
            _ipcache.clear()
        text = host.split("%", 1)[0]
        v = _ipcache[host] = int.from_bytes(socket.inet_pton(af, text), "big")
    return v


def _rst(transport: asyncio.BaseTransport | None) -> None:
    """Close with a reset (SO_LINGER 0) at once."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.abort()  # type: ignore[attr-defined]


def _pause(transport: Any) -> None:
    if transport is not None and not transport.is_closing():
        transport.pause_reading()


def _resume(transport: Any) -> None:
    if transport is not None and not transport.is_closing():
        transport.resume_reading()


# ----------------------------------------------------------------------------
# TCP
# ----------------------------------------------------------------------------
class _Upstream(asyncio.Protocol):
    """The real server's side of one relayed TCP connection."""

    __slots__ = ("cw", "cwq", "nout", "pout", "s")

    def __init__(self, session: TcpSession) -> None:
        self.s = session
        ct: Any = session.ct
        self.cw: Callable[[Any], None] = ct.write
        self.cwq: Callable[[], int] = ct.get_write_buffer_size
        self.nout = 0
        self.pout = 0

    def factory(self) -> _Upstream:
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.s.st = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.cw(data)
        n = len(data)
        self.nout += n
        self.pout += 1
        if n >= BULK_READ:
            self.s.st.set_protocol(_BulkOut(self))  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.s.server_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.s.server_lost(exc)

    def pause_writing(self) -> None:
        _pause(self.s.ct)

    def resume_writing(self) -> None:
        if not self.s.frozen:
            _resume(self.s.ct)


class TcpSession(asyncio.Protocol):
    """One client connection to a virtual service and its relay."""

    __slots__ = (
        "c_eof",
        "conn",
        "ct",
        "early",
        "early_eof",
        "early_paused",
        "flow",
        "frozen",
        "nin",
        "pin",
        "s_eof",
        "sf",
        "st",
        "state",
        "sw",
        "swq",
        "t0",
        "task",
        "up",
    )

    def __init__(self, sf: _ServedService) -> None:
        self.sf = sf
        self.ct: asyncio.Transport | None = None
        self.st: asyncio.Transport | None = None
        self.up: _Upstream | None = None
        self.conn: Any = None
        self.flow: Flow | None = None
        #: early client data (before the real server answered) waits here
        self.early: list[bytes] = []
        self.early_eof = False
        self.early_paused = False
        self.sw: Callable[[Any], None] = self.early_write
        self.swq: Callable[[], int] = _always
        self.nin = 0
        self.pin = 0
        self.c_eof = False
        self.s_eof = False
        self.frozen = False
        self.state = _CONNECTING
        self.t0 = 0.0
        self.task: Connect | None = None

    # -- client side events ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # no pause_reading() while the real server is being connected: what
        # the client sends early is kept (two epoll changes saved per
        # connection); past HIGH_WATER early bytes reading pauses
        self.ct = transport  # type: ignore[assignment]
        self.sf.accept(self, transport)

    def data_received(self, data: bytes) -> None:
        self.sw(data)
        n = len(data)
        self.nin += n
        self.pin += 1
        if n >= BULK_READ and self.state == _OPEN:
            self.ct.set_protocol(_BulkIn(self))  # type: ignore[union-attr]

    def early_write(self, data: bytes) -> None:
        """Client data before the real server answered: kept, and reading
        pauses once HIGH_WATER bytes wait."""
        self.early.append(data)
        if self.nin + len(data) >= HIGH_WATER and not self.early_paused:
            self.early_paused = True
            self.ct.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.client_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_lost(exc)

    def pause_writing(self) -> None:
        _pause(self.st)

    def resume_writing(self) -> None:
        if not self.frozen:
            _resume(self.st)

    # -- relay state -------------------------------------------------------------
    def seg_in(self, flags: int, now: float) -> None:
        """A synthetic client segment for the entry we already hold: what
        ``process_in`` does for a known entry (the look-up is skipped): a
        packet of an entry whose real server is unavailable or which has
        expired is dropped; otherwise the state moves, the timer is re-armed
        and the packet counted (with the batch)."""
        cp = self.conn
        dest = cp.dest
        if dest is None or not dest.flags & DEST_F_AVAILABLE or not cp.hashed:
            return
        director = self.sf.plane.director
        director.set_state(cp, DIR_INPUT, flags, now)
        cp.in_pkts += 1
        cp.expires = now + cp.timeout
        director.conns.arm(cp)
        self.pin += 1

    def seg_out(self, flags: int, now: float) -> None:
        """A synthetic real-server segment: ``process_out`` for our entry."""
        cp = self.conn
        dest = cp.dest
        if dest is None or not dest.flags & DEST_F_AVAILABLE or not cp.hashed:
            return
        director = self.sf.plane.director
        director.set_state(cp, DIR_OUTPUT, flags, now)
        cp.expires = now + cp.timeout
        director.conns.arm(cp)
        self.up.pout += 1  # type: ignore[union-attr]

    def connected(self, result: Any, exc: BaseException | None) -> None:
        """The connection to the real server is up, or failed (the
        :class:`~forwarding.connector.Connect` outcome)."""
        plane = self.sf.plane
        self.task = None
        if self.state == _DONE:
            if exc is None:
                _rst(result[0])
            return
        if exc is not None:
            if isinstance(exc, asyncio.CancelledError):
                plane.connect_timeouts += 1
            else:
                plane.connect_failures += 1
                if isinstance(exc, ConnectionRefusedError):
                    self.seg_out(RST, plane.now())
            _rst(self.ct)
            self.detach()
            return
        st = result[0]
        self.st = st
        self.sw = st.write
        self.swq = st.get_write_buffer_size
        self.state = _OPEN
        now = plane.now()
        if plane.director.ipvs.sysctl.secure_tcp:
            self.seg_out(SYN | ACK, now)
        else:
            # SYN+ACK out moves no state in the normal tables (SYN_RECV stays)
            self.up.pout += 1  # type: ignore[union-attr]
        self.seg_in(ACK, now)
        hdr = self.sf.proxy_header(self)
        if hdr:
            st.write(hdr)
        for data in self.early:
            st.write(data)
        self.early = []
        if self.early_eof:
            self.client_eof()
            if self.state != _OPEN:
                return
        if self.early_paused and not self.frozen:
            self.early_paused = False
            self.ct.resume_reading()  # type: ignore[union-attr]

    def client_eof(self) -> None:
        if self.state == _CONNECTING:
            self.early_eof = True
            return
        if self.state != _OPEN or self.c_eof:
            return
        self.c_eof = True
        plane = self.sf.plane
        now = plane.now()
        self.seg_in(FIN | ACK, now)
        if self.s_eof:
            self.finish()  # close() sends the FIN: no separate shutdown
            return
        st = self.st
        if st is not None and not st.is_closing():
            st.write_eof()

    def server_eof(self) -> None:
        if self.state != _OPEN or self.s_eof:
            return
        self.s_eof = True
        plane = self.sf.plane
        now = plane.now()
        self.seg_out(FIN | ACK, now)
        if self.c_eof:
            self.finish()
            return
        ct = self.ct
        if ct is not None and not ct.is_closing():
            ct.write_eof()

    def client_lost(self, exc: Exception | None) -> None:
        if self.state == _DONE:
            return
        plane = self.sf.plane
        if self.state == _CONNECTING:
            task = self.task
            self.detach()
            if task is not None:
                task.cancel()
            return
        if exc is not None or not (self.c_eof and self.s_eof):
            # a reset (or an abort) from the client side
            self.seg_in(RST, plane.now())
            plane.resets += 1
            self.detach()
            _rst(self.st)
        self.detach()

    def server_lost(self, exc: Exception | None) -> None:
        if self.state != _OPEN:
            return
        plane = self.sf.plane
        if exc is not None or not (self.c_eof and self.s_eof):
            self.seg_out(RST, plane.now())
            plane.resets += 1
            self.detach()
            _rst(self.ct)
        self.detach()

    def finish(self) -> None:
        """Both sides sent FIN: close both (after their buffers drain)."""
        if self.st is not None:
            self.st.close()
        if self.ct is not None:
            self.ct.close()
        self.detach()

    def reset(self) -> None:
        """Reset both sides (entry expired, or its real server is gone)."""
        task = self.task
        _rst(self.ct)
        _rst(self.st)
        self.detach()
        if task is not None:
            task.cancel()

    def freeze(self, frozen: bool) -> None:
        """Stop (or restart) relaying: packets of an entry whose real server
        is unavailable are dropped by the kernel."""
        if frozen == self.frozen:
            return
        self.frozen = frozen
        if self.state != _OPEN:
            return
        if frozen:
            _pause(self.ct)
            _pause(self.st)
        else:
            _resume(self.ct)
            _resume(self.st)

    def flush(self) -> bool:
        """Hand the batched counters to the core; True if there was traffic."""
        up = self.up
        nout = pout = 0
        if up is not None:
            nout, pout = up.nout, up.pout
            up.nout = up.pout = 0
        if not (self.pin or pout):
            return False
        self.sf.plane.director.add_bytes(self.conn, self.nin, nout, self.pin, pout)
        self.nin = self.pin = 0
        return True

    def detach(self) -> None:
        if self.state == _DONE:
            return
        self.state = _DONE
        plane = self.sf.plane
        if self.conn is not None:
            self.flush()
            if self.conn.user_data is self:
                self.conn.user_data = None
        plane.sessions.discard(self)


# ----------------------------------------------------------------------------
# UDP
# ----------------------------------------------------------------------------
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
        v = plane.director.process_in(flow, plane.now(), 0, len(data))
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
        else:
            cp.user_data = f
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
            if f.conn is not None and f.conn.user_data is f:
                f.conn.user_data = None
        self.flows.clear()
        self.ops.clear()
        if self.t is not None:
            self.t.close()


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
        cp.user_data = s
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


async def _connect_transparent(
    loop: asyncio.AbstractEventLoop, up: _Upstream, af: int, client: str, host: str, port: int, daf: int
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    """Connect from the client's own address (IP_TRANSPARENT)."""
    sock = socket.socket(daf, socket.SOCK_STREAM)
    try:
        if daf == AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        else:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        if af == daf:
            sock.bind((client, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await loop.create_connection(up.factory, sock=sock)


def _fmt(af: int, value: int) -> str:
    return socket.inet_ntop(af, value.to_bytes(16 if af == AF_INET6 else 4, "big"))


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
                if cp.user_data is f:
                    cp.user_data = None
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
