"""Addresses as the kernel holds them: an address family and an integer.

IPv4 addresses are 32-bit integers in host order (what the kernel's ``ntohl``
gives), IPv6 addresses 128-bit integers.  Hash-based schedulers fold an IPv6
address to 32 bits by XOR of its four words.
"""

from __future__ import annotations

import ipaddress
import socket

from .constants import AF_INET, AF_INET6

_V4_ALL = 0xFFFFFFFF


def parse_ip(text: str) -> tuple[int, int]:
    """Parse a literal IPv4 or IPv6 address (IPv6 without brackets).

    Returns ``(af, value)``; raises ``ValueError`` for anything else.
    """
    if ":" in text:
        return AF_INET6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    # inet_pton rejects the shorthand forms inet_aton accepts ("10.1", "0x0a...").
    return AF_INET, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")


def format_ip(af: int, value: int) -> str:
    """The canonical text of an address (IPv6 compressed, as inet_ntop prints it)."""
    if af == AF_INET:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def format_endpoint(af: int, value: int, port: int) -> str:
    """``a.b.c.d:port`` or ``[v6]:port``."""
    if af == AF_INET6:
        return f"[{format_ip(af, value)}]:{port}"
    return f"{format_ip(af, value)}:{port}"


def fold(af: int, value: int) -> int:
    """The 32-bit value hash schedulers use: the IPv4 address itself, or the
    XOR of the four 32-bit words of an IPv6 address (ip_vs_dh.c, ip_vs_sh.c)."""
    if af == AF_INET:
        return value
    return (value ^ (value >> 32) ^ (value >> 64) ^ (value >> 96)) & _V4_ALL


def v4_mask_from_text(text: str) -> int:
    """A dotted IPv4 netmask as an integer (any bit pattern, as ipvsadm accepts)."""
    return int(ipaddress.IPv4Address(text))


def v6_prefix_mask(plen: int) -> int:
    """The 128-bit mask of an IPv6 prefix length."""
    if plen <= 0:
        return 0
    return ((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1)
