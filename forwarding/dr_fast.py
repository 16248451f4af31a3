"""The DR/TUN fast path: once the core has decided a flow, an established
IPv4 flow's later packets (UDP; TCP segments with ACK and without SYN/FIN/RST
on an ESTABLISHED entry) are forwarded from a table keyed by the raw address
and port bytes of the frame (``FAST_KEY``): header checks as ``ip_rcv`` makes
them, TTL and checksum patched, the prepared Ethernet header (DR) or
Ethernet + outer IPIP header (TUN) in front, one ``send``.  Their counters,
timeout and timer go to the core in batches (``Director.account_in``).  New
flows, TCP flag changes, ICMP answers, fragments, IP options, IPv6, GUE and
GRE stay on the slow path (:mod:`forwarding.dr_receive`).  The frame layouts
are module globals here so the per-packet loop reads them as its own.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Callable
from typing import Any

from lvs.conn import TCP_S_ESTABLISHED
from lvs.constants import (
    CONN_F_ONE_PACKET,
    CONN_F_TUNNEL,
    DEST_F_AVAILABLE,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TUN_TYPE_IPIP,
)
from lvs.core import Director
from lvs.ctl import IPVS
from lvs.model import Dest

from . import packet, tun
from .capture import PKT3, SLL_IFINDEX_OFF, TP_STATUS_CSUMNOTREADY, TxSockets
from .dr_xmit import PlaneStats
from .neighbours import NextHop
from .packet import (
    P_AF,
    P_DADDR,
    P_DPORT,
    P_FRAG,
    P_L3,
    P_L4,
    P_PROTO,
    P_SADDR,
    P_SPORT,
)

log = logging.getLogger("lvsd.dr")


class FastEntry:
    """A fast-path entry: one established flow (IPv4, no IP options, TCP or
    UDP), the connection entry it belongs to and its prepared output.
    ``packets``/``nbytes`` are what was forwarded since the last flush into
    the core's counters."""

    __slots__ = ("addrs", "addrsum", "conn", "dest", "l2", "maxlen", "minsnap", "nbytes", "packets", "proto",
                 "send", "tun", "unpack")  # fmt: skip

    def __init__(self) -> None:
        self.packets = 0
        self.nbytes = 0


#: the fast path's view of a frame, from the ethertype (offset 12) to the IPv4
#: header checksum (the identification skipped), then the UDP length (offset
#: 38) or the TCP data offset and flags (offset 46)
FAST_UDP = struct.Struct("!HBBH2xHBBH12xH")
FAST_TCP = struct.Struct("!HBBH2xHBBH20xH")
#: sockaddr_ll's ifindex (at SLL_IFINDEX_OFF in a ring frame)
IFINDEX = struct.Struct("<i")
#: TTL, protocol, header checksum (IPv4 offsets 8..12)
TTL_CSUM = struct.Struct("!BBH")
#: an outer IPv4 header (IPIP) with its 8 address bytes
OUTER4 = struct.Struct("!BBHHHBBH8s")
#: the fast-path key: the frame's bytes 26..38 (addresses and ports)
FAST_KEY = struct.Struct("!IIHH")
TCP_ES_ACK_MASK = packet.TCP_SYN | packet.TCP_FIN | packet.TCP_RST | packet.TCP_ACK
#: entries at most (past it the table starts again empty)
FAST_MAX = 1 << 16


class FastPath:
    """The fast-path half of :class:`forwarding.dr.DirectPlane`."""

    director: Director
    ipvs: IPVS
    stats: PlaneStats
    tx: TxSockets
    fast_path: bool
    _fast: dict[bytes, FastEntry]
    _touched: list[FastEntry]
    _tx_count: Callable[..., None] | None
    _t: float

    def process_block(self, buf: Any, off: int, num: int, view: Any = None) -> None:
        """The frames of one TPACKET_V3 block: ``num`` frames, the first at
        ``off`` in ``buf`` (the ring's mmap; any buffer whose slices are bytes).

        Fast path: a frame whose bytes 26..38 (IPv4 addresses and ports) name
        a flow in the fast table, and that is an IPv4 packet without options
        or fragmentation, complete, with a valid header checksum, a TTL above
        1, a length within the entry's MTU, a sane UDP length / TCP data
        offset, and, for TCP, only ACK among SYN/FIN/RST/ACK on an entry still
        ESTABLISHED, is forwarded here: TTL and checksum patched, the prepared
        Ethernet header (DR) or Ethernet + outer IPIP header (TUN) put in
        front, one send.  For such packets ``Director.process_in`` would only
        count them, keep the state (ACK on ES stays ES in the INPUT_ONLY table
        DR/TUN entries use, as in every other table), set the timeout and
        re-arm the timer: that is done by ``Director.account_in``, batched per
        entry, before any other frame reaches the core and at the end of the
        wake-up (``now`` is the same for all of them).  Everything else (new
        flows, SYN/FIN/RST, fragments, options, IPv6, GUE/GRE, TTL 1, too big,
        checksum offload pending, malformed frames) takes the slow path,
        :meth:`handle_frame`, exactly as before; the slow path (re)installs
        or removes the flow's entry after each of its decisions.
        """
        if view is None:
            view = buf
        fget = self._fast.get
        unpack_pkt = PKT3.unpack_from
        unpack_ifx = IFINDEX.unpack_from
        ttl_csum = TTL_CSUM.pack
        outer4 = OUTER4.pack
        ids = tun._ids
        pmtu = bool(self.ipvs.sysctl.pmtu_disc)
        touched = self._touched
        from_bytes = int.from_bytes
        handle = self.handle_frame
        fast = 0
        errors = 0
        for _ in range(num):
            nxt, snap, wire, st, mac = unpack_pkt(buf, off)
            s = off + mac
            e = fget(buf[s + 26 : s + 38])
            if e is not None and snap == wire and snap >= e.minsnap and not st & TP_STATUS_CSUMNOTREADY:
                etype, vihl, tos, tot, frag, ttl, proto, csum, x = e.unpack(buf, s + 12)
                if (
                    etype == 0x0800
                    and vihl == 0x45
                    and proto == e.proto
                    and not frag & 0x3FFF
                    and ttl > 1
                    and tot <= e.maxlen
                    and tot + 14 <= snap
                    and e.conn.hashed
                    and e.dest.flags & DEST_F_AVAILABLE
                    and (
                        8 <= x <= tot - 20
                        if proto == 17
                        else x & TCP_ES_ACK_MASK == packet.TCP_ACK
                        and 20 <= (x >> 12) << 2 <= tot - 20
                        and e.conn.state == TCP_S_ESTABLISHED
                    )
                ):
                    hs = from_bytes(buf[s + 14 : s + 34], "big")
                    if hs and not hs % 0xFFFF:
                        # decrement_ttl: TTL - 1, checksum word + 0x0100
                        ttl -= 1
                        c = csum + 0x100
                        c = (c + (c >> 16)) & 0xFFFF
                        inner = buf[s + 14 : s + 22] + ttl_csum(ttl, proto, c) + buf[s + 26 : s + 14 + tot]
                        if e.tun:
                            # ip_vs_tunnel_xmit, IPv4 in IPv4 (tun.encapsulate)
                            ds = tos if tos & 3 != 3 else (tos & 0xFC) | 2
                            oid = next(ids) & 0xFFFF
                            df = frag & 0x4000 if pmtu else 0
                            r = (0x4504 + ds + tot + 20 + oid + df + (ttl << 8) + e.addrsum) % 0xFFFF
                            out = e.l2 + outer4(0x45, ds, tot + 20, oid, df, ttl, 4, 0xFFFF - r if r else 0,
                                                e.addrs) + inner  # fmt: skip
                        else:
                            out = e.l2 + inner
                        try:
                            e.send(out)
                        except OSError:
                            errors += 1
                        else:
                            fast += 1
                        if not e.packets:
                            touched.append(e)
                        e.packets += 1
                        e.nbytes += tot
                        off += nxt
                        continue
            # the slow path; the fast path's pending counts go to the core first
            if touched:
                self._flush()
            try:
                handle(view, s, s + snap, unpack_ifx(buf, off + SLL_IFINDEX_OFF)[0], st, wire)
            except Exception:
                self.stats.errors += 1
                log.exception("DR/TUN: frame handling failed")
            off += nxt
        if fast or errors:
            # counted as the slow path counts them: forwarded once decided,
            # whether the send succeeded or not (TxSockets counts the errors)
            st_ = self.stats
            st_.frames += fast + errors
            st_.forwarded += fast + errors
            st_.fast += fast + errors
            if self._tx_count is not None:
                self._tx_count(fast, errors)

    def _flush(self) -> None:
        """Hand the fast path's batched packets to the core (account_in)."""
        touched = self._touched
        if not touched:
            return
        account = self.director.account_in
        t = self._t
        for e in touched:
            account(e.conn, t, e.packets, e.nbytes)
            e.packets = e.nbytes = 0
        touched.clear()

    def fast_clear(self) -> None:
        """Forget every fast-path entry (services, real servers or next hops
        changed: the slow path decides again and reinstalls)."""
        self._flush()
        self._fast.clear()

    def _fast_install(self, cp: Any, nh: NextHop, dest: Dest | None, p: packet.Parsed, method: int) -> None:
        """After the slow path forwarded ``p`` for ``cp``: make the flow's
        later packets take the fast path when they can (see process_block)."""
        if (
            not self.fast_path
            or p[P_AF] != packet.AF_INET
            or p[P_L4] - p[P_L3] != 20
            or p[P_FRAG] != packet.FRAG_NONE
            or not cp.hashed
            or cp.flags & CONN_F_ONE_PACKET
            or cp.af != packet.AF_INET
        ):
            return
        proto = p[P_PROTO]
        if proto == IPPROTO_TCP:
            if cp.state != TCP_S_ESTABLISHED:
                return
            unpack = FAST_TCP.unpack_from
            minsnap = FAST_TCP.size + 12
        elif proto == IPPROTO_UDP:
            unpack = FAST_UDP.unpack_from
            minsnap = FAST_UDP.size + 12
        else:
            return
        d = cp.dest
        if d is None or not d.flags & DEST_F_AVAILABLE:
            return
        e = FastEntry()
        e.proto = proto
        e.conn = cp
        e.dest = d
        e.unpack = unpack
        e.minsnap = minsnap
        e.l2 = nh.l2
        if method == CONN_F_TUNNEL:
            if dest is None or dest.tun_type != TUN_TYPE_IPIP or cp.daf != packet.AF_INET or len(nh.l2) != 14:
                return
            e.maxlen = tun.inner_mtu(nh.mtu, packet.AF_INET, TUN_TYPE_IPIP, 0)
            if e.maxlen < tun.min_inner_mtu(packet.AF_INET):
                return
            e.tun = True
            e.addrs = FAST_KEY.pack(nh.src, cp.daddr, 0, 0)[:8]
            e.addrsum = nh.src + cp.daddr
        else:
            e.maxlen = nh.mtu
            e.tun = False
            e.addrs = b""
            e.addrsum = 0
        sender = getattr(self.tx, "sender", None)
        if sender is not None:
            try:
                e.send = sender(nh.ifindex)
            except OSError:
                return
        else:
            e.send = functools.partial(self.tx.send, nh.ifindex)
        fast = self._fast
        if len(fast) >= FAST_MAX:
            self._flush()
            fast.clear()
        fast[FAST_KEY.pack(p[P_SADDR], p[P_DADDR], p[P_SPORT], p[P_DPORT])] = e
