"""The TCP relay of the NAT data plane (:mod:`forwarding.nat`): one
:class:`TcpSession` per client connection, its real server's side
(``_Upstream``) and the buffered protocols both sides switch to for bulk data.

TCP
    A client connection is accepted by the local stack, then shown to the core
    as a SYN (``process_in(flow, now, SYN)``) by the session itself
    (:meth:`TcpSession.connection_made`).  No real server (REJECT), DROP
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
    A real server configured for the PROXY protocol gets its header first
    (:mod:`forwarding.proxyproto`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

from lvs.constants import AF_INET6, IPPROTO_TCP
from lvs.core import FORWARD
from lvs.model import Flow
from lvs.proto_tcp import ACK, DIR_INPUT, DIR_OUTPUT, FIN, RST, SYN

from . import proxyproto
from .connector import Connect
from .nat_common import RelayContext, ServedAddress, ip_int, ip_text

IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
_LINGER_RST = struct.pack("ii", 1, 0)

#: write buffer high water mark of each relayed side
HIGH_WATER = 256 * 1024

#: states of a relay
CONNECTING, OPEN, DONE = 0, 1, 2

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

    __slots__ = ("session",)

    def __init__(self, s: TcpSession) -> None:
        self.session = s

    def get_buffer(self, sizehint: int) -> memoryview:
        return _mv

    def buffer_updated(self, nbytes: int) -> None:
        global _mv
        s = self.session
        s.to_server(_mv[:nbytes])
        if s.server_backlog():
            _mv = memoryview(bytearray(READ_BUF))
        s.in_bytes += nbytes
        s.in_packets += 1

    def eof_received(self) -> bool:
        return self.session.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.connection_lost(exc)

    def pause_writing(self) -> None:
        self.session.pause_writing()

    def resume_writing(self) -> None:
        self.session.resume_writing()


class _BulkOut(asyncio.BufferedProtocol):
    """The real server's side of a relay once it carries bulk data."""

    __slots__ = ("upstream",)

    def __init__(self, u: _Upstream) -> None:
        self.upstream = u

    def get_buffer(self, sizehint: int) -> memoryview:
        return _mv

    def buffer_updated(self, nbytes: int) -> None:
        global _mv
        u = self.upstream
        u.to_client(_mv[:nbytes])
        if u.client_backlog():
            _mv = memoryview(bytearray(READ_BUF))
        u.out_bytes += nbytes
        u.out_packets += 1

    def eof_received(self) -> bool:
        return self.upstream.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.upstream.connection_lost(exc)

    def pause_writing(self) -> None:
        self.upstream.pause_writing()

    def resume_writing(self) -> None:
        self.upstream.resume_writing()


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

    __slots__ = ("client_backlog", "out_bytes", "out_packets", "session", "to_client")

    def __init__(self, session: TcpSession) -> None:
        self.session = session
        client: Any = session.client
        self.to_client: Callable[[Any], None] = client.write
        self.client_backlog: Callable[[], int] = client.get_write_buffer_size
        self.out_bytes = 0
        self.out_packets = 0

    def factory(self) -> _Upstream:
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session.server = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.to_client(data)
        n = len(data)
        self.out_bytes += n
        self.out_packets += 1
        if n >= BULK_READ:
            self.session.server.set_protocol(_BulkOut(self))  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.session.server_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.server_lost(exc)

    def pause_writing(self) -> None:
        _pause(self.session.client)

    def resume_writing(self) -> None:
        if not self.session.frozen:
            _resume(self.session.client)


class TcpSession(asyncio.Protocol):
    """One client connection to a virtual service and its relay."""

    __slots__ = (
        "accepted_at",
        "client",
        "client_fin",
        "conn",
        "ctx",
        "early",
        "early_eof",
        "early_paused",
        "flow",
        "frozen",
        "in_bytes",
        "in_packets",
        "server",
        "server_backlog",
        "server_fin",
        "service",
        "state",
        "task",
        "to_server",
        "up",
    )

    def __init__(self, ctx: RelayContext, service: ServedAddress) -> None:
        #: the plane's shared state, and the virtual service the client connected to
        self.ctx = ctx
        self.service = service
        #: the client's and the real server's connections
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        #: the protocol of the real server's side (its counters: out_bytes, out_packets)
        self.up: _Upstream | None = None
        #: the core's entry of this connection, and its key
        self.conn: Any = None
        self.flow: Flow | None = None
        #: early client data (before the real server answered) waits here
        self.early: list[bytes] = []
        self.early_eof = False
        self.early_paused = False
        #: write to the real server, and the bytes still queued there (bound
        #: methods of its transport once connected: one attribute read per read)
        self.to_server: Callable[[Any], None] = self.early_write
        self.server_backlog: Callable[[], int] = _always
        #: client -> real server traffic not yet handed to the core (flush)
        self.in_bytes = 0
        self.in_packets = 0
        #: each side sent its FIN (EOF seen)
        self.client_fin = False
        self.server_fin = False
        #: relaying paused: the entry's real server is unavailable
        self.frozen = False
        self.state = CONNECTING
        self.accepted_at = 0.0
        #: the connect to the real server while it runs
        self.task: Connect | None = None

    # -- client side events ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # no pause_reading() while the real server is being connected: what
        # the client sends early is kept (two epoll changes saved per
        # connection); past HIGH_WATER early bytes reading pauses
        self.client = transport  # type: ignore[assignment]
        self.accept(transport)

    def accept(self, transport: Any) -> None:
        """The client's SYN to the core; FORWARD: connect to the entry's real
        server, anything else: reset the client at once."""
        ctx = self.ctx
        ctx.accepted += 1
        peer = transport.get_extra_info("peername")
        if not ctx.tcp_allowed():
            # the descriptor budget (lvs/limits.py): refuse rather than run
            # the control socket out of descriptors
            ctx.limit_refused += 1
            ctx.note("tcp-limit", f"{self.service.describe()}: connection from {peer[0]}:{peer[1]} refused: "
                     f"{len(ctx.sessions)} TCP relays at the limit (descriptors {ctx.budget.limit}, "
                     f"max-conns {ctx.budget.max_conns or 'none'})")  # fmt: skip
            self.state = DONE
            _rst(transport)
            return
        service = self.service
        af = service.af
        vaddr = service.vaddr
        if not vaddr:
            vaddr = ip_int(af, transport.get_extra_info("sockname")[0])
        flow = Flow(af, IPPROTO_TCP, ip_int(af, peer[0]), peer[1], vaddr, service.vport)
        now = ctx.now()
        v = ctx.director.process_in(flow, now, SYN, 0)
        cp = v.conn
        if v.action != FORWARD or cp is None:
            ctx.refused += 1
            self.state = DONE
            _rst(transport)
            return
        self.flow = flow
        self.conn = cp
        self.accepted_at = now
        transport.set_write_buffer_limits(HIGH_WATER)
        up = self.up = _Upstream(self)
        host, port = ctx.target(cp)
        loop = ctx.loop
        if ctx.transparent:
            coro = _connect_transparent(loop, up, af, peer[0], host, port, cp.daf)
        else:
            coro = loop.create_connection(up.factory, host, port)
        ctx.sessions.add(self)
        self.task = Connect(coro, self.connected)

    def proxy_header(self) -> bytes:
        """The PROXY protocol header for the real server (empty: none wanted)."""
        ctx = self.ctx
        if not ctx.proxy_protocol:  # the common case, per connection: no call
            return b""
        version = ctx.proxy_version(self.conn)
        flow = self.flow
        if not version or flow is None:
            return b""
        af = flow.af
        return proxyproto.header(
            version,
            af,
            socket.SOCK_STREAM,
            ip_text(af, flow.caddr),
            flow.cport,
            ip_text(af, flow.vaddr),
            flow.vport,
        )

    def data_received(self, data: bytes) -> None:
        self.to_server(data)
        n = len(data)
        self.in_bytes += n
        self.in_packets += 1
        if n >= BULK_READ and self.state == OPEN:
            self.client.set_protocol(_BulkIn(self))  # type: ignore[union-attr]

    def early_write(self, data: bytes) -> None:
        """Client data before the real server answered: kept, and reading
        pauses once HIGH_WATER bytes wait."""
        self.early.append(data)
        if self.in_bytes + len(data) >= HIGH_WATER and not self.early_paused:
            self.early_paused = True
            self.client.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.client_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_lost(exc)

    def pause_writing(self) -> None:
        _pause(self.server)

    def resume_writing(self) -> None:
        if not self.frozen:
            _resume(self.server)

    # -- relay state -------------------------------------------------------------
    def seg_in(self, flags: int, now: float) -> None:
        """A synthetic client segment for the entry we already hold
        (:meth:`Director.held_segment`), counted with the batch."""
        if self.ctx.director.held_segment(self.conn, DIR_INPUT, flags, now):
            self.in_packets += 1

    def seg_out(self, flags: int, now: float) -> None:
        """A synthetic real-server segment: ``process_out`` for our entry."""
        if self.ctx.director.held_segment(self.conn, DIR_OUTPUT, flags, now):
            self.up.out_packets += 1  # type: ignore[union-attr]

    def connected(self, result: Any, exc: BaseException | None) -> None:
        """The connection to the real server is up, or failed (the
        :class:`~forwarding.connector.Connect` outcome)."""
        ctx = self.ctx
        self.task = None
        if self.state == DONE:
            if exc is None:
                _rst(result[0])
            return
        if exc is not None:
            if isinstance(exc, asyncio.CancelledError):
                ctx.connect_timeouts += 1
            else:
                ctx.connect_failures += 1
                cp = self.conn
                ctx.note("tcp-connect", f"real server {ip_text(cp.daf, cp.daddr)}:{cp.dport} of "
                         f"{self.service.describe()}: connect failed: {exc}")  # fmt: skip
                if isinstance(exc, ConnectionRefusedError):
                    self.seg_out(RST, ctx.now())
            _rst(self.client)
            self.detach()
            return
        st = result[0]
        self.server = st
        self.to_server = st.write
        self.server_backlog = st.get_write_buffer_size
        self.state = OPEN
        now = ctx.now()
        if ctx.director.ipvs.sysctl.secure_tcp:
            self.seg_out(SYN | ACK, now)
        else:
            # SYN+ACK out moves no state in the normal tables (SYN_RECV stays)
            self.up.out_packets += 1  # type: ignore[union-attr]
        self.seg_in(ACK, now)
        hdr = self.proxy_header()
        if hdr:
            st.write(hdr)
        for data in self.early:
            st.write(data)
        self.early = []
        if self.early_eof:
            self.client_eof()
            if self.state != OPEN:
                return
        if self.early_paused and not self.frozen:
            self.early_paused = False
            self.client.resume_reading()  # type: ignore[union-attr]

    def client_eof(self) -> None:
        if self.state == CONNECTING:
            self.early_eof = True
            return
        if self.state != OPEN or self.client_fin:
            return
        self.client_fin = True
        ctx = self.ctx
        now = ctx.now()
        self.seg_in(FIN | ACK, now)
        if self.server_fin:
            self.finish()  # close() sends the FIN: no separate shutdown
            return
        st = self.server
        if st is not None and not st.is_closing():
            st.write_eof()

    def server_eof(self) -> None:
        if self.state != OPEN or self.server_fin:
            return
        self.server_fin = True
        ctx = self.ctx
        now = ctx.now()
        self.seg_out(FIN | ACK, now)
        if self.client_fin:
            self.finish()
            return
        ct = self.client
        if ct is not None and not ct.is_closing():
            ct.write_eof()

    def client_lost(self, exc: Exception | None) -> None:
        if self.state == DONE:
            return
        ctx = self.ctx
        if self.state == CONNECTING:
            task = self.task
            self.detach()
            if task is not None:
                task.cancel()
            return
        if exc is not None or not (self.client_fin and self.server_fin):
            # a reset (or an abort) from the client side
            self.seg_in(RST, ctx.now())
            ctx.resets += 1
            self.detach()
            _rst(self.server)
        self.detach()

    def server_lost(self, exc: Exception | None) -> None:
        if self.state != OPEN:
            return
        ctx = self.ctx
        if exc is not None or not (self.client_fin and self.server_fin):
            self.seg_out(RST, ctx.now())
            ctx.resets += 1
            self.detach()
            _rst(self.client)
        self.detach()

    def finish(self) -> None:
        """Both sides sent FIN: close both (after their buffers drain)."""
        if self.server is not None:
            self.server.close()
        if self.client is not None:
            self.client.close()
        self.detach()

    def reset(self) -> None:
        """Reset both sides (entry expired, or its real server is gone)."""
        task = self.task
        _rst(self.client)
        _rst(self.server)
        self.detach()
        if task is not None:
            task.cancel()

    def freeze(self, frozen: bool) -> None:
        """Stop (or restart) relaying: packets of an entry whose real server
        is unavailable are dropped by the kernel."""
        if frozen == self.frozen:
            return
        self.frozen = frozen
        if self.state != OPEN:
            return
        if frozen:
            _pause(self.client)
            _pause(self.server)
        else:
            _resume(self.client)
            _resume(self.server)

    def flush(self) -> bool:
        """Hand the batched counters to the core; True if there was traffic."""
        up = self.up
        nout = pout = 0
        if up is not None:
            nout, pout = up.out_bytes, up.out_packets
            up.out_bytes = up.out_packets = 0
        if not (self.in_packets or pout):
            return False
        self.ctx.director.add_bytes(self.conn, self.in_bytes, nout, self.in_packets, pout)
        self.in_bytes = self.in_packets = 0
        return True

    def detach(self) -> None:
        if self.state == DONE:
            return
        self.state = DONE
        ctx = self.ctx
        if self.conn is not None:
            self.flush()
        ctx.sessions.discard(self)


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
