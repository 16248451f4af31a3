"""Receive on the DR/TUN plane (the slow path; ``ip_vs_in_hook``): frames
from the AF_PACKET ring and packets from NFQUEUE go through the core's
decision (``Director.process_in``), ICMP errors about a connection through
``Director.in_icmp`` (their parsing: :mod:`forwarding.icmp_related`), then
to :mod:`forwarding.dr_xmit`.

Verdicts other than FORWARD: REJECT sends ICMP port unreachable, DROP drops,
ACCEPT (not for a scheduled connection, e.g. a stray ACK) also drops, because
the frame was already taken from the local stack (the kernel would hand it
to the local stack, which would answer with a RST).  Packets of firewall-mark
services come from NFQUEUE (the mark does not exist yet when AF_PACKET sees
the frame) and get the kernel a verdict: DROP when lvsd forwarded, dropped
or rejected the packet, ACCEPT when IPVS would have let it through.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from lvs.constants import CONN_F_DROUTE, CONN_F_TUNNEL, IPPROTO_UDP
from lvs.core import ACCEPT, DROP, FORWARD, REJECT, Director
from lvs.model import Flow

from . import icmp_related, packet
from .capture import RxRing, Target
from .dr_fast import FAST_KEY, FastEntry
from .dr_frag import FragState
from .dr_xmit import STATUS_QUEUED, PlaneStats
from .neighbours import Resolver
from .nfqueue import NF_ACCEPT, NF_DROP, NfQueue, Queued
from .packet import (
    P_AF,
    P_DADDR,
    P_DPORT,
    P_FRAG,
    P_IPLEN,
    P_L3,
    P_L4,
    P_PROTO,
    P_SADDR,
    P_SPORT,
    P_TCPFLAGS,
)

log = logging.getLogger("lvsd.dr")

#: blocks (or NFQUEUE batches) handled per wake-up before the event loop gets a turn
BLOCKS_PER_WAKEUP = 32
#: the transport protocols ip_vs_in_hook schedules (ip_vs_proto_data_get)
SCHEDULED_PROTOS = frozenset((6, 17, 132))
#: the forwarding methods of the entries this plane serves
DIRECT_METHODS = frozenset((CONN_F_DROUTE, CONN_F_TUNNEL))


class Receive:
    """The receive half of :class:`forwarding.dr.DirectPlane`."""

    director: Director
    stats: PlaneStats
    resolver: Resolver | None
    ring: RxRing | None
    queue: NfQueue | None
    loop: asyncio.AbstractEventLoop | None
    now: Any
    _fast: dict[bytes, FastEntry]
    _frags: collections.OrderedDict[tuple[int, int, int, int, int], FragState]
    _match: set[tuple[int, int, int, int]]
    _match_any: set[tuple[int, int, int]]
    _targets: frozenset[Target]
    _pe_payload: bool
    _t: float

    def _on_queue_readable(self) -> None:
        """Queued packets (firewall-mark services): a bounded number of
        ``recvmmsg`` batches per wake-up, each answered by one ``send`` of
        verdicts.  Every packet gets a verdict, also when handling it fails
        (DROP), or it would stay in the kernel's queue."""
        q = self.queue
        if q is None:
            return
        self._t = self.now()
        for _ in range(BLOCKS_PER_WAKEUP):
            try:
                batch = q.receive()
            except OSError as exc:
                log.error("NFQUEUE receive: %s", exc)
                break
            if not batch:
                break
            verdicts: list[tuple[int, int]] = []
            for pk in batch:
                try:
                    v = self.handle_queued(pk)
                except Exception:
                    self.stats.errors += 1
                    log.exception("DR/TUN: queued packet handling failed")
                    v = NF_DROP
                verdicts.append((pk.packet_id, v))
            try:
                q.send_verdicts(verdicts)
            except OSError as exc:
                log.error("NFQUEUE verdicts: %s", exc)
            if len(batch) < q.batch:
                break
        if self._frags:
            self._expire_frags(self._t)

    def handle_queued(self, pk: Queued) -> int:
        """One packet from NFQUEUE (a firewall-mark service's): the verdict
        for the kernel, after ``ip_vs_in_hook``'s rules.

        The IP packet gets an Ethernet header (our MAC, the sender's MAC from
        NFQA_HWADDR) so that the frame code (decision, transmit, ICMP errors
        back to the sender's MAC) serves it unchanged.  NF_ACCEPT for what
        IPVS lets through (unparsable packets, protocols other than
        TCP/UDP/SCTP, core verdict ACCEPT); NF_DROP for everything lvsd
        forwarded, dropped or rejected itself.
        """
        st = self.stats
        st.queued += 1
        st.frames += 1
        if pk.truncated:
            # longer than the copy range: cannot be forwarded whole
            st.truncated += 1
            return NF_DROP
        payload = pk.payload
        if not len(payload):
            st.malformed += 1
            return NF_ACCEPT
        etype = packet.ETH_P_IPV6 if payload[0] >> 4 == 6 else packet.ETH_P_IP
        link = self.resolver.links.get(pk.indev) if self.resolver is not None else None
        sender = pk.hwaddr[:6] if len(pk.hwaddr) >= 6 else bytes(6)
        frame = packet.ethernet_header(link.mac if link is not None else bytes(6), sender, etype) + payload
        p = packet.parse_frame(frame)
        if p is None:
            st.malformed += 1
            return NF_ACCEPT
        if p[P_PROTO] not in SCHEDULED_PROTOS:
            st.not_ours += 1
            return NF_ACCEPT
        if p[P_FRAG] != packet.FRAG_NONE:
            self._fragment(frame, 0, len(frame), p, pk.indev, STATUS_QUEUED, pk.mark)
            return NF_DROP
        v = self._decide(frame, 0, p, pk.indev, STATUS_QUEUED, pk.mark)
        return NF_ACCEPT if v.action == ACCEPT else NF_DROP

    def _on_readable(self) -> None:
        ring = self.ring
        if ring is None:
            return
        self._t = self.now()
        mm = ring.mm
        mv = ring.mv
        # a bounded share, then the event loop gets a turn (resolver answers,
        # timers, lvsadm): the kernel keeps releasing blocks under load
        try:
            for _ in range(BLOCKS_PER_WAKEUP):
                blk = ring.next_block()
                if blk is None:
                    break
                try:
                    self.process_block(mm, blk[0], blk[1], mv)
                finally:
                    ring.release()
        finally:
            self._flush()
        if self._frags:
            self._expire_frags(self._t)

    def handle_frame(self, buf: Any, start: int, end: int, ifindex: int, status: int, wire_len: int) -> None:
        """One captured frame (``buf[start:end]``); never raises on bad input."""
        st = self.stats
        st.frames += 1
        if end - start < wire_len:
            st.truncated += 1
            return
        p = packet.parse_frame(buf, start, end)
        if p is None:
            st.malformed += 1
            return
        af = p[P_AF]
        proto = p[P_PROTO]
        daddr = p[P_DADDR]
        if proto == packet.IPPROTO_ICMP or proto == packet.IPPROTO_ICMPV6:
            self._related_icmp(buf, start, p, ifindex, status)
            return
        if (
            (af, proto, daddr, p[P_DPORT]) not in self._match
            and (af, proto, daddr) not in self._match_any
            and (p[P_FRAG] != packet.FRAG_LATER or not self._addr_served(af, proto, daddr))
        ):
            st.not_ours += 1
            return
        if p[P_FRAG] != packet.FRAG_NONE:
            self._fragment(buf, start, end, p, ifindex, status)
            return
        self._decide(buf, start, p, ifindex, status)

    def _addr_served(self, af: int, proto: int, daddr: int) -> bool:
        return any(t.af == af and t.protocol == proto and t.addr == daddr for t in self._targets)

    def _related_icmp(self, buf: Any, start: int, p: packet.Parsed, ifindex: int, status: int) -> None:
        """An ICMP packet to a served address: ``ip_vs_in_icmp`` for DR/TUN
        (rules in :mod:`forwarding.icmp_related`).  An error about an existing
        DR/TUN connection (the quote looked up reversed, client -> VIP) with a
        valid checksum is counted for it (``ip_vs_in_stats``, ``in_pkts``)
        and sent to its real server by the connection's own transmitter
        (``ip_vs_icmp_xmit``: DR or TUN, packet unchanged but for the TTL);
        everything else is left to the local stack (counted as not ours)."""
        st = self.stats
        rel = icmp_related.related(buf, p)
        if rel is None:
            st.not_ours += 1
            return
        v = self.director.in_icmp(
            rel.protocol,
            p[P_AF],
            rel.caddr,
            rel.cport,
            rel.vaddr,
            rel.vport,
            p[P_IPLEN],
            rel.csum_ok,
            DIRECT_METHODS,
        )
        if v.action == ACCEPT:
            st.not_ours += 1
            return
        if v.action != FORWARD:
            # a bad checksum: the kernel drops it; here it is just not forwarded
            st.extra["icmp_bad_csum"] = st.extra.get("icmp_bad_csum", 0) + 1
            return
        st.extra["icmp_related"] = st.extra.get("icmp_related", 0) + 1
        cp = v.conn
        self._forward(cp, buf, start, p, ifindex, status)

    def _decide(
        self, buf: Any, start: int, p: packet.Parsed, ifindex: int, status: int, fwmark: int = 0
    ) -> Any:
        if p[P_AF] == packet.AF_INET and self._fast:
            # this decision replaces whatever the fast path knew of the flow
            self._fast.pop(FAST_KEY.pack(p[P_SADDR], p[P_DADDR], p[P_SPORT], p[P_DPORT]), None)
        flow = Flow(p[P_AF], p[P_PROTO], p[P_SADDR], p[P_SPORT], p[P_DADDR], p[P_DPORT], fwmark)
        if p[P_PROTO] == IPPROTO_UDP and self._pe_payload:
            # the UDP payload, for --pe sip (lvs.pe_sip: the Call-ID decides a
            # new flow's template); for the first fragment of a datagram, the
            # part it carries (the kernel reassembles first).  Only while
            # some service has a PE: others never read it.
            l4 = p[P_L4]
            v = self.director.process_in(
                flow, self._t, p[P_TCPFLAGS], p[P_IPLEN], buf[l4 + 8 : p[P_L3] + p[P_IPLEN]], l4 - p[P_L3]
            )
        else:
            v = self.director.process_in(flow, self._t, p[P_TCPFLAGS], p[P_IPLEN])
        action = v.action
        if action == FORWARD:
            self._forward(v.conn, buf, start, p, ifindex, status)
        elif action == REJECT:
            self.stats.rejected += 1
            self._icmp_error(buf, start, p, ifindex, "unreach")
        elif action == DROP:
            self.stats.dropped += 1
        else:
            self.stats.accepted += 1
        return v
