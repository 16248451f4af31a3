"""DNS_CHECK (check_dns.c): one query (``type``, default SOA, for ``name``,
default ".") over UDP with recursion desired; up when an answer with the
query's id comes back with RCODE 0 (NOERROR) within connect_timeout.
Answers with another id, or queries, are ignored as keepalived does."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from typing import Any

from .base import Outcome, describe_error, make_socket, target

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28, "RRSIG": 46, "DNSKEY": 48}
RCODES = {1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.strip(".").split("."):
        if label:
            raw = label.encode("idna")
            out += bytes([len(raw)]) + raw
    return out + b"\x00"


def build_query(ident: int, name: str, qtype: str) -> bytes:
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    return header + encode_name(name) + struct.pack("!HH", TYPES[qtype], 1)


async def probe(chk: Any) -> Outcome:
    _fam, host, port = target(chk)
    opts = chk.conf.options
    ident = int.from_bytes(os.urandom(2), "big")
    query = build_query(ident, opts.get("name", "."), opts.get("type", "SOA"))
    loop = asyncio.get_running_loop()
    sock = make_socket(chk, socket.SOCK_DGRAM)
    deadline = loop.time() + chk.connect_timeout
    try:
        try:
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, query)
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    return Outcome(False, f"no answer within {chk.connect_timeout:g} s")
                async with asyncio.timeout(left):
                    data = await loop.sock_recv(sock, 4096)
                if len(data) < 12:
                    continue
                rid, flags = struct.unpack("!HH", data[:4])
                if rid != ident or not flags & 0x8000:
                    continue
                rcode = flags & 0xF
                if rcode:
                    return Outcome(
                        False, f"read error occurred. (rcode = {rcode} {RCODES.get(rcode, '')})".strip()
                    )
                return Outcome(True)
        except TimeoutError:
            return Outcome(False, f"no answer within {chk.connect_timeout:g} s")
        except ConnectionRefusedError:
            return Outcome(False, "ICMP port unreachable")
        except OSError as exc:
            return Outcome(False, describe_error(exc))
    finally:
        sock.close()
