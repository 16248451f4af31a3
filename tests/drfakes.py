"""In-process stand-ins for the DR/TUN plane's transmitter and next-hop
resolver, shared by the tests that feed it crafted frames (no privileges)."""

from __future__ import annotations

from collections.abc import Callable

from forwarding import packet
from forwarding.neighbours import LinkInfo, NextHop, Resolver
from lvs.addr import parse_ip

VIP = "207.175.44.110"
VIP_INT = parse_ip(VIP)[1]
VIP6 = "2001:db8:ffff::110"
RS = ("172.16.0.2", "172.16.0.3")
RS_INT = tuple(parse_ip(r)[1] for r in RS)
RS6 = ("2001:db8:16::2", "2001:db8:16::3")
#: the director's own addresses on the real servers' side
DIP = "172.16.0.1"
DIP6 = "2001:db8:16::1"
#: the interface frames arrive on, and the one towards the real servers
IFX_IN = 2
IFX_OUT = 3
OUR_MAC = b"\x02\x00\x00\x00\x00\x03"


def rs_mac(addr: int) -> bytes:
    """A real server's MAC: its address's last byte after 02:00:00:00:01."""
    return b"\x02\x00\x00\x00\x01" + bytes((addr & 0xFF,))


class FakeTx:
    """Records frames; ``sender`` like TxSockets (the fast path's route)."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self.sent = 0
        self.errors = 0

    def send(self, ifindex: int, frame: bytes | bytearray) -> bool:
        self.frames.append((ifindex, bytes(frame)))
        self.sent += 1
        return True

    def sender(self, ifindex: int) -> Callable[[bytes], None]:
        frames = self.frames

        def send(frame: bytes) -> None:
            frames.append((ifindex, bytes(frame)))

        return send

    def count(self, sent: int, errors: int = 0) -> None:
        self.sent += sent
        self.errors += errors

    def close(self) -> None:
        pass


class PlainTx(FakeTx):
    """A transmitter without ``sender``: the fast path falls back to send()."""

    sender = None  # type: ignore[assignment]


class FailingTx(FakeTx):
    """Every send fails (a full socket buffer, a vanished interface)."""

    def send(self, ifindex: int, frame: bytes | bytearray) -> bool:
        self.errors += 1
        return False

    def sender(self, ifindex: int) -> Callable[[bytes], None]:
        def send(frame: bytes) -> None:
            raise BlockingIOError(11, "Resource temporarily unavailable")

        return send


class OneHopResolver(Resolver):
    """Every real server one hop away on :data:`IFX_OUT` (MTU 1500) at
    :func:`rs_mac`, reached from :data:`DIP`/:data:`DIP6`; one NextHop object
    per address, as the real cache keeps them."""

    def __init__(self) -> None:
        super().__init__(None)
        self.links = {IFX_IN: LinkInfo(IFX_IN, "in0", b"\x02\x00\x00\x00\x00\x02", 1500)}
        self.hops: dict[tuple[int, int], NextHop] = {}

    def lookup(self, af: int, addr: int, now: float) -> NextHop:
        nh = self.hops.get((af, addr))
        if nh is None:
            v6 = af == packet.AF_INET6
            etype = packet.ETH_P_IPV6 if v6 else packet.ETH_P_IP
            src = parse_ip(DIP6 if v6 else DIP)[1]
            l2 = packet.ethernet_header(rs_mac(addr), OUR_MAC, etype)
            nh = self.hops[(af, addr)] = NextHop(IFX_OUT, l2, src, 1500, 1e18, True)
        return nh

    def link(self, ifindex: int) -> LinkInfo | None:
        return self.links.get(ifindex)

    def close(self) -> None:
        pass
