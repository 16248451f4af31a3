"""PING_CHECK (check_ping.c): one ICMP (or ICMPv6) echo request; up when
the matching echo reply comes back within connect_timeout.  A raw socket
(needs CAP_NET_RAW), or the unprivileged ICMP datagram socket where
net.ipv4.ping_group_range allows it."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from typing import Any

from .base import Outcome, describe_error, make_socket, target

ICMP_ECHO, ICMP_ECHOREPLY = 8, 0
ICMP6_ECHO, ICMP6_ECHOREPLY = 128, 129


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(v6: bool, ident: int, seq: int, payload: bytes) -> bytes:
    kind = ICMP6_ECHO if v6 else ICMP_ECHO
    head = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if v6:  # the kernel fills the ICMPv6 checksum
        return head + payload
    csum = checksum(head + payload)
    return struct.pack("!BBHHH", kind, 0, csum, ident, seq) + payload


def _open(chk: Any, v6: bool) -> tuple[socket.socket, bool]:
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    try:
        return make_socket(chk, socket.SOCK_RAW, proto), True
    except PermissionError:
        return make_socket(chk, socket.SOCK_DGRAM, proto), False


async def probe(chk: Any) -> Outcome:
    fam, host, _ = target(chk)
    v6 = fam == socket.AF_INET6
    try:
        sock, raw = _open(chk, v6)
    except OSError as exc:
        return Outcome(False, f"cannot open an ICMP socket: {describe_error(exc)}")
    loop = asyncio.get_running_loop()
    ident = os.getpid() & 0xFFFF
    seq = int.from_bytes(os.urandom(2), "big")
    payload = os.urandom(16)
    deadline = loop.time() + chk.connect_timeout
    try:
        await loop.sock_sendto(sock, echo_request(v6, ident, seq, payload), (host, 0))
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return Outcome(False, f"no echo reply within {chk.connect_timeout:g} s")
            async with asyncio.timeout(left):
                data, peer = await loop.sock_recvfrom(sock, 2048)
            if peer[0] != host:
                continue
            if raw and not v6:
                data = data[(data[0] & 0x0F) * 4 :]
            if len(data) < 8:
                continue
            kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[:8])
            if kind != (ICMP6_ECHOREPLY if v6 else ICMP_ECHOREPLY) or rseq != seq or data[8:] != payload:
                continue
            if raw and rid != ident:
                continue
            return Outcome(True)
    except TimeoutError:
        return Outcome(False, f"no echo reply within {chk.connect_timeout:g} s")
    except OSError as exc:
        return Outcome(False, describe_error(exc))
    finally:
        sock.close()
