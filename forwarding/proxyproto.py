"""PROXY protocol headers (HAProxy's proxy-protocol.txt, versions 1 and 2).

A NAT proxy hides the client: the real server sees a connection from the
director.  A real server configured for it gets, before any client byte, a
header naming the client and the virtual address the client used.  Version
1 is one text line (TCP only); version 2 is binary and also covers UDP, where
every datagram carries the header.

Configuration: per real server endpoint, ``RIP:PORT=v1`` or ``RIP:PORT=v2``
(``[v6]:PORT=v2`` for IPv6), see :func:`parse_spec`.
"""

from __future__ import annotations

import socket
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_CMD_PROXY = 0x21  # version 2, PROXY
_FAM = {
    (socket.AF_INET, socket.SOCK_STREAM): 0x11,
    (socket.AF_INET, socket.SOCK_DGRAM): 0x12,
    (socket.AF_INET6, socket.SOCK_STREAM): 0x21,
    (socket.AF_INET6, socket.SOCK_DGRAM): 0x22,
}


def header_v1(af: int, src: str, sport: int, dst: str, dport: int) -> bytes:
    """``PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n``."""
    fam = "TCP4" if af == socket.AF_INET else "TCP6"
    return f"PROXY {fam} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def header_v2(af: int, kind: int, src: str, sport: int, dst: str, dport: int) -> bytes:
    """The binary header: signature, version/command, family/transport,
    length, then source and destination addresses and ports."""
    body = socket.inet_pton(af, src) + socket.inet_pton(af, dst) + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + struct.pack("!BBH", _V2_CMD_PROXY, _FAM[(af, kind)], len(body)) + body


def header(version: int, af: int, kind: int, src: str, sport: int, dst: str, dport: int) -> bytes:
    """The header of ``version`` (1 or 2) for a client ``src:sport`` that
    reached ``dst:dport``; version 1 has no UDP form (v2 is used then)."""
    if version == 1 and kind == socket.SOCK_STREAM:
        return header_v1(af, src, sport, dst, dport)
    return header_v2(af, kind, src, sport, dst, dport)


def parse_v1(data: bytes) -> tuple[str, int, str, int, int] | None:
    """Parse a v1 line at the start of ``data``: (src, sport, dst, dport, length)."""
    end = data.find(b"\r\n")
    if not data.startswith(b"PROXY ") or end < 0:
        return None
    parts = data[:end].decode("ascii").split(" ")
    if len(parts) != 6:
        return None
    return parts[2], int(parts[4]), parts[3], int(parts[5]), end + 2


def parse_v2(data: bytes) -> tuple[str, int, str, int, int] | None:
    """Parse a v2 header at the start of ``data``: (src, sport, dst, dport, length)."""
    if not data.startswith(V2_SIGNATURE) or len(data) < 16:
        return None
    _cmd, fam, length = struct.unpack_from("!BBH", data, 12)
    af = socket.AF_INET if fam >> 4 == 1 else socket.AF_INET6
    n = 4 if af == socket.AF_INET else 16
    body = data[16 : 16 + length]
    src = socket.inet_ntop(af, body[:n])
    dst = socket.inet_ntop(af, body[n : 2 * n])
    sport, dport = struct.unpack_from("!HH", body, 2 * n)
    return src, sport, dst, dport, 16 + length


def parse_spec(text: str) -> tuple[str, int, int]:
    """``RIP:PORT=v1|v2`` (or ``[v6]:PORT=v2``) -> (host, port, version).

    Raises ValueError for anything else.
    """
    endpoint, sep, ver = text.rpartition("=")
    if not sep or ver.lower() not in ("v1", "v2", "1", "2"):
        raise ValueError(f"bad PROXY protocol spec {text!r}: want RIP:PORT=v1|v2")
    version = int(ver.lower().lstrip("v"))
    if endpoint.startswith("["):
        host, _, port = endpoint[1:].partition("]:")
        af = socket.AF_INET6
    else:
        host, _, port = endpoint.rpartition(":")
        af = socket.AF_INET
    try:
        host = socket.inet_ntop(af, socket.inet_pton(af, host))
        nport = int(port)
    except (OSError, ValueError):
        raise ValueError(f"bad PROXY protocol endpoint {endpoint!r}") from None
    if not 0 < nport < 65536:
        raise ValueError(f"bad PROXY protocol port in {endpoint!r}")
    return host, nport, version


def parse_specs(texts: list[str]) -> dict[tuple[str, int], int]:
    """Several ``RIP:PORT=v1|v2`` texts (e.g. repeated ``--proxy-protocol``
    options) as the ``proxy_protocol`` mapping of :class:`forwarding.nat.NatPlane`."""
    out: dict[tuple[str, int], int] = {}
    for text in texts:
        host, port, version = parse_spec(text)
        out[(host, port)] = version
    return out
