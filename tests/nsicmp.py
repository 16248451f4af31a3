"""Small programs for the ICMP-error namespace tests
(``ip netns exec NS python -m tests.nsicmp ...``), each bounded in time.

    tcp-hold HOST PORT SECONDS        connect, send a little, print {"port": P},
                                      keep the connection open SECONDS
    icmp-error DST QSRC QSPORT QDST QDPORT [--type T --code C --mtu M]
                                      send one ICMP (ICMPv6) error to DST quoting
                                      the start of a TCP packet QSRC:QSPORT ->
                                      QDST:QDPORT (IP header + 8 bytes)
    icmp-sniff SECONDS                print "ready", then the ICMP/ICMPv6 errors
                                      seen on any interface as JSON lines
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _csum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_hold(host: str, port: int, seconds: float) -> None:
    with socket.create_connection((host, port), timeout=5) as c:
        c.sendall(b"hold")
        print(json.dumps({"port": c.getsockname()[1]}), flush=True)
        deadline = time.monotonic() + seconds
        c.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                if not c.recv(4096):
                    break
            except TimeoutError:
                continue


def quote(qsrc: str, qsport: int, qdst: str, qdport: int) -> bytes:
    """The start of a TCP segment (flags PA, seq 1) as an ICMP error quotes it."""
    tcp8 = struct.pack("!HHI", qsport, qdport, 1)
    if _family(qsrc) == socket.AF_INET6:
        head = struct.pack("!IHBB", 6 << 28, 20, 6, 60)
        return head + socket.inet_pton(socket.AF_INET6, qsrc) + socket.inet_pton(socket.AF_INET6, qdst) + tcp8
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0x4000, 60, 6, 0,
        socket.inet_aton(qsrc), socket.inet_aton(qdst),
    )  # fmt: skip
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return ip + tcp8


def icmp_error(dst: str, q: bytes, itype: int, code: int, mtu: int) -> None:
    if _family(dst) == socket.AF_INET6:
        # the kernel fills the ICMPv6 checksum of a raw ICMPv6 socket
        msg = struct.pack("!BBHI", itype, code, 0, mtu) + q
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    else:
        rest = struct.pack("!HH", 0, mtu) if (itype, code) == (3, 4) else b"\0\0\0\0"
        msg = struct.pack("!BBH", itype, code, 0) + rest + q
        msg = msg[:2] + struct.pack("!H", _csum(msg)) + msg[4:]
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with s:
        s.sendto(msg, (dst, 0))


def icmp_sniff(seconds: float) -> None:
    """ICMP errors on every interface of the namespace (Ethernet and TUN)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.settimeout(0.2)
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data, addr = s.recvfrom(65535)
        except TimeoutError:
            continue
        ifname, _proto, pkttype, hatype = addr[0], addr[1], addr[2], addr[3]
        if pkttype == socket.PACKET_OUTGOING:
            continue
        ip = data[14:] if hatype == 1 else data  # ARPHRD_ETHER; a TUN device has no link header
        if len(ip) < 48:
            continue
        if ip[0] >> 4 == 4 and ip[9] == 1:
            ihl = (ip[0] & 0x0F) << 2
            t, c = ip[ihl], ip[ihl + 1]
            if t not in (3, 4, 11):
                continue
            src, dst = (
                socket.inet_ntop(socket.AF_INET, ip[12:16]),
                socket.inet_ntop(socket.AF_INET, ip[16:20]),
            )
            q = ip[ihl + 8 :]
        elif ip[0] >> 4 == 6 and ip[6] == 58 and ip[40] < 128:
            t, c = ip[40], ip[41]
            src = socket.inet_ntop(socket.AF_INET6, ip[8:24])
            dst = socket.inet_ntop(socket.AF_INET6, ip[24:40])
            q = ip[48:]
        else:
            continue
        rec = {"if": ifname, "type": t, "code": c, "src": src, "dst": dst, "quote": q.hex()}
        print(json.dumps(rec), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nsicmp")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("tcp-hold")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("seconds", type=float)
    p = sub.add_parser("icmp-error")
    for name in ("dst", "qsrc", "qsport", "qdst", "qdport"):
        p.add_argument(name)
    p.add_argument("--type", type=int, default=3)
    p.add_argument("--code", type=int, default=4)
    p.add_argument("--mtu", type=int, default=1280)
    p = sub.add_parser("icmp-sniff")
    p.add_argument("seconds", type=float)
    a = ap.parse_args(argv)
    if a.cmd == "tcp-hold":
        tcp_hold(a.host, a.port, min(a.seconds, 60.0))
    elif a.cmd == "icmp-error":
        q = quote(a.qsrc, int(a.qsport), a.qdst, int(a.qdport))
        icmp_error(a.dst, q, a.type, a.code, a.mtu)
    else:
        icmp_sniff(min(a.seconds, 60.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
