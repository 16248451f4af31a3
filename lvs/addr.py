"""Addresses as the kernel holds them: an address family and an integer.

IPv4 addresses are 32-bit integers in host order (what the kernel's ``ntohl``
gives), IPv6 addresses 128-bit integers.  Hash-based schedulers fold an IPv6
address to 32 bits by XOR of its four words.
"""

from __future__ import annotations

import ipaddress

from .constants import AF_INET, AF_INET6

_V4_ALL = 0xFFFFFFFF
_HEX = {c: int(c, 16) for c in "0123456789abcdefABCDEF"}


def inet_pton4(text: str) -> int | None:
    """glibc ``inet_pton(AF_INET)``: exactly four dotted decimal octets, no
    leading zero, none above 255 (not the shorthands inet_aton takes)."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        if not part or len(part) > 3 or not part.isascii() or not part.isdigit():
            return None
        if len(part) > 1 and part[0] == "0":
            return None
        octet = int(part)
        if octet > 255:
            return None
        value = value << 8 | octet
    return value


def inet_pton6(text: str) -> int | None:
    """glibc ``inet_pton(AF_INET6)``: eight groups of at most four hex digits,
    one ``::`` standing for at least one zero group, an IPv4 dotted quad
    allowed as the last 32 bits; nothing else (no zone, no spaces)."""
    if not text:
        return None
    if text.startswith(":") and not text.startswith("::"):
        return None
    if text.startswith("::"):
        text = text[1:]  # the leading ':' of '::' is not a separator
    groups: list[int] = []
    gap: int | None = None  # where '::' stands, in groups
    token_start = 0
    digits = 0
    value = 0
    i = 0
    while i < len(text):
        ch = text[i]
        i += 1
        digit = _HEX.get(ch)
        if digit is not None:
            if digits == 4:
                return None
            value = value << 4 | digit
            digits += 1
            continue
        if ch == ":":
            token_start = i
            if digits == 0:
                if gap is not None:
                    return None
                gap = len(groups)
                continue
            if i == len(text) or len(groups) == 8:
                return None
            groups.append(value)
            digits = value = 0
            continue
        if ch == "." and len(groups) <= 6:
            v4 = inet_pton4(text[token_start:])
            if v4 is not None:
                groups += [v4 >> 16, v4 & 0xFFFF]
                digits = 0
                break
        return None
    if digits:
        if len(groups) == 8:
            return None
        groups.append(value)
    if gap is not None:
        if len(groups) == 8:
            return None  # '::' would stand for no group
        groups[gap:gap] = [0] * (8 - len(groups))
    if len(groups) != 8:
        return None
    result = 0
    for group in groups:
        result = result << 16 | group
    return result


def inet_pton(af: int, text: str) -> int | None:
    """glibc ``inet_pton`` for ``af``: the address as an integer, or None."""
    return inet_pton6(text) if af == AF_INET6 else inet_pton4(text)


def parse_ip(text: str) -> tuple[int, int]:
    """Parse a literal IPv4 or IPv6 address (IPv6 without brackets), as
    inet_pton reads it.  Returns ``(af, value)``; raises ``ValueError``."""
    af = AF_INET6 if ":" in text else AF_INET
    value = inet_pton(af, text)
    if value is None:
        raise ValueError(f"illegal IP address string {text!r}")
    return af, value


def _ntop4(value: int) -> str:
    return f"{value >> 24}.{value >> 16 & 0xFF}.{value >> 8 & 0xFF}.{value & 0xFF}"


def _ntop6(value: int) -> str:
    """glibc ``inet_ntop6``: lowercase hex, the first longest run of two or
    more zero groups as ``::``, and ``::a.b.c.d`` / ``::ffff:a.b.c.d`` for
    IPv4-compatible and IPv4-mapped addresses."""
    words = [(value >> (112 - 16 * i)) & 0xFFFF for i in range(8)]
    best_base, best_len, cur_base, cur_len = -1, 0, -1, 0
    for i, word in enumerate([*words, 1]):  # a non-zero sentinel ends the last run
        if word == 0:
            if cur_base < 0:
                cur_base, cur_len = i, 1
            else:
                cur_len += 1
        elif cur_base >= 0:
            if cur_len > best_len:
                best_base, best_len = cur_base, cur_len
            cur_base = -1
    if best_len < 2:
        best_base = -1
    out = []
    for i, word in enumerate(words):
        if best_base <= i < best_base + best_len:
            if i == best_base:
                out.append(":")
            continue
        if i:
            out.append(":")
        if i == 6 and best_base == 0 and (best_len == 6 or (best_len == 5 and words[5] == 0xFFFF)):
            out.append(_ntop4(value & _V4_ALL))
            break
        out.append(f"{word:x}")
    if best_base >= 0 and best_base + best_len == 8:
        out.append(":")
    return "".join(out)


def format_ip(af: int, value: int) -> str:
    """The text of an address as glibc's ``inet_ntop`` prints it."""
    return _ntop4(value) if af == AF_INET else _ntop6(value)


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
