"""The TCP relay of the NAT data plane (:mod:`forwarding.nat`): one
:class:`TcpSession` per client connection, its real server's side
(``_Upstream``) and the buffered protocols both sides switch to for bulk data.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lvs.constants import AF_INET6
from lvs.model import Flow
from lvs.proto_tcp import ACK, DIR_INPUT, DIR_OUTPUT, FIN, RST, SYN

from .connector import Connect

if TYPE_CHECKING:
    from .nat import _ServedService

IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
_LINGER_RST = struct.pack("ii", 1, 0)

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
        """A synthetic client segment for the entry we already hold
        (:meth:`Director.held_segment`), counted with the batch."""
        if self.sf.plane.director.held_segment(self.conn, DIR_INPUT, flags, now):
            self.pin += 1

    def seg_out(self, flags: int, now: float) -> None:
        """A synthetic real-server segment: ``process_out`` for our entry."""
        if self.sf.plane.director.held_segment(self.conn, DIR_OUTPUT, flags, now):
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
        plane.sessions.discard(self)


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
