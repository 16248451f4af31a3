"""The SIP persistence engine (``--pe sip``): templates keyed by the Call-ID
(net/netfilter/ipvs/ip_vs_pe_sip.c, with the header parser of
net/netfilter/nf_conntrack_sip.c it calls).  No I/O: the data planes hand
the core the UDP payload, the core asks :func:`fill_param` for the PE data.

What the kernel does, and pylvs with it:

``fill_param`` (``ip_vs_sip_fill_param``), run by ``ip_vs_sched_persist``
    for a *persistent* service whose PE is sip, only when the packet has no
    connection entry yet (``ip_vs_in`` looks entries up first, so a flow
    that has one keeps its real server whatever Call-ID it carries).  It
    fails for anything but UDP, for a datagram without data, and when
    ``get_callid`` finds no usable Call-ID; ``ip_vs_sched_persist`` then
    returns with ``*ignored = -1`` and the packet is **dropped** (no ICMP,
    no fall-back to address persistence: the "fallback" comment in
    ip_vs_pe_sip.c dates from when fill_param returned void).  A TCP
    persistent service with ``--pe sip`` therefore drops every new
    connection, as in the kernel.

``get_callid``
    ``ct_sip_get_header(SIP_HDR_CALL_ID)``: a header line ``Call-ID`` or its
    compact form ``i`` (which must not be followed by a letter), compared
    case-insensitively, at the start of a line, i.e. right after a CR, LF or
    CRLF; optional spaces (not tabs) and continuation lines around the
    colon.  The value is a ``callid_len`` token: word characters
    (``iswordc``: letters and digits, Latin-1 letters too as the kernel's
    ctype has them, and ``!"%()*+,-./:<>?[\\]_`{}~``), optionally ``@`` and
    a second word.  ``get_callid`` then requires at most 255 bytes
    (``IP_VS_PEDATA_MAXLEN``) and a CR or LF right after the token (so
    ``Call-ID: abc;x`` or ``Call-ID: a b`` fail, and a datagram that ends
    with the value fails).  A header whose value is not a token (empty,
    starting with a tab or a ``;``) is skipped and the search goes on
    further down.  A header name followed by anything but spaces and a
    colon ends the search (no Call-ID).  There is no check that the
    datagram is SIP at all: any payload with such a line has a Call-ID.

    Two kernel quirks kept as they are: the search starts ``dataoff`` bytes
    into the payload, where ``dataoff`` is the payload's offset in the IP
    packet (IP header + 8: 28 for IPv4 without options, 48 for IPv6 without
    extension headers), because ``ip_vs_sip_fill_param`` passes that offset
    along with a pointer already at the payload; a line only counts once a
    line terminator at or after that point has been seen, so the start line
    (and a Call-ID within the first ``dataoff`` bytes) is never matched.
    And when a header is skipped, the next search starts at
    ``dataoff + matchoff`` (``get_callid`` adds the offset instead of
    setting it).

``ct_match`` (``ip_vs_sip_ct_match``) and ``hashkey_raw``
    A template matches when family, masked client address, virtual address
    (the fwmark for IPPROTO_IP), virtual port and protocol are equal, it is
    a template, and its PE data equals the Call-ID byte for byte.  The
    client address is still compared: with the default mask two clients
    share a Call-ID's template only if they share an address (e.g. one SIP
    proxy sending from several ports); ``-M 0.0.0.0`` makes the Call-ID
    alone decide.  Templates are hashed by the Call-ID only
    (``jhash(pe_data)``); pylvs hashes them under :func:`pe_key`, a negative
    key no client endpoint can have.

Only templates carry the PE data: ``ip_vs_sched_persist`` fills a fresh
``ip_vs_conn_param`` (no PE) for the connection entry it creates under the
template, so ``/proc/net/ip_vs_conn`` and ``ipvsadm -L -c --persistent-conn``
show ``sip <Call-ID>`` on the template lines only.
"""

from __future__ import annotations

import zlib

from .constants import AF_INET6, IPPROTO_UDP

#: the PE's name, as ``--pe`` takes it and the listings print it
NAME = "sip"
#: IP_VS_PEDATA_MAXLEN: a longer Call-ID is refused
PEDATA_MAXLEN = 255
#: sizeof(struct udphdr)
UDP_HLEN = 8

_CR = 13
_LF = 10
_SP = 32
_TAB = 9


def _kernel_isalpha(c: int) -> bool:
    """``isalpha`` of the kernel's lib/ctype.c: ASCII letters and the
    Latin-1 letters 0xC0-0xFF except 0xD7 and 0xF7."""
    return 65 <= c <= 90 or 97 <= c <= 122 or (c >= 0xC0 and c != 0xD7 and c != 0xF7)


def _make_wordc() -> bytes:
    ok = bytearray(256)
    for c in range(256):
        if (
            _kernel_isalpha(c)
            or 48 <= c <= 57
            or c in b'!"%:<>?_`{}~'
            or 0x28 <= c <= 0x2F  # ( ) * + , - . /
            or 0x5B <= c <= 0x5D  # [ \ ]
        ):
            ok[c] = 1
    return bytes(ok)


#: iswordc() of nf_conntrack_sip.c, as a 256-entry table
_WORDC = _make_wordc()
_ALPHA = bytes(1 if _kernel_isalpha(c) else 0 for c in range(256))


def _word_len(d: bytes, i: int, limit: int) -> int:
    n = 0
    while i < limit and _WORDC[d[i]]:
        i += 1
        n += 1
    return n


def _callid_len(d: bytes, i: int, limit: int) -> int:
    """``callid_len``: a word, optionally ``@`` and a second (non-empty) word."""
    n = _word_len(d, i, limit)
    i += n
    if not n or i == limit or d[i] != 0x40:  # '@'
        return n
    i += 1
    n += 1
    domain = _word_len(d, i, limit)
    if not domain:
        return 0
    return n + domain


def _follow_continuation(d: bytes, i: int, limit: int) -> int:
    """``sip_follow_continuation``: past the line terminator at ``i``; the
    offset of the first non-blank character of a continuation line, or -1
    when the next line is not one."""
    i += 1
    if i >= limit:
        return -1
    if d[i - 1] == _CR and d[i] == _LF:
        i += 1
        if i >= limit:
            return -1
    if d[i] != _SP and d[i] != _TAB:
        return -1
    while i < limit and (d[i] == _SP or d[i] == _TAB):
        i += 1
    return i


def _skip_whitespace(d: bytes, i: int, limit: int) -> int:
    """``sip_skip_whitespace``: spaces and continuation lines (-1: the line
    ends without one).  As in the kernel, the loop's increment also steps
    over the first character after a continuation."""
    while i < limit:
        c = d[i]
        if c != _SP:
            if c != _CR and c != _LF:
                break
            i = _follow_continuation(d, i, limit)
            if i < 0:
                return -1
        i += 1
    return i


def _get_header(d: bytes, dataoff: int, limit: int) -> tuple[int, int, int]:
    """``ct_sip_get_header(..., SIP_HDR_CALL_ID, ...)`` on ``d[:limit]`` from
    ``dataoff``: ``(1, matchoff, matchlen)`` found, ``(0, 0, 0)`` none,
    ``(-1, matchoff, 0)`` a Call-ID header whose value is not a token."""
    i = dataoff
    while i < limit:
        c = d[i]
        if c != _CR and c != _LF:
            i += 1
            continue
        # beginning of a line
        i += 1
        if i >= limit:
            break
        if d[i - 1] == _CR and d[i] == _LF:
            i += 1
            if i >= limit:
                break
        c = d[i]
        if c in (_SP, _TAB):  # continuation line
            i += 1
            continue
        if limit - i >= 7 and d[i : i + 7].lower() == b"call-id":
            i += 7
        elif limit - i >= 2 and (c == 0x69 or c == 0x49) and not _ALPHA[d[i + 1]]:  # 'i' / 'I'
            i += 1
        else:
            i += 1
            continue
        # the colon, with optional blanks around it
        i = _skip_whitespace(d, i, limit)
        if i < 0 or i >= limit or d[i] != 0x3A:  # ':'
            break
        i += 1
        if i >= limit:
            break
        i = _skip_whitespace(d, i, limit)
        if i < 0:
            break
        n = _callid_len(d, i, limit)
        if not n:
            return -1, i, 0
        return 1, i, n
    return 0, 0, 0


def get_callid(payload: bytes, dataoff: int) -> bytes | None:
    """The Call-ID of a UDP ``payload`` as ``get_callid`` finds it (rules in
    the module docstring), or None.  ``dataoff`` is the payload's offset in
    its IP packet (IP header length + 8), where the kernel starts looking."""
    datalen = len(payload)
    while True:
        ret, matchoff, matchlen = _get_header(payload, dataoff, datalen)
        if ret > 0:
            break
        if ret == 0 or matchoff <= 0:
            return None
        dataoff += matchoff
    if matchlen > PEDATA_MAXLEN:
        return None
    end = matchoff + matchlen
    if end >= datalen:  # "SIP headers are always followed by a line terminator"
        return None
    if payload[end] != _CR and payload[end] != _LF:
        return None
    return bytes(payload[matchoff:end])


def fill_param(
    af: int, protocol: int, payload: bytes | bytearray | memoryview | None, l4_offset: int = 0
) -> bytes | None:
    """``ip_vs_sip_fill_param``: the PE data (Call-ID) of a packet, or None
    when the kernel's fill_param fails (then the packet is dropped).

    ``payload`` is the UDP payload (None: no data); ``l4_offset`` the offset
    of the UDP header in the IP packet, 0 for the family's plain header
    (20 for IPv4, 40 for IPv6): the NAT relay, which gets datagrams from a
    socket, cannot know of IP options or extension headers.
    """
    if protocol != IPPROTO_UDP:
        return None
    if not payload:  # dataoff >= skb->len: no data
        return None
    if not l4_offset:
        l4_offset = 40 if af == AF_INET6 else 20
    data = payload if isinstance(payload, bytes) else bytes(payload)
    return get_callid(data, l4_offset + UDP_HLEN)


def pe_key(pe_data: bytes) -> int:
    """The connection-table key of a template with PE data: derived from the
    data alone, like ``ip_vs_sip_hashkey_raw`` (``jhash(pe_data)``), and
    negative, so no client endpoint key (:func:`lvs.conn.client_key`, never
    negative) can equal it."""
    return ~zlib.crc32(pe_data)


__all__ = ["NAME", "PEDATA_MAXLEN", "fill_param", "get_callid", "pe_key"]
