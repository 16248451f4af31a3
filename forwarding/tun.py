"""IP tunnelling for VS/TUN (``ip_vs_tunnel_xmit``/``_v6`` in ip_vs_xmit.c):
outer headers built on bytes.

Tunnel types (``--tun-type``):

* **ipip** (default): the inner packet directly after an outer IP header,
  protocol 4 (IPv4 inside) or 41 (IPv6 inside).  IPv4-in-IPv4, IPv6-in-IPv6
  and the mixed forms are all allowed, as the kernel allows mixed families
  for tunnel destinations only.
* **gue**: outer UDP to ``--tun-port``; the source port is a hash of the
  inner flow scaled into the local port range (``udp_flow_src_port``); a GUE
  version-0 header of 4 bytes whose ``proto_ctype`` is the inner protocol
  (4 or 41).  The UDP checksum is computed only with ``--tun-csum`` or
  ``--tun-remcsum`` (``udp_set_csum(!check, ...)``); otherwise it is 0 over
  IPv4 (and, as the kernel's ``udp6_set_csum`` with nocheck, 0 over IPv6).
  The remote-checksum option is added by the kernel only for locally
  generated CHECKSUM_PARTIAL packets, never for forwarded ones, so here
  ``--tun-remcsum`` behaves as ``--tun-csum``.
* **gre**: a GRE header (version 0) with protocol 0x0800/0x86DD and, with
  ``--tun-csum``, the checksum bit and a checksum over GRE header and payload.

Outer header rules (``ip_vs_prepare_tunneled_skb`` and the xmit functions):
TTL/hop limit copied from the inner packet (after the director decremented
it); DS field copied with ``INET_ECN_encapsulate`` (inner CE becomes ECT(0));
outer IPv4 DF copied from an inner IPv4 DF when the ``pmtu_disc`` sysctl is
on, 0 otherwise and for IPv6 inside; outer IPv6 flow label 0; outer source =
the route's preferred source towards the real server.

The MTU left for the inner packet is the route MTU minus the outer header,
UDP+GUE (12) or the GRE header (4, 8 with checksum); see :func:`inner_mtu`.
"""

from __future__ import annotations

import itertools
import struct

from lvs.constants import TUN_F_CSUM, TUN_F_REMCSUM, TUN_TYPE_GRE, TUN_TYPE_GUE, TUN_TYPE_IPIP

from .packet import (
    AF_INET,
    AF_INET6,
    ETH_P_IP,
    ETH_P_IPV6,
    IP_DF,
    IPPROTO_GRE,
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    IPPROTO_UDP,
    checksum,
    ecn_encapsulate,
    ipv4_header,
    ipv6_header,
    pseudo_sum,
)

GUE_HLEN = 4
UDP_HLEN = 8
IPV4_HLEN = 20
IPV6_HLEN = 40

_ids = itertools.count(1)


def local_port_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    """``inet_get_local_port_range``: (low, high) for GUE source ports."""
    try:
        with open(path, encoding="ascii") as fh:
            lo, hi = (int(x) for x in fh.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def gue_source_port(hash32: int, port_range: tuple[int, int]) -> int:
    """``udp_flow_src_port``: scale a 32-bit flow hash into [low, high)."""
    lo, hi = port_range
    return (((hash32 & 0xFFFFFFFF) * (hi - lo)) >> 32) + lo


def gre_hlen(tun_flags: int) -> int:
    return 8 if tun_flags & TUN_F_CSUM else 4


def encap_overhead(outer_af: int, tun_type: int, tun_flags: int) -> int:
    """Bytes the tunnel adds in front of the inner packet."""
    n = IPV6_HLEN if outer_af == AF_INET6 else IPV4_HLEN
    if tun_type == TUN_TYPE_GUE:
        n += UDP_HLEN + GUE_HLEN
    elif tun_type == TUN_TYPE_GRE:
        n += gre_hlen(tun_flags)
    return n


def inner_mtu(route_mtu: int, outer_af: int, tun_type: int, tun_flags: int) -> int:
    """The MTU ``__ip_vs_get_out_rt`` checks the inner packet against."""
    return route_mtu - encap_overhead(outer_af, tun_type, tun_flags)


def min_inner_mtu(outer_af: int) -> int:
    """Below this the kernel refuses to tunnel (68 for IPv4, IPV6_MIN_MTU)."""
    return 1280 if outer_af == AF_INET6 else 68


def encapsulate(
    inner: bytes | bytearray,
    inner_af: int,
    outer_af: int,
    saddr: int,
    daddr: int,
    tun_type: int = TUN_TYPE_IPIP,
    tun_port: int = 0,
    tun_flags: int = 0,
    flowhash: int = 0,
    pmtu_disc: bool = True,
    port_range: tuple[int, int] = (32768, 60999),
) -> bytes:
    """Return the outer IP packet carrying ``inner`` (a bare IP packet).

    ``saddr``/``daddr`` are the outer addresses (director's source towards
    the real server, the real server), in ``outer_af``.
    """
    if inner_af == AF_INET6:
        ds = ((inner[0] & 0x0F) << 4) | (inner[1] >> 4)
        ttl = inner[7]
        inner_proto = IPPROTO_IPV6
        df = 0
    else:
        ds = inner[1]
        ttl = inner[8]
        inner_proto = IPPROTO_IPIP
        df = IP_DF if (pmtu_disc and inner[6] & 0x40) else 0
    ds = ecn_encapsulate(ds)
    if tun_type == TUN_TYPE_GUE:
        ulen = UDP_HLEN + GUE_HLEN + len(inner)
        sport = gue_source_port(flowhash, port_range)
        gue = bytes((0, inner_proto, 0, 0))  # ver 0, C 0, hlen 0 | proto_ctype | flags 0
        head = bytearray(struct.pack("!HHHH", sport, tun_port, ulen, 0)) + gue
        if tun_flags & (TUN_F_CSUM | TUN_F_REMCSUM):
            n = pseudo_sum(outer_af, saddr, daddr, IPPROTO_UDP, ulen)
            c = checksum(bytes(head) + bytes(inner), n)
            if c == 0:
                c = 0xFFFF
            head[6] = c >> 8
            head[7] = c & 0xFF
        payload = bytes(head) + bytes(inner)
        proto = IPPROTO_UDP
    elif tun_type == TUN_TYPE_GRE:
        etype = ETH_P_IPV6 if inner_af == AF_INET6 else ETH_P_IP
        if tun_flags & TUN_F_CSUM:
            head = bytearray(struct.pack("!HHHH", 0x8000, etype, 0, 0))
            c = checksum(bytes(head) + bytes(inner))
            head[4] = c >> 8
            head[5] = c & 0xFF
        else:
            head = bytearray(struct.pack("!HH", 0, etype))
        payload = bytes(head) + bytes(inner)
        proto = IPPROTO_GRE
    else:
        payload = bytes(inner)
        proto = inner_proto
    if outer_af == AF_INET6:
        return ipv6_header(saddr, daddr, proto, len(payload), ds, ttl) + payload
    return ipv4_header(saddr, daddr, proto, len(payload), ds, ttl, next(_ids), df) + payload


def decapsulate(
    outer: bytes | bytearray | memoryview, af: int, tun_port: int = 0
) -> tuple[int, bytes] | None:
    """The real-server side: strip one IPIP/GUE/GRE layer from a bare outer IP
    packet; returns (inner family, inner packet) or None when it is not a
    well-formed tunnel packet of one of the three kinds (checksums present
    are verified)."""
    if af == AF_INET:
        if len(outer) < 20 or outer[0] >> 4 != 4:
            return None
        ihl = (outer[0] & 0x0F) << 2
        tot = int.from_bytes(outer[2:4], "big")
        if ihl < 20 or tot < ihl or tot > len(outer):
            return None
        if int.from_bytes(outer[6:8], "big") & 0x3FFF:
            return None  # fragments: the kernel reassembles before the handler
        proto = outer[9]
        saddr = int.from_bytes(outer[12:16], "big")
        daddr = int.from_bytes(outer[16:20], "big")
        body = bytes(outer[ihl:tot])
    else:
        if len(outer) < 40 or outer[0] >> 4 != 6:
            return None
        plen = int.from_bytes(outer[4:6], "big")
        if 40 + plen > len(outer):
            return None
        proto = outer[6]
        saddr = int.from_bytes(outer[8:24], "big")
        daddr = int.from_bytes(outer[24:40], "big")
        body = bytes(outer[40 : 40 + plen])
    return decap_payload(proto, body, af, saddr, daddr, tun_port)


def decap_payload(
    proto: int, body: bytes, af: int = AF_INET, saddr: int = 0, daddr: int = 0, tun_port: int = 0
) -> tuple[int, bytes] | None:
    """Strip the tunnel header that follows the outer IP header (``body`` is
    the outer payload, ``proto`` the outer protocol)."""
    if proto == IPPROTO_IPIP:
        return _inner(AF_INET, body)
    if proto == IPPROTO_IPV6:
        return _inner(AF_INET6, body)
    if proto == IPPROTO_GRE:
        if len(body) < 4:
            return None
        flags, etype = struct.unpack_from("!HH", body)
        if flags & 0x0007:  # version must be 0
            return None
        hl = 4
        if flags & 0x8000:
            if len(body) < 8 or checksum(body) != 0:
                return None
            hl += 4
        if flags & 0x2000:  # key
            hl += 4
        if flags & 0x1000:  # sequence
            hl += 4
        if flags & 0x4000:  # routing: obsolete, refused as the kernel does
            return None
        inner = body[hl:]
        if etype == ETH_P_IP:
            return _inner(AF_INET, inner)
        if etype == ETH_P_IPV6:
            return _inner(AF_INET6, inner)
        return None
    if proto == IPPROTO_UDP:
        if len(body) < UDP_HLEN + GUE_HLEN:
            return None
        _sp, dp, ulen, csum = struct.unpack_from("!HHHH", body)
        if tun_port and dp != tun_port:
            return None
        if ulen < UDP_HLEN + GUE_HLEN or ulen > len(body):
            return None
        body = body[:ulen]
        if csum and saddr and checksum(body, pseudo_sum(af, saddr, daddr, IPPROTO_UDP, ulen)) != 0:
            return None
        return decap_gue(body[UDP_HLEN:])
    return None


def decap_gue(gue: bytes) -> tuple[int, bytes] | None:
    """Strip a GUE header (the UDP payload): version 0 data messages only."""
    if len(gue) < GUE_HLEN:
        return None
    b0 = gue[0]
    if b0 >> 6 != 0 or b0 & 0x20:  # version 0, C (control) clear
        return None
    hlen = (b0 & 0x1F) << 2
    if len(gue) < GUE_HLEN + hlen:
        return None
    ptype = gue[1]
    inner = gue[GUE_HLEN + hlen :]
    if ptype == IPPROTO_IPIP:
        return _inner(AF_INET, inner)
    if ptype == IPPROTO_IPV6:
        return _inner(AF_INET6, inner)
    return None


def _inner(af: int, pkt: bytes) -> tuple[int, bytes] | None:
    if af == AF_INET:
        if len(pkt) < 20 or pkt[0] >> 4 != 4:
            return None
        tot = int.from_bytes(pkt[2:4], "big")
        if tot < 20 or tot > len(pkt):
            return None
        return AF_INET, bytes(pkt[:tot])
    if len(pkt) < 40 or pkt[0] >> 4 != 6:
        return None
    plen = int.from_bytes(pkt[4:6], "big")
    if 40 + plen > len(pkt):
        return None
    return AF_INET6, bytes(pkt[: 40 + plen])


__all__ = [
    "decap_payload",
    "decapsulate",
    "encap_overhead",
    "encapsulate",
    "gue_source_port",
    "inner_mtu",
    "local_port_range",
]
