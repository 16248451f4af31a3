"""Transmit for DR and TUN (ip_vs_xmit.c): the connection's real server
gets the client's packet, TTL decremented (``decrement_ttl``; TTL <= 1:
ICMP time exceeded).

* **DR** (``ip_vs_dr_xmit``): the IP packet unchanged but for the TTL, out of
  the interface of the route to the real server, to that route's next hop
  MAC (:mod:`forwarding.neighbours`: ARP/ND on a miss, packets waiting
  meanwhile as in the kernel's ``unres_qlen``).
* **TUN** (``ip_vs_tunnel_xmit``): the outer headers of :mod:`forwarding.tun`
  in front.
* MTU (``ensure_mtu_is_adequate``): an IPv4 packet with DF that does not fit
  the route MTU (less the tunnel overhead) is answered with "fragmentation
  needed"; without DF it is fragmented (TUN: the outer packet, ``ignore_df``);
  IPv6 gets "packet too big".  Receive-offload aggregates (longer than the
  ingress MTU) are cut back into segments first, as GSO would.
* ICMP errors to clients (:mod:`forwarding.dr_icmp`) are rate limited per
  client as ``icmp_ratelimit`` (:class:`forwarding.icmp.RateLimit`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from lvs.addr import format_ip
from lvs.constants import CONN_F_DROUTE, CONN_F_FWD_MASK, CONN_F_TUNNEL, IPPROTO_TCP
from lvs.core import Director
from lvs.model import Dest

from . import packet, tun
from .capture import TP_STATUS_CSUMNOTREADY, TxSockets
from .dr_icmp import build_icmp_error
from .icmp import RateLimit
from .neighbours import NextHop, Resolver
from .packet import (
    P_AF,
    P_FRAG,
    P_IPLEN,
    P_L3,
    P_L4,
    P_PROTO,
    P_SADDR,
)

log = logging.getLogger("lvsd.dr")

#: a status bit (beyond the TP_STATUS_* ones) for packets that came from
#: NFQUEUE: their flows never get a fast-path entry
STATUS_QUEUED = 1 << 30


@dataclass
class PlaneStats:
    """What the DR/TUN plane did with the frames it saw (``--status``)."""

    frames: int = 0
    malformed: int = 0
    truncated: int = 0
    not_ours: int = 0
    forwarded: int = 0
    dropped: int = 0
    rejected: int = 0
    accepted: int = 0
    icmp_sent: int = 0
    ttl_exceeded: int = 0
    frag_needed: int = 0
    fragments: int = 0
    resegmented: int = 0
    waiting: int = 0
    no_route: int = 0
    other_method: int = 0
    fast: int = 0
    queued: int = 0
    errors: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Transmit:
    """The transmit half of :class:`forwarding.dr.DirectPlane`."""

    director: Director
    stats: PlaneStats
    tx: TxSockets
    resolver: Resolver | None
    icmp_limit: RateLimit
    _port_range: tuple[int, int]
    #: the time of the packets being handled (one clock read per wake-up)
    _t: float

    def _dest_of(self, cp: Any) -> Dest | None:
        dest = cp.dest
        if dest is None and cp.svc is not None:
            dest = cp.svc.find_dest(cp.daf, cp.daddr, cp.dport) or cp.svc.find_dest(cp.daf, cp.daddr, 0)
        return dest

    def _forward(self, cp: Any, buf: Any, start: int, p: packet.Parsed, ifindex: int, status: int) -> None:
        method = cp.flags & CONN_F_FWD_MASK
        if method != CONN_F_DROUTE and method != CONN_F_TUNNEL:
            self.stats.other_method += 1
            return
        assert self.resolver is not None
        nh = self.resolver.lookup(cp.daf, cp.daddr, self._t)
        if nh is None:
            # wait for the neighbour; keep a copy of the frame
            frame = bytes(buf[start : p[P_L3] + p[P_IPLEN]])
            self.stats.waiting += 1
            self.resolver.wait((cp.daf, cp.daddr), lambda: self._retry(cp, frame, ifindex, status))
            return
        if not nh.ok:
            self.stats.no_route += 1
            return
        l3 = p[P_L3]
        iplen = p[P_IPLEN]
        pkt = bytearray(buf[l3 : l3 + iplen])
        if status & TP_STATUS_CSUMNOTREADY and p[P_FRAG] == packet.FRAG_NONE:
            packet.finish_l4_checksum(pkt, p[P_L4] - l3, iplen, p[P_PROTO])
        if not packet.decrement_ttl(pkt, 0):
            self.stats.ttl_exceeded += 1
            self._icmp_error(buf, start, p, ifindex, "ttl")
            return
        if method == CONN_F_DROUTE:
            if iplen <= nh.mtu:
                self.tx.send(nh.ifindex, nh.l2 + pkt)
                self.stats.forwarded += 1
                if p[P_FRAG] == packet.FRAG_NONE and not status & (TP_STATUS_CSUMNOTREADY | STATUS_QUEUED):
                    self._fast_install(cp, nh, None, p, method)
                return
            self._too_big(cp, nh, pkt, buf, start, p, ifindex, nh.mtu, None)
            return
        dest = self._dest_of(cp)
        if dest is None:
            self.stats.dropped += 1
            return
        mtu = tun.inner_mtu(nh.mtu, cp.daf, dest.tun_type, dest.tun_flags)
        if mtu < tun.min_inner_mtu(cp.daf):
            self.stats.dropped += 1
            return
        if iplen > mtu:
            self._too_big(cp, nh, pkt, buf, start, p, ifindex, mtu, dest)
            return
        self._send_tun(cp, nh, dest, pkt, p)
        if p[P_FRAG] == packet.FRAG_NONE and not status & (TP_STATUS_CSUMNOTREADY | STATUS_QUEUED):
            self._fast_install(cp, nh, dest, p, method)

    def _send_tun(self, cp: Any, nh: NextHop, dest: Dest, inner: bytearray, p: packet.Parsed) -> None:
        outer = tun.encapsulate(
            inner,
            p[P_AF],
            cp.daf,
            nh.src,
            cp.daddr,
            dest.tun_type,
            dest.tun_port,
            dest.tun_flags,
            packet.flow_hash(p),
            bool(self.ipvs.sysctl.pmtu_disc),
            self._port_range,
        )
        if len(outer) > nh.mtu and cp.daf == packet.AF_INET:
            # ignore_df: the outer packet is fragmented
            for frag in packet.fragment_ipv4(outer, nh.mtu):
                self.tx.send(nh.ifindex, nh.l2 + frag)
        else:
            self.tx.send(nh.ifindex, nh.l2 + outer)
        self.stats.forwarded += 1

    def _too_big(
        self,
        cp: Any,
        nh: NextHop,
        pkt: bytearray,
        buf: Any,
        start: int,
        p: packet.Parsed,
        ifindex: int,
        mtu: int,
        dest: Dest | None,
    ) -> None:
        """The slow path of ``ensure_mtu_is_adequate``."""
        assert self.resolver is not None
        link = self.resolver.links.get(ifindex)
        ingress_mtu = link.mtu if link is not None else 1500
        af = p[P_AF]
        if p[P_PROTO] == IPPROTO_TCP and p[P_IPLEN] > ingress_mtu and p[P_FRAG] == packet.FRAG_NONE:
            # a receive-offload aggregate: cut it back to segments that fit
            sp = packet.parse_ip(pkt)
            if sp is not None:
                tcp_hlen = (pkt[sp[P_L4] + 12] >> 4) << 2
                mss = mtu - sp[P_L4] - tcp_hlen
                self.stats.resegmented += 1
                for seg in packet.segment_tcp(pkt, sp, mss):
                    if dest is None:
                        self.tx.send(nh.ifindex, nh.l2 + seg)
                    else:
                        self._send_tun(cp, nh, dest, seg, packet.parse_ip(seg) or p)
                return
        if (
            af == packet.AF_INET
            and not pkt[6] & 0x40
            and not (dest is not None and not self.ipvs.sysctl.pmtu_disc)
        ):
            # no DF: fragment (DR); for TUN the outer packet is fragmented
            if dest is None:
                for frag in packet.fragment_ipv4(pkt, mtu):
                    self.tx.send(nh.ifindex, nh.l2 + frag)
            else:
                self._send_tun(cp, nh, dest, pkt, p)
            self.stats.forwarded += 1
            return
        if af == packet.AF_INET and dest is not None and not self.ipvs.sysctl.pmtu_disc:
            self._send_tun(cp, nh, dest, pkt, p)
            return
        self.stats.frag_needed += 1
        if p[P_FRAG] != packet.FRAG_LATER:
            self._icmp_error(buf, start, p, ifindex, "toobig", mtu)

    def _retry(self, cp: Any, frame: bytes, ifindex: int, status: int) -> None:
        p = packet.parse_frame(frame)
        if p is None:
            return
        self._forward(cp, frame, 0, p, ifindex, status)

    def _icmp_error(
        self, buf: Any, start: int, p: packet.Parsed, ifindex: int, kind: str, mtu: int = 0
    ) -> None:
        """Answer the client as ``icmp_send``/``icmpv6_send`` would: from the
        address it used, quoting its packet, out of the interface it came in
        on, back to the MAC it came from.  Never about an ICMP packet (only
        ICMP errors are forwarded, and ``icmp_send`` never answers those)."""
        if p[P_PROTO] == packet.IPPROTO_ICMP or p[P_PROTO] == packet.IPPROTO_ICMPV6:
            return
        if not self.icmp_limit.allow(format_ip(p[P_AF], p[P_SADDR]), self._t):
            return
        assert self.resolver is not None
        link = self.resolver.link(ifindex)
        if link is None:
            return
        try:
            frame = build_icmp_error(bytes(buf[start : p[P_L3] + p[P_IPLEN]]), p, link.mac, kind, mtu)
        except Exception as exc:
            log.debug("icmp build failed: %s", exc)
            return
        if frame and self.tx.send(ifindex, frame):
            self.stats.icmp_sent += 1
