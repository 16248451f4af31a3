"""ICMP errors about DR/TUN connections: which connection an error is about.

The kernel rule (ip_vs_core.c ``ip_vs_in_icmp`` / ``ip_vs_in_icmp_v6``,
called from the in-hook for every ICMP packet to a local address before the
packet is looked up as traffic of its own):

* Only errors are related: ICMP destination unreachable (3, fragmentation
  needed included), source quench (4) and time exceeded (11); for ICMPv6
  every error type (type < 128: destination unreachable, packet too big,
  time exceeded, parameter problem).  ICMPv4 parameter problem (12) is not
  on the kernel's list.  Anything else is the local stack's.
* The error quotes a packet the real server sent to the client from the
  VIP (DR/TUN replies bypass the director, so a router on the way back, or
  the client, reports to the VIP, which routes to the director).  The quoted
  addresses and ports are therefore in reverse order: the connection is
  looked up "in" with client = quoted destination, virtual address =
  quoted source (``ip_vs_fill_iph_skb_icmp`` with ``inverse``, then
  ``conn_in_get``).
* The quoted protocol must be one IPVS handles (TCP, UDP, SCTP), the quote
  must hold its ports, and it must not be a later fragment (nor, for IPv6,
  carry any fragment offset).
* ICMP packets that are themselves fragments are reassembled by the kernel
  first; an ICMPv6 error behind a fragment header is dropped (errors are
  never fragmented).  Here both are left to the local stack.
* With a connection found, the ICMP checksum (ICMPv6: with the
  pseudo-header) must be valid, else the packet is dropped.
* Errors about the director's own IPIP packets (quoted protocol 4: a router
  between director and real server) get the kernel's special treatment
  (PMTU update, error relayed to the client); not emulated here, they are
  left to the local stack.

Then the packet is counted for the connection (``ip_vs_in_stats``, and
``in_pkts``) and sent on as ``ip_vs_icmp_xmit`` does for DR and TUN: through
the connection's own transmitter, unchanged (no address to translate back),
i.e. MAC rewrite for DR, encapsulated for TUN (see :mod:`forwarding.dr_xmit`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import packet

ICMP_DEST_UNREACH = 3
ICMP_SOURCE_QUENCH = 4
ICMP_TIME_EXCEEDED = 11
#: the ICMPv4 types ip_vs_in_icmp treats as related
ICMP_RELATED_TYPES = frozenset((ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_TIME_EXCEEDED))
#: ICMPv6 informational messages have this bit set in the type
ICMPV6_INFOMSG_MASK = 0x80
ICMP_HLEN = 8
#: the protocols IPVS schedules, hence whose errors it relates
IPVS_PROTOCOLS = frozenset((packet.IPPROTO_TCP, packet.IPPROTO_UDP, packet.IPPROTO_SCTP))

_V6_SKIP = frozenset((packet.IPPROTO_HOPOPTS, packet.IPPROTO_ROUTING, packet.IPPROTO_DSTOPTS))
_PORTS = struct.Struct("!HH")
#: (protocol, source address, source port, destination address, destination port)
Quoted = tuple[int, int, int, int, int]
Buf = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Related:
    """The connection an ICMP error is about, in the client->VIP direction,
    and whether the ICMP checksum is valid."""

    protocol: int
    caddr: int
    cport: int
    vaddr: int
    vport: int
    icmp_type: int
    icmp_code: int
    csum_ok: bool


def is_icmp(p: packet.Parsed) -> bool:
    """ICMP over IPv4 or ICMPv6 over IPv6 (the in-hook's first test)."""
    return (p[packet.P_PROTO] == packet.IPPROTO_ICMP and p[packet.P_AF] == packet.AF_INET) or (
        p[packet.P_PROTO] == packet.IPPROTO_ICMPV6 and p[packet.P_AF] == packet.AF_INET6
    )


def related(buf: Buf, p: packet.Parsed) -> Related | None:
    """The connection key of the ICMP error in ``buf`` (parsed as ``p`` by
    :func:`forwarding.packet.parse_frame`), or None when the kernel would not
    relate it to a connection (not an error, fragmented, a quote without
    ports or of a protocol IPVS does not handle, an error about an IPIP
    packet)."""
    if not is_icmp(p) or p[packet.P_FRAG] != packet.FRAG_NONE:
        return None
    af = p[packet.P_AF]
    l4 = p[packet.P_L4]
    end = p[packet.P_L3] + p[packet.P_IPLEN]
    if end - l4 < ICMP_HLEN:
        return None
    itype = buf[l4]
    code = buf[l4 + 1]
    if af == packet.AF_INET:
        if itype not in ICMP_RELATED_TYPES:
            return None
        inner = _quoted_v4(buf, l4 + ICMP_HLEN, end)
    else:
        if itype & ICMPV6_INFOMSG_MASK:
            return None
        inner = _quoted_v6(buf, l4 + ICMP_HLEN, end)
    if inner is None:
        return None
    proto, qsaddr, qsport, qdaddr, qdport = inner
    if af == packet.AF_INET:
        csum_ok = packet.ones_sum(buf[l4:end]) == 0xFFFF
    else:
        n = packet.pseudo_sum(af, p[packet.P_SADDR], p[packet.P_DADDR], packet.IPPROTO_ICMPV6, end - l4)
        csum_ok = packet.ones_sum(buf[l4:end], n) == 0xFFFF
    # reversed: the quoted packet went from the VIP to the client
    return Related(proto, qdaddr, qdport, qsaddr, qsport, itype, code, csum_ok)


def _quoted_v4(buf: Buf, q: int, end: int) -> Quoted | None:
    """(protocol, saddr, sport, daddr, dport) of a quoted IPv4 packet: its
    header may be followed by as little as the first 8 transport bytes (the
    quote is truncated, so its total length is not checked)."""
    if end - q < 20 or buf[q] >> 4 != 4:
        return None
    ihl = (buf[q] & 0x0F) << 2
    if ihl < 20 or end - q < ihl + 4:
        return None
    proto = buf[q + 9]
    if proto not in IPVS_PROTOCOLS:
        return None  # IPIP (our own tunnel packets) included: not emulated
    if int.from_bytes(buf[q + 6 : q + 8], "big") & packet.IP_OFFMASK:
        return None
    saddr = int.from_bytes(buf[q + 12 : q + 16], "big")
    daddr = int.from_bytes(buf[q + 16 : q + 20], "big")
    sport, dport = _PORTS.unpack_from(buf, q + ihl)
    return proto, saddr, sport, daddr, dport


def _quoted_v6(buf: Buf, q: int, end: int) -> Quoted | None:
    """The same for a quoted IPv6 packet, its extension headers walked as
    ``ipv6_find_hdr`` does; a fragment header with a non-zero offset means
    no ports (``ciph.fragoffs``: not handled)."""
    if end - q < 40 or buf[q] >> 4 != 6:
        return None
    saddr = int.from_bytes(buf[q + 8 : q + 24], "big")
    daddr = int.from_bytes(buf[q + 24 : q + 40], "big")
    nh = buf[q + 6]
    pos = q + 40
    for _ in range(8):
        if nh in _V6_SKIP:
            if end - pos < 8:
                return None
            nh, hlen = buf[pos], (buf[pos + 1] + 1) << 3
            pos += hlen
        elif nh == packet.IPPROTO_FRAGMENT:
            if end - pos < 8:
                return None
            if int.from_bytes(buf[pos + 2 : pos + 4], "big") & 0xFFF8:
                return None
            nh = buf[pos]
            pos += 8
        else:
            break
    else:
        return None
    if nh not in IPVS_PROTOCOLS or end - pos < 4:
        return None
    sport, dport = _PORTS.unpack_from(buf, pos)
    return nh, saddr, sport, daddr, dport


__all__ = ["ICMP_RELATED_TYPES", "Related", "is_icmp", "related"]
