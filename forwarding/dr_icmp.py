"""ICMP errors the DR/TUN plane (:mod:`forwarding.dr`) sends to clients, as
``icmp_send``/``icmpv6_send`` would for the kernel's IPVS: port unreachable
for a REJECT verdict, time exceeded for a TTL that ``decrement_ttl`` would
take to 0, "fragmentation needed" (IPv4 with DF) / "packet too big" (IPv6)
carrying the route MTU (less the tunnel overhead for TUN) for a packet that
does not fit (``ensure_mtu_is_adequate``).  Built by scapy (slow path only),
from the address the client used, quoting its packet, to the MAC it came
from (the caller applies ``icmp_ratelimit``: :class:`forwarding.icmp.RateLimit`).
"""

from __future__ import annotations

from typing import Any

from lvs.addr import format_ip

from . import packet
from .packet import P_AF, P_DADDR, P_IPLEN, P_L3, P_SADDR


def build_icmp_error(frame: bytes, p: packet.Parsed, our_mac: bytes, kind: str, mtu: int = 0) -> bytes:
    """An Ethernet frame with the ICMP error for the packet in ``frame``:
    port unreachable (``unreach``), TTL exceeded (``ttl``), fragmentation
    needed / packet too big (``toobig``, with ``mtu``).  The quote is as much
    of the original as fits in 576 bytes (IPv4) or 1280 (IPv6)."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6PacketTooBig, ICMPv6TimeExceeded, IPv6
    from scapy.layers.l2 import Ether

    l3 = p[P_L3]
    orig = frame[l3 : l3 + p[P_IPLEN]]
    client_mac = frame[6:12]
    src = format_ip(p[P_AF], p[P_DADDR])
    dst = format_ip(p[P_AF], p[P_SADDR])
    mac = ":".join(f"{b:02x}" for b in our_mac)
    cmac = ":".join(f"{b:02x}" for b in client_mac)
    if p[P_AF] == packet.AF_INET:
        quote = orig[: 576 - 28]
        tos = (orig[1] & 0x1E) | 0xC0
        if kind == "unreach":
            icmp = ICMP(type=3, code=3)
        elif kind == "ttl":
            icmp = ICMP(type=11, code=0)
        else:
            icmp = ICMP(type=3, code=4, nexthopmtu=mtu)
        pkt = Ether(dst=cmac, src=mac) / IP(src=src, dst=dst, tos=tos, ttl=64) / icmp / quote
    else:
        quote = orig[: 1280 - 48]
        if kind == "unreach":
            icmp6: Any = ICMPv6DestUnreach(code=4)
        elif kind == "ttl":
            icmp6 = ICMPv6TimeExceeded(code=0)
        else:
            icmp6 = ICMPv6PacketTooBig(mtu=mtu)
        pkt = Ether(dst=cmac, src=mac) / IPv6(src=src, dst=dst, hlim=64) / icmp6 / quote
    return bytes(pkt)


__all__ = ["build_icmp_error"]
