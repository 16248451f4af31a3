"""``lvs-realserver``: the real-server side of VS/TUN for kernels without the
ipip, sit, ip6_tunnel, gre or fou modules.

A real server behind an LVS tunnel normally lets the kernel decapsulate
(``tunl0`` for IPIP, a ``fou`` port for GUE, a ``gre`` device for GRE) and
then answers the client directly from the VIP configured on ``lo``.  This
helper does the decapsulation in userspace:

* raw sockets for IPIP (protocol 4), IPv6-in-IP (41) and GRE (47), over IPv4
  and IPv6; a UDP socket for GUE on ``--gue-port`` (the director's
  ``--tun-port``);
* every inner packet whose destination is one of the ``--vip`` addresses is
  written to a TUN device (``IFF_TUN | IFF_NO_PI``), so the kernel receives it
  as if it had arrived on an interface, and the local service answers it
  through the normal routing table, straight to the client;
* anything else (other destinations, malformed headers, bad GRE/UDP
  checksums, GUE control messages) is counted and dropped.

The raw sockets take the tunnel packets before the kernel would answer
"protocol unreachable" (a raw socket that accepts a packet suppresses that).
The TUN device gets ``rp_filter=0`` (the client's address is not routed via
it) and disappears when the helper exits.  The rest of the real-server setup
(VIP on lo, arp_ignore=1, arp_announce=2, rp_filter) is in
``examples/realserver-setup.sh``.

    lvs-realserver --vip 207.175.44.110 [--vip 2001:db8::110] [--gue-port 6080]
                   [--tun-name lvstun0] [--no-ipip] [--no-gre] [--lifetime S]
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field

from . import packet
from .tun import decap_gue, decap_payload

log = logging.getLogger("lvs-realserver")

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
SOL_UDP = 17
UDP_NO_CHECK6_RX = 102  # linux/udp.h: accept zero-checksum UDP over IPv6


@dataclass
class Counters:
    received: int = 0
    delivered: int = 0
    not_vip: int = 0
    malformed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


def open_tun(name: str) -> tuple[int, str]:
    """Create a TUN device (no packet info header) and bring it up."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    ifr = struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI)
    res = fcntl.ioctl(fd, TUNSETIFF, ifr)
    real = res[:16].rstrip(b"\0").decode()
    subprocess.run(["ip", "link", "set", "dev", real, "up"], check=True, capture_output=True, timeout=10)
    for key in ("rp_filter", "accept_local"):
        path = f"/proc/sys/net/ipv4/conf/{real}/{key}"
        try:
            with open(path, "w", encoding="ascii") as fh:
                fh.write("0" if key == "rp_filter" else "1")
        except OSError:
            pass
    return fd, real


class RealServer:
    def __init__(
        self,
        vips: list[str],
        gue_port: int = 0,
        ipip: bool = True,
        gre: bool = True,
        tun_name: str = "lvstun%d",
    ) -> None:
        self.vips = {(packet.AF_INET6 if ":" in v else packet.AF_INET, _ip_int(v)) for v in vips}
        self.gue_port = gue_port
        self.counters = Counters()
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.tun_fd, self.tun_name = open_tun(tun_name)
        protos = []
        if ipip:
            protos += [packet.IPPROTO_IPIP, packet.IPPROTO_IPV6]
        if gre:
            protos.append(packet.IPPROTO_GRE)
        for fam in (socket.AF_INET, socket.AF_INET6):
            for proto in protos:
                try:
                    s = socket.socket(fam, socket.SOCK_RAW, proto)
                except OSError as exc:
                    log.warning("raw socket %s/%d: %s", fam, proto, exc)
                    continue
                s.setblocking(False)
                self._add(s, ("raw", fam, proto))
        if gue_port:
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            # the director's GUE over IPv6 carries a zero UDP checksum unless
            # --tun-csum (udp6_set_csum with nocheck); the kernel drops such
            # datagrams unless the socket allows them (RFC 6935, as fou does)
            s.setsockopt(SOL_UDP, UDP_NO_CHECK6_RX, 1)
            s.bind(("::", gue_port))
            s.setblocking(False)
            self._add(s, ("gue", socket.AF_INET6, 17))

    def _add(self, s: socket.socket, data: tuple[str, int, int]) -> None:
        self.socks.append(s)
        self.sel.register(s, selectors.EVENT_READ, data)

    def handle(self, kind: str, fam: int, proto: int, data: bytes) -> bool:
        """Decapsulate one received datagram and deliver it; False if dropped."""
        c = self.counters
        c.received += 1
        if kind == "gue":
            res = decap_gue(data)
        elif fam == socket.AF_INET:
            # IPv4 raw sockets see the outer header; the kernel has checked it
            if len(data) < 20:
                c.malformed += 1
                return False
            ihl = (data[0] & 0x0F) << 2
            res = decap_payload(proto, data[ihl:], packet.AF_INET)
        else:
            res = decap_payload(proto, data, packet.AF_INET6)
        if res is None:
            c.malformed += 1
            return False
        af, inner = res
        p = packet.parse_ip(inner)
        if p is None:
            c.malformed += 1
            return False
        if (af, p[packet.P_DADDR]) not in self.vips:
            c.not_vip += 1
            return False
        os.write(self.tun_fd, inner)
        c.delivered += 1
        name = kind if kind == "gue" else {4: "ipip", 41: "ipip6", 47: "gre"}.get(proto, str(proto))
        c.by_kind[name] = c.by_kind.get(name, 0) + 1
        return True

    def run(self, lifetime: float = 0.0) -> None:
        deadline = time.monotonic() + lifetime if lifetime else None
        stop = False

        def on_signal(*_: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        print(f"ready {self.tun_name}", flush=True)
        while not stop:
            if deadline is not None and time.monotonic() >= deadline:
                break
            for key, _ in self.sel.select(timeout=0.5):
                s = key.fileobj
                kind, fam, proto = key.data
                for _ in range(64):
                    try:
                        data = s.recv(65535)  # type: ignore[union-attr]
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    self.handle(kind, fam, proto, data)

    def close(self) -> None:
        for s in self.socks:
            self.sel.unregister(s)
            s.close()
        self.socks.clear()
        os.close(self.tun_fd)


def _ip_int(text: str) -> int:
    af = socket.AF_INET6 if ":" in text else socket.AF_INET
    return int.from_bytes(socket.inet_pton(af, text), "big")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lvs-realserver", description=__doc__.split("\n\n")[0])
    ap.add_argument("--vip", action="append", required=True, help="a virtual address served here (repeat)")
    ap.add_argument(
        "--gue-port", type=int, default=0, help="UDP port of GUE packets (the director's --tun-port)"
    )
    ap.add_argument("--no-ipip", action="store_true", help="do not take IPIP / IPv6-in-IP packets")
    ap.add_argument("--no-gre", action="store_true", help="do not take GRE packets")
    ap.add_argument("--tun-name", default="lvstun%d", help="TUN device name (default lvstun%%d)")
    ap.add_argument("--lifetime", type=float, default=0.0, help="exit after this many seconds (0: never)")
    ap.add_argument("--log-level", default="warning")
    a = ap.parse_args(argv)
    logging.basicConfig(level=getattr(logging, a.log_level.upper(), logging.WARNING))
    try:
        rs = RealServer(a.vip, a.gue_port, not a.no_ipip, not a.no_gre, a.tun_name)
    except OSError as exc:
        print(f"lvs-realserver: {exc}", file=sys.stderr)
        return 1
    try:
        rs.run(a.lifetime)
    finally:
        rs.close()
        c = rs.counters
        print(
            f"received {c.received} delivered {c.delivered} not-vip {c.not_vip} malformed {c.malformed} "
            f"{c.by_kind}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
