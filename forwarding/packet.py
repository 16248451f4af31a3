"""Header parsing and rewriting on raw frames (bytes, bytearray, memoryview).

This is the hot path of the DR/TUN planes, so it works on buffers with
``struct`` and integer arithmetic, never on scapy objects (scapy is used for
the slow path only: ARP, ICMP errors, fragments).

The parser follows what the kernel checks before IPVS ever sees a packet
(``ip_rcv``/``ipv6_rcv``: version, header length, header checksum, total
length against the buffer) and what ``ip_vs_fill_iph_skb`` extracts (the
transport header, skipping IPv6 extension headers, and the fragment state).
Anything malformed yields ``None``: a frame that the kernel would drop must
never reach the connection table.

Addresses are integers, as in :mod:`lvs.addr`.  A parsed packet is a plain
tuple (cheaper than an object on this path), indexed by the ``P_*`` names.
"""

from __future__ import annotations

import struct

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

AF_INET = 2
AF_INET6 = 10

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_IPIP = 4
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IPV6 = 41
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_GRE = 47
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60
IPPROTO_SCTP = 132

IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFMASK = 0x1FFF

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

# Fragment state of a parsed packet.
FRAG_NONE = 0  # a whole datagram
FRAG_FIRST = 1  # first fragment: carries the transport header
FRAG_LATER = 2  # a later fragment: no transport header

# Indexes of the parsed tuple.
P_AF = 0  # AF_INET / AF_INET6
P_PROTO = 1  # transport protocol (after IPv6 extension headers)
P_SADDR = 2  # source address (int)
P_SPORT = 3  # source port (0 when there is none)
P_DADDR = 4  # destination address (int)
P_DPORT = 5  # destination port
P_TCPFLAGS = 6  # TCP flags byte (0 for others)
P_L3 = 7  # offset of the IP header in the buffer
P_L4 = 8  # offset of the transport header in the buffer
P_IPLEN = 9  # length of the IP packet (header included), without link padding
P_FRAG = 10  # FRAG_NONE / FRAG_FIRST / FRAG_LATER
P_FRAGID = 11  # IPv4 id or IPv6 fragment identification (0 if not a fragment)

Parsed = tuple[int, int, int, int, int, int, int, int, int, int, int, int]

_U16 = struct.Struct("!H")
_U16x2 = struct.Struct("!HH")
_IPV4 = struct.Struct("!BBHHHBBHII")
_IPV6_ADDRS = struct.Struct("!QQQQ")
_TCP_HEAD = struct.Struct("!HHIIBB")

#: the IPv6 extension headers the kernel walks to find the transport header
_V6_EXT = frozenset((IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS))
_V6_MAX_EXT = 8  # more than this is treated as malformed (bounded work)


# -----------------------------------------------------------------------------
# checksums
# -----------------------------------------------------------------------------
def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The 16-bit ones' complement sum of ``data`` (RFC 1071), plus ``initial``.

    Uses the identity that the sum of the 16-bit words with end-around carry
    equals the big-endian integer value of the buffer modulo 0xffff (because
    2**16 is 1 modulo 0xffff), which lets the C big-integer code do the work.
    The result is in 0..0xffff, 0xffff standing for a non-zero multiple.
    """
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    n = int.from_bytes(data, "big") + initial
    if n == 0:
        return 0
    r = n % 0xFFFF
    return r or 0xFFFF


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The Internet checksum of ``data``: the complement of :func:`ones_sum`."""
    return ~ones_sum(data, initial) & 0xFFFF


def pseudo_sum(af: int, saddr: int, daddr: int, proto: int, length: int) -> int:
    """The ones' sum of the TCP/UDP pseudo-header (RFC 793/768, RFC 8200 §8.1),
    reduced modulo 0xffff (addresses as integers sum like their 16-bit words)."""
    del af
    return (saddr + daddr + proto + length) % 0xFFFF


def ipv4_header_ok(buf: bytes | bytearray | memoryview, l3: int, ihl: int) -> bool:
    """``ip_fast_csum(iph, ihl) == 0`` as ip_rcv_core checks it."""
    n = int.from_bytes(buf[l3 : l3 + ihl], "big")
    return n != 0 and n % 0xFFFF == 0


# -----------------------------------------------------------------------------
# parsing
# -----------------------------------------------------------------------------
def parse_frame(buf: bytes | bytearray | memoryview, off: int = 0, end: int = -1) -> Parsed | None:
    """Parse an Ethernet frame starting at ``off`` and ending at ``end``
    (default: the end of ``buf``).  One 802.1Q/802.1ad tag is skipped.

    Returns the parsed tuple, or ``None`` for anything that is not a
    well-formed IPv4/IPv6 packet (the kernel drops those in ip_rcv/ipv6_rcv).
    """
    if end < 0:
        end = len(buf)
    if end - off < ETH_HLEN:
        return None
    etype = (buf[off + 12] << 8) | buf[off + 13]
    l3 = off + ETH_HLEN
    if etype in (ETH_P_8021Q, ETH_P_8021AD):
        if end - off < ETH_HLEN + 4:
            return None
        etype = (buf[off + 16] << 8) | buf[off + 17]
        l3 += 4
    if etype == ETH_P_IP:
        return parse_ipv4(buf, l3, end)
    if etype == ETH_P_IPV6:
        return parse_ipv6(buf, l3, end)
    return None


def parse_ip(buf: bytes | bytearray | memoryview, l3: int = 0, end: int = -1) -> Parsed | None:
    """Parse a bare IP packet (no link header), choosing the version from its first nibble."""
    if end < 0:
        end = len(buf)
    if end - l3 < 1:
        return None
    v = buf[l3] >> 4
    if v == 4:
        return parse_ipv4(buf, l3, end)
    if v == 6:
        return parse_ipv6(buf, l3, end)
    return None


def _l4_ports(
    buf: bytes | bytearray | memoryview, proto: int, l4: int, pend: int, frag: int
) -> tuple[int, int, int] | None:
    """Ports and TCP flags of the TCP, UDP or SCTP header at ``l4`` (zeros for
    other protocols), with the receive path's checks: a whole header, a sane
    TCP data offset, a UDP length that fits unless fragmented; None if not."""
    if proto == IPPROTO_TCP:
        if pend - l4 < 20:
            return None
        sport, dport, _seq, _ack, doff, flags = _TCP_HEAD.unpack_from(buf, l4)
        doff = (doff >> 4) << 2
        if doff < 20 or l4 + doff > pend:
            return None
        return sport, dport, flags
    if proto == IPPROTO_UDP:
        if pend - l4 < 8:
            return None
        sport, dport = _U16x2.unpack_from(buf, l4)
        ulen = _U16.unpack_from(buf, l4 + 4)[0]
        if frag == FRAG_NONE and (ulen < 8 or ulen > pend - l4):
            return None
        return sport, dport, 0
    if proto == IPPROTO_SCTP:
        if pend - l4 < 12:
            return None
        sport, dport = _U16x2.unpack_from(buf, l4)
        return sport, dport, 0
    return 0, 0, 0


def parse_ipv4(buf: bytes | bytearray | memoryview, l3: int, end: int) -> Parsed | None:
    """IPv4 as ``ip_rcv_core`` validates it, then the transport ports.

    Rules: version 4, ihl >= 5, total length >= ihl*4 and within the buffer
    (extra bytes are link padding and are ignored), header checksum valid.
    IP options are allowed (skipped via ihl).  A first fragment must still
    hold the complete transport header it claims; a later fragment yields
    ports 0 and ``FRAG_LATER``.
    """
    if end - l3 < 20:
        return None
    vihl, _tos, tot_len, ident, frag_off, _ttl, proto, _csum, saddr, daddr = _IPV4.unpack_from(buf, l3)
    if vihl >> 4 != 4:
        return None
    ihl = (vihl & 0x0F) << 2
    if ihl < 20 or tot_len < ihl or l3 + tot_len > end:
        return None
    if not ipv4_header_ok(buf, l3, ihl):
        return None
    pend = l3 + tot_len
    l4 = l3 + ihl
    frag = FRAG_NONE
    if frag_off & (IP_MF | IP_OFFMASK):
        if frag_off & IP_OFFMASK:
            return (AF_INET, proto, saddr, 0, daddr, 0, 0, l3, l4, tot_len, FRAG_LATER, ident)
        frag = FRAG_FIRST
    ports = _l4_ports(buf, proto, l4, pend, frag)
    if ports is None:
        return None
    sport, dport, flags = ports
    return (AF_INET, proto, saddr, sport, daddr, dport, flags, l3, l4, tot_len, frag, ident if frag else 0)


def parse_ipv6(buf: bytes | bytearray | memoryview, l3: int, end: int) -> Parsed | None:
    """IPv6 as ``ipv6_rcv`` checks it (version, payload length within the
    buffer; a jumbo payload length of 0 is refused), then the extension header
    chain the way ``ipv6_find_hdr`` walks it: hop-by-hop, routing and
    destination options are skipped; a fragment header gives the fragment
    state; anything else is the transport protocol."""
    if end - l3 < 40:
        return None
    if buf[l3] >> 4 != 6:
        return None
    plen = _U16.unpack_from(buf, l3 + 4)[0]
    if plen == 0:
        return None
    pend = l3 + 40 + plen
    if pend > end:
        return None
    nh = buf[l3 + 6]
    s_hi, s_lo, d_hi, d_lo = _IPV6_ADDRS.unpack_from(buf, l3 + 8)
    saddr = (s_hi << 64) | s_lo
    daddr = (d_hi << 64) | d_lo
    pos = l3 + 40
    frag = FRAG_NONE
    fragid = 0
    for _ in range(_V6_MAX_EXT):
        if nh in _V6_EXT:
            if pend - pos < 8:
                return None
            nh2 = buf[pos]
            hlen = (buf[pos + 1] + 1) << 3
            if pos + hlen > pend:
                return None
            nh = nh2
            pos += hlen
        elif nh == IPPROTO_FRAGMENT:
            if pend - pos < 8:
                return None
            nh2 = buf[pos]
            fo = _U16.unpack_from(buf, pos + 2)[0]
            fragid = int.from_bytes(buf[pos + 4 : pos + 8], "big")
            pos += 8
            nh = nh2
            if fo & 0xFFF8:
                return (AF_INET6, nh, saddr, 0, daddr, 0, 0, l3, pos, plen + 40, FRAG_LATER, fragid)
            if fo & 1:
                frag = FRAG_FIRST
            elif frag == FRAG_NONE:
                # an atomic fragment (offset 0, no M flag) is a whole packet
                fragid = 0
        else:
            break
    else:
        return None
    l4 = pos
    ports = _l4_ports(buf, nh, l4, pend, frag)
    if ports is None:
        return None
    sport, dport, flags = ports
    return (AF_INET6, nh, saddr, sport, daddr, dport, flags, l3, l4, plen + 40, frag, fragid)


def ip_tos(buf: bytes | bytearray | memoryview, l3: int) -> int:
    """The DS field (TOS / traffic class) of the IP header at ``l3``."""
    if buf[l3] >> 4 == 4:
        return buf[l3 + 1]
    return ((buf[l3] & 0x0F) << 4) | (buf[l3 + 1] >> 4)


def ip_ttl(buf: bytes | bytearray | memoryview, l3: int) -> int:
    """TTL (IPv4) or hop limit (IPv6)."""
    if buf[l3] >> 4 == 4:
        return buf[l3 + 8]
    return buf[l3 + 7]


def ip_df(buf: bytes | bytearray | memoryview, l3: int) -> bool:
    """The DF bit of an IPv4 header (IPv6 never fragments on the path: True)."""
    if buf[l3] >> 4 == 4:
        return bool(buf[l3 + 6] & 0x40)
    return True


# -----------------------------------------------------------------------------
# rewriting
# -----------------------------------------------------------------------------
def decrement_ttl(pkt: bytearray, l3: int = 0) -> bool:
    """``decrement_ttl`` of ip_vs_xmit.c on a writable packet: refuse (False)
    when the TTL/hop limit is <= 1 (the kernel then sends ICMP time exceeded),
    otherwise decrease it and, for IPv4, update the header checksum
    incrementally (``ip_decrease_ttl``: the checksum word grows by 0x0100)."""
    if pkt[l3] >> 4 == 4:
        ttl = pkt[l3 + 8]
        if ttl <= 1:
            return False
        pkt[l3 + 8] = ttl - 1
        c = ((pkt[l3 + 10] << 8) | pkt[l3 + 11]) + 0x0100
        c = (c + (c >> 16)) & 0xFFFF
        pkt[l3 + 10] = c >> 8
        pkt[l3 + 11] = c & 0xFF
        return True
    hl = pkt[l3 + 7]
    if hl <= 1:
        return False
    pkt[l3 + 7] = hl - 1
    return True


def ipv4_fix_checksum(pkt: bytearray, l3: int = 0) -> None:
    """``ip_send_check``: recompute the IPv4 header checksum in place."""
    ihl = (pkt[l3] & 0x0F) << 2
    pkt[l3 + 10] = pkt[l3 + 11] = 0
    c = checksum(pkt[l3 : l3 + ihl])
    pkt[l3 + 10] = c >> 8
    pkt[l3 + 11] = c & 0xFF


def l4_csum_offset(proto: int) -> int:
    """Where the checksum field sits in a transport header (-1: none we finish)."""
    if proto == IPPROTO_TCP:
        return 16
    if proto == IPPROTO_UDP:
        return 6
    return -1


def finish_l4_checksum(pkt: bytearray, l4: int, end: int, proto: int) -> None:
    """Complete a CHECKSUM_PARTIAL transport checksum in place.

    Packets handed over by a local sender (veth peers, TUN devices) can be
    captured before the checksum was computed: the field then holds only the
    folded pseudo-header sum (``TP_STATUS_CSUMNOTREADY``).  The kernel finishes
    it on transmit (``skb_checksum_help``): sum from the transport header to
    the end, store the complement.  A frame leaving through AF_PACKET would
    not get that, so it is done here.  ``l4``..``end`` is the transport
    segment inside ``pkt``.
    """
    off = l4_csum_offset(proto)
    if off < 0 or end - l4 < off + 2:
        return
    c = checksum(pkt[l4:end])
    if proto == IPPROTO_UDP and c == 0:
        c = 0xFFFF
    pkt[l4 + off] = c >> 8
    pkt[l4 + off + 1] = c & 0xFF


def l4_checksum_ok(buf: bytes | bytearray | memoryview, p: Parsed) -> bool:
    """Verify a complete TCP/UDP checksum (UDP over IPv4 may carry 0: none)."""
    proto = p[P_PROTO]
    l4 = p[P_L4]
    end = p[P_L3] + p[P_IPLEN]
    if proto == IPPROTO_UDP and p[P_AF] == AF_INET and buf[l4 + 6] == 0 and buf[l4 + 7] == 0:
        return True
    n = pseudo_sum(p[P_AF], p[P_SADDR], p[P_DADDR], proto, end - l4)
    return ones_sum(buf[l4:end], n) == 0xFFFF


def set_l4_checksum(pkt: bytearray, p: Parsed) -> None:
    """Recompute a TCP/UDP checksum from scratch (pseudo-header included)."""
    proto = p[P_PROTO]
    off = l4_csum_offset(proto)
    if off < 0:
        return
    l4 = p[P_L4]
    end = p[P_L3] + p[P_IPLEN]
    pkt[l4 + off] = pkt[l4 + off + 1] = 0
    n = pseudo_sum(p[P_AF], p[P_SADDR], p[P_DADDR], proto, end - l4)
    c = checksum(pkt[l4:end], n)
    if proto == IPPROTO_UDP and c == 0:
        c = 0xFFFF
    pkt[l4 + off] = c >> 8
    pkt[l4 + off + 1] = c & 0xFF


# -----------------------------------------------------------------------------
# building headers
# -----------------------------------------------------------------------------
def ethernet_header(dst_mac: bytes, src_mac: bytes, etype: int) -> bytes:
    return dst_mac + src_mac + _U16.pack(etype)


def mac_bytes(text: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` to 6 bytes."""
    raw = bytes(int(x, 16) for x in text.split(":"))
    if len(raw) != 6:
        raise ValueError(f"bad MAC {text!r}")
    return raw


def ipv4_header(
    saddr: int, daddr: int, proto: int, payload_len: int, tos: int, ttl: int, ident: int, frag_off: int
) -> bytes:
    """A 20-byte IPv4 header with its checksum."""
    hdr = bytearray(
        _IPV4.pack(0x45, tos, 20 + payload_len, ident & 0xFFFF, frag_off, ttl, proto, 0, saddr, daddr)
    )
    c = checksum(hdr)
    hdr[10] = c >> 8
    hdr[11] = c & 0xFF
    return bytes(hdr)


def ipv6_header(saddr: int, daddr: int, nexthdr: int, payload_len: int, tclass: int, hop: int) -> bytes:
    """A 40-byte IPv6 header, flow label 0."""
    return (
        struct.pack("!IHBB", (6 << 28) | (tclass << 20), payload_len, nexthdr, hop)
        + saddr.to_bytes(16, "big")
        + daddr.to_bytes(16, "big")
    )


def ecn_encapsulate(dsfield: int) -> int:
    """``INET_ECN_encapsulate(ds, ds)``: the outer DS field of a tunnel copies
    the inner one, except that an inner CE mark becomes ECT(0) outside."""
    if dsfield & 3 == 3:
        return (dsfield & ~3) | 2
    return dsfield


# -----------------------------------------------------------------------------
# TCP resegmentation (receive offload aggregates)
# -----------------------------------------------------------------------------
def segment_tcp(pkt: bytes | bytearray | memoryview, p: Parsed, mss: int) -> list[bytearray]:
    """Split one TCP packet (a GRO/TSO aggregate, bigger than a wire frame)
    into packets carrying at most ``mss`` payload bytes each, as the kernel's
    software GSO (``tcp_gso_segment``) does: sequence numbers advance, FIN and
    PSH stay on the last segment only, CWR on the first only, IPv4 ids count
    up, lengths and checksums are recomputed.  Returns bare IP packets.
    """
    l3 = p[P_L3]
    l4 = p[P_L4]
    end = l3 + p[P_IPLEN]
    doff = (pkt[l4 + 12] >> 4) << 2
    data_start = l4 + doff
    hdr = bytes(pkt[l3:data_start])
    payload = bytes(pkt[data_start:end])
    if mss <= 0 or len(payload) <= mss:
        return [bytearray(pkt[l3:end])]
    af = p[P_AF]
    rel4 = l4 - l3
    seq = int.from_bytes(hdr[rel4 + 4 : rel4 + 8], "big")
    flags = hdr[rel4 + 13]
    out: list[bytearray] = []
    ident = int.from_bytes(hdr[4:6], "big") if af == AF_INET else 0
    n = (len(payload) + mss - 1) // mss
    for i in range(n):
        chunk = payload[i * mss : (i + 1) * mss]
        seg = bytearray(hdr) + chunk
        f = flags
        if i < n - 1:
            f &= ~(TCP_FIN | TCP_PSH)
        if i > 0:
            f &= ~TCP_CWR
        seg[rel4 + 13] = f
        seg[rel4 + 4 : rel4 + 8] = ((seq + i * mss) & 0xFFFFFFFF).to_bytes(4, "big")
        total = len(seg)
        if af == AF_INET:
            seg[2:4] = total.to_bytes(2, "big")
            seg[4:6] = ((ident + i) & 0xFFFF).to_bytes(2, "big")
            ipv4_fix_checksum(seg, 0)
        else:
            seg[4:6] = (total - 40).to_bytes(2, "big")
        sp = parse_ip(seg)
        if sp is None:  # pragma: no cover - built from a parsed packet
            continue
        set_l4_checksum(seg, sp)
        out.append(seg)
    return out


def _copied_options(opts: bytes) -> bytes:
    """The options a later fragment repeats: those with the copy bit (RFC 791)."""
    out = bytearray()
    i = 0
    while i < len(opts):
        t = opts[i]
        if t == 0:
            break
        if t == 1:
            i += 1
            continue
        if i + 1 >= len(opts):
            break
        ln = opts[i + 1]
        if ln < 2 or i + ln > len(opts):
            break
        if t & 0x80:
            out += opts[i : i + ln]
        i += ln
    while len(out) % 4:
        out.append(0)
    return bytes(out)


def fragment_ipv4(pkt: bytes | bytearray, mtu: int) -> list[bytearray]:
    """Fragment a bare IPv4 packet to ``mtu`` as ``ip_fragment`` does: data
    in multiples of 8 bytes, MF on all but the last, offsets relative to the
    original's own offset (a fragment can be fragmented again), options with
    the copy bit repeated in later fragments."""
    ihl = (pkt[0] & 0x0F) << 2
    tot = int.from_bytes(pkt[2:4], "big")
    if tot <= mtu:
        return [bytearray(pkt[:tot])]
    hdr = bytes(pkt[:ihl])
    later_hdr = hdr[:20] + _copied_options(hdr[20:])
    data = bytes(pkt[ihl:tot])
    fo = int.from_bytes(pkt[6:8], "big")
    base_off = fo & IP_OFFMASK
    orig_mf = fo & IP_MF
    keep = fo & IP_DF
    out: list[bytearray] = []
    pos = 0
    first = True
    while pos < len(data):
        h = hdr if first else later_hdr
        room = (mtu - len(h)) & ~7
        if room <= 0:
            return []
        chunk = data[pos : pos + room]
        last = pos + len(chunk) >= len(data)
        frag = bytearray(h) + chunk
        frag[0] = 0x40 | (len(h) >> 2)
        frag[2:4] = len(frag).to_bytes(2, "big")
        flags = keep | (orig_mf if last else IP_MF)
        frag[6:8] = (flags | (base_off + (pos >> 3))).to_bytes(2, "big")
        ipv4_fix_checksum(frag, 0)
        out.append(frag)
        pos += len(chunk)
        first = False
    return out


def flow_hash(p: Parsed) -> int:
    """A 32-bit hash of the flow (addresses, protocol, ports), stable for the
    life of the process: the stand-in for ``skb_get_hash`` that
    ``udp_flow_src_port`` uses for the GUE source port."""
    x = (p[P_SADDR] * 0x9E3779B97F4A7C15) ^ (p[P_DADDR] * 0xC2B2AE3D27D4EB4F)
    x ^= (p[P_SPORT] << 16 | p[P_DPORT]) * 0x165667B19E3779F9 ^ p[P_PROTO]
    x ^= x >> 29
    x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 32
    return x & 0xFFFFFFFF


__all__ = [
    "AF_INET",
    "AF_INET6",
    "FRAG_FIRST",
    "FRAG_LATER",
    "FRAG_NONE",
    "Parsed",
    "checksum",
    "decrement_ttl",
    "ipv4_header",
    "ipv6_header",
    "ones_sum",
    "parse_frame",
    "parse_ip",
    "segment_tcp",
]
