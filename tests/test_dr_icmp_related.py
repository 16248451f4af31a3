"""ICMP errors about DR/TUN connections (``ip_vs_in_icmp``/``_v6``) on
crafted frames: the director forwards an error whose quoted packet is a reply
of an existing connection (VIP -> client, looked up reversed) to that
connection's real server, by MAC rewrite (DR) or encapsulated (TUN), counts
it, and leaves everything else to the local stack.  The capture filter lets
exactly the ICMP errors to a served address through.

In-process, no privileges needed.
"""

from __future__ import annotations

import socket

import pytest

from forwarding import icmp_related, packet, tun
from forwarding.capture import Target, compile_filter, run_filter
from forwarding.dr import DirectPlane
from lvs.constants import CONN_F_DROUTE, CONN_F_TUNNEL, TUN_TYPE_GUE, TUN_TYPE_IPIP
from lvs.core import Director
from lvs.ctl import IPVS, DestSpec, ServiceSpec
from lvs.model import ServiceKey

from .drfakes import DIP, IFX_IN, IFX_OUT, OUR_MAC, RS, RS6, VIP, VIP6, OneHopResolver, rs_mac
from .drfakes import PlainTx as Tx
from .helpers import ip

scapy_all = pytest.importorskip("scapy.all")
Ether = scapy_all.Ether
IP = scapy_all.IP
IPv6 = scapy_all.IPv6
ICMP = scapy_all.ICMP
TCP = scapy_all.TCP
UDP = scapy_all.UDP
Raw = scapy_all.Raw
ICMPv6PacketTooBig = scapy_all.ICMPv6PacketTooBig
ICMPv6TimeExceeded = scapy_all.ICMPv6TimeExceeded
ICMPv6ParamProblem = scapy_all.ICMPv6ParamProblem
ICMPv6DestUnreach = scapy_all.ICMPv6DestUnreach
ICMPv6EchoRequest = scapy_all.ICMPv6EchoRequest

CLIENT = "10.0.0.2"
CLIENT6 = "2001:db8:10::2"
ROUTER = "10.0.0.254"
ROUTER6 = "2001:db8:10::fe"




def make_plane(af: int, fwd: int, tun_type: int = TUN_TYPE_IPIP) -> tuple[DirectPlane, Tx, IPVS]:
    ipvs = IPVS()
    vip = ip(VIP6 if af == socket.AF_INET6 else VIP)
    for proto in (6, 17):
        key = ServiceKey(af, proto, vip, 8080)
        ipvs.add_service(ServiceSpec(key, "rr"))
        for rs in RS6 if af == socket.AF_INET6 else RS:
            ipvs.add_dest(key, DestSpec(af, ip(rs), 8080, fwd=fwd, tun_type=tun_type, tun_port=6080))
    tx = Tx()
    plane = DirectPlane(
        Director(ipvs), lambda: 1.0, guard=False, capture=False, tx=tx,  # type: ignore[arg-type]
        resolver=OneHopResolver(),
    )  # fmt: skip
    plane.start()
    plane._t = 1.0
    return plane, tx, ipvs


def feed(plane: DirectPlane, frame: bytes) -> None:
    plane.handle_frame(frame, 0, len(frame), IFX_IN, 0, len(frame))


def client_packet(v6: bool, udp: bool = False, cport: int = 40000) -> bytes:
    l4 = UDP(sport=cport, dport=8080) if udp else TCP(sport=cport, dport=8080, flags="S")
    ip = IPv6(src=CLIENT6, dst=VIP6) if v6 else IP(src=CLIENT, dst=VIP)
    return bytes(Ether() / ip / l4 / Raw(b"hello"))


def reply_quote(v6: bool, udp: bool = False, cport: int = 40000, reverse: bool = True) -> bytes:
    """The start of a real server's reply (VIP -> client) as an ICMP error
    quotes it: the IP header and the first 8 transport bytes."""
    src, dst = (VIP6, CLIENT6) if v6 else (VIP, CLIENT)
    sport, dport = 8080, cport
    if not reverse:
        src, dst, sport, dport = dst, src, dport, sport
    ip = IPv6(src=src, dst=dst, hlim=60) if v6 else IP(src=src, dst=dst, ttl=60, flags="DF")
    l4 = UDP(sport=sport, dport=dport) if udp else TCP(sport=sport, dport=dport, flags="PA")
    raw = bytes(ip / l4 / Raw(b"x" * 100))
    return raw[: (40 if v6 else 20) + 8]


def icmp_frame(icmp, quote: bytes, v6: bool = False, ttl: int = 64) -> bytes:
    ip = IPv6(src=ROUTER6, dst=VIP6, hlim=ttl) if v6 else IP(src=ROUTER, dst=VIP, ttl=ttl)
    return bytes(Ether(src="02:00:00:00:00:99", dst="02:00:00:00:00:02") / ip / icmp / Raw(quote))


def the_conn(ipvs_plane: DirectPlane):
    conns = list(ipvs_plane.director.conns)
    assert len(conns) == 1
    return conns[0]


def related_count(plane: DirectPlane) -> int:
    return plane.stats.extra.get("icmp_related", 0)


# -----------------------------------------------------------------------------
# DR
# -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "icmp",
    [
        ICMP(type=3, code=4, nexthopmtu=1400),  # fragmentation needed
        ICMP(type=3, code=3),  # port unreachable
        ICMP(type=3, code=1),  # host unreachable
        ICMP(type=4, code=0),  # source quench
        ICMP(type=11, code=0),  # time exceeded
    ],
    ids=["frag-needed", "port-unreach", "host-unreach", "quench", "ttl"],
)
def test_dr_v4_error_goes_to_the_connections_real_server(icmp) -> None:
    plane, tx, _ = make_plane(socket.AF_INET, CONN_F_DROUTE)
    feed(plane, client_packet(False))
    cp = the_conn(plane)
    dest = cp.dest
    before = (dest.stats.inpkts, dest.stats.inbytes, cp.in_pkts)
    tx.frames.clear()
    frame = icmp_frame(icmp, reply_quote(False))
    feed(plane, frame)
    assert related_count(plane) == 1
    assert len(tx.frames) == 1
    ifx, out = tx.frames[0]
    assert ifx == IFX_OUT
    # MAC rewrite to the real server of the connection, IP packet unchanged but the TTL
    assert out[:6] == rs_mac(cp.daddr) and out[6:12] == OUR_MAC
    sent = IP(out[14:])
    orig = IP(frame[14:])
    assert sent.ttl == orig.ttl - 1
    assert bytes(sent[ICMP]) == bytes(orig[ICMP])
    assert packet.ipv4_header_ok(out, 14, 20)
    ln = len(frame) - 14
    assert (dest.stats.inpkts, dest.stats.inbytes, cp.in_pkts) == (
        before[0] + 1,
        before[1] + ln,
        before[2] + 1,
    )


def test_dr_v4_udp_connection() -> None:
    plane, tx, _ = make_plane(socket.AF_INET, CONN_F_DROUTE)
    feed(plane, client_packet(False, udp=True, cport=5353))
    cp = the_conn(plane)
    tx.frames.clear()
    feed(plane, icmp_frame(ICMP(type=3, code=4, nexthopmtu=1300), reply_quote(False, udp=True, cport=5353)))
    assert len(tx.frames) == 1 and tx.frames[0][1][:6] == rs_mac(cp.daddr)


@pytest.mark.parametrize(
    "icmp",
    [ICMP(type=8), ICMP(type=0), ICMP(type=12), ICMP(type=5, code=1)],
    ids=["echo", "echo-reply", "param-problem", "redirect"],
)
def test_v4_non_error_types_stay_local(icmp) -> None:
    """ip_vs_in_icmp relates only unreachable, quench and time exceeded
    (ICMPv4 parameter problem is not on its list)."""
    plane, tx, _ = make_plane(socket.AF_INET, CONN_F_DROUTE)
    feed(plane, client_packet(False))
    tx.frames.clear()
    notours = plane.stats.not_ours
    feed(plane, icmp_frame(icmp, reply_quote(False)))
    assert tx.frames == [] and related_count(plane) == 0
    assert plane.stats.not_ours == notours + 1


def test_errors_matching_no_connection_stay_local() -> None:
    plane, tx, _ = make_plane(socket.AF_INET, CONN_F_DROUTE)
    feed(plane, client_packet(False))
    tx.frames.clear()
    for quote in (
        reply_quote(False, cport=40001),  # another client port
        reply_quote(False, udp=True),  # another protocol
        reply_quote(False, reverse=False),  # client -> VIP: not a reply, not looked up so
    ):
        feed(plane, icmp_frame(ICMP(type=3, code=4, nexthopmtu=1400), quote))
    assert tx.frames == [] and related_count(plane) == 0
    assert plane.stats.not_ours == 3


def test_malformed_and_fragmented_quotes_stay_local() -> None:
    plane, tx, _ = make_plane(socket.AF_INET, CONN_F_DROUTE)
    feed(plane, client_packet(False))
    tx.frames.clear()
    q = bytearray(reply_quote(False))
    later = bytearray(q)
    later[6:8] = (0x2000 | 10).to_bytes(2, "big")  # a later fragment: no ports
    ipip = bytes(IP(src=DIP, dst=RS[0], proto=4)) + bytes(q)  # an error about our own IPIP packet
    for quote in (bytes(q[:20]), bytes(q[:22]), bytes(later), ipip, b"\x60" + bytes(q[1:])):
        feed(plane, icmp_frame(ICMP(type=11), quote))
    # the ICMP packet itself fragmented (the kernel reassembles first)
    frag = bytearray(icmp_frame(ICMP(type=11), bytes(q)))
    frag[14 + 6] = 0x20  # MF
    frag[14 + 10 : 14 + 12] = b"\x00\x00"
    frag[14 + 10 : 14 + 12] = packet.checksum(bytes(frag[14:34])).to_bytes(2, "big")
    feed(plane, bytes(frag))
    assert tx.frames == [] and related_count(plane) == 0


def test_bad_icmp_checksum_is_not_forwarded() -> None:
    plane, tx, _ = make_plane(socket.AF_INET, CONN_F_DROUTE)
    feed(plane, client_packet(False))
    tx.frames.clear()
    frame = bytearray(icmp_frame(ICMP(type=3, code=4, nexthopmtu=1400), reply_quote(False)))
    frame[-1] ^= 0xFF
    feed(plane, bytes(frame))
    assert tx.frames == [] and related_count(plane) == 0
    assert plane.stats.extra.get("icmp_bad_csum") == 1


def test_ttl_one_gets_no_error_about_the_error() -> None:
    """TTL 1: not forwarded, and no time exceeded is sent about an ICMP error."""
    plane, tx, _ = make_plane(socket.AF_INET, CONN_F_DROUTE)
    feed(plane, client_packet(False))
    tx.frames.clear()
    feed(plane, icmp_frame(ICMP(type=3, code=4, nexthopmtu=1400), reply_quote(False), ttl=1))
    assert tx.frames == []
    assert plane.stats.icmp_sent == 0


# -----------------------------------------------------------------------------
# TUN
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("tun_type", [TUN_TYPE_IPIP, TUN_TYPE_GUE], ids=["ipip", "gue"])
def test_tun_v4_error_is_encapsulated(tun_type: int) -> None:
    plane, tx, _ = make_plane(socket.AF_INET, CONN_F_TUNNEL, tun_type)
    feed(plane, client_packet(False))
    cp = the_conn(plane)
    tx.frames.clear()
    frame = icmp_frame(ICMP(type=3, code=4, nexthopmtu=1400), reply_quote(False))
    feed(plane, frame)
    assert related_count(plane) == 1 and len(tx.frames) == 1
    out = tx.frames[0][1]
    assert out[:6] == rs_mac(cp.daddr)
    outer = out[14:]
    assert outer[16:20] == cp.daddr.to_bytes(4, "big")
    res = tun.decapsulate(outer, packet.AF_INET, 6080)
    assert res is not None
    af, inner = res
    assert af == packet.AF_INET
    orig = bytes(IP(frame[14:]))
    assert inner[8] == orig[8] - 1  # TTL decremented
    assert inner[20:] == orig[20:]  # the ICMP message unchanged


# -----------------------------------------------------------------------------
# IPv6
# -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "icmp",
    [ICMPv6PacketTooBig(mtu=1280), ICMPv6TimeExceeded(), ICMPv6ParamProblem(), ICMPv6DestUnreach(code=4)],
    ids=["too-big", "ttl", "param-problem", "port-unreach"],
)
@pytest.mark.parametrize("fwd", [CONN_F_DROUTE, CONN_F_TUNNEL], ids=["dr", "ip6ip6"])
def test_v6_errors_are_forwarded(fwd: int, icmp) -> None:
    plane, tx, _ = make_plane(socket.AF_INET6, fwd)
    feed(plane, client_packet(True))
    cp = the_conn(plane)
    tx.frames.clear()
    frame = icmp_frame(icmp, reply_quote(True), v6=True)
    feed(plane, frame)
    assert related_count(plane) == 1 and len(tx.frames) == 1
    out = tx.frames[0][1]
    assert out[:6] == rs_mac(cp.daddr)
    orig = frame[14:]
    if fwd == CONN_F_DROUTE:
        sent = out[14:]
    else:
        assert out[14 + 6] == packet.IPPROTO_IPV6  # IPv6 in IPv6
        res = tun.decapsulate(out[14:], packet.AF_INET6)
        assert res is not None
        sent = res[1]
    assert sent[7] == orig[7] - 1
    assert sent[40:] == orig[40:]


def test_v6_informational_and_bad_checksum_stay_local() -> None:
    plane, tx, _ = make_plane(socket.AF_INET6, CONN_F_DROUTE)
    feed(plane, client_packet(True))
    tx.frames.clear()
    feed(plane, icmp_frame(ICMPv6EchoRequest(), reply_quote(True), v6=True))
    bad = bytearray(icmp_frame(ICMPv6PacketTooBig(mtu=1280), reply_quote(True), v6=True))
    bad[-1] ^= 0x55
    feed(plane, bytes(bad))
    assert tx.frames == [] and related_count(plane) == 0
    assert plane.stats.extra.get("icmp_bad_csum") == 1


def test_related_key_is_reversed() -> None:
    frame = icmp_frame(ICMP(type=11), reply_quote(False, cport=41234))
    p = packet.parse_frame(frame)
    assert p is not None
    rel = icmp_related.related(frame, p)
    assert rel is not None
    assert (rel.protocol, rel.caddr, rel.cport, rel.vaddr, rel.vport) == (
        6,
        ip(CLIENT),
        41234,
        ip(VIP),
        8080,
    )
    assert rel.csum_ok


# -----------------------------------------------------------------------------
# the capture filter
# -----------------------------------------------------------------------------
def test_filter_lets_icmp_errors_to_served_addresses_through() -> None:
    prog = compile_filter(
        [
            Target(socket.AF_INET, ip(VIP), 6, 8080),
            Target(socket.AF_INET6, ip(VIP6), 6, 8080),
        ]
    )
    q4, q6 = reply_quote(False), reply_quote(True)
    for t in (3, 4, 11):
        assert run_filter(prog, icmp_frame(ICMP(type=t), q4)) > 0, t
    for t in (0, 8, 12, 5):
        assert run_filter(prog, icmp_frame(ICMP(type=t), q4)) == 0, t
    # with IP options (the type is found through the header length)
    opt = bytes(Ether() / IP(src=ROUTER, dst=VIP, options=[scapy_all.IPOption_NOP()] * 4) / ICMP(type=11))
    assert run_filter(prog, opt) > 0
    other = bytes(Ether() / IP(src=ROUTER, dst="207.175.44.111") / ICMP(type=3) / Raw(q4))
    assert run_filter(prog, other) == 0
    for icmp6 in (ICMPv6PacketTooBig(), ICMPv6TimeExceeded(), ICMPv6ParamProblem(), ICMPv6DestUnreach()):
        assert run_filter(prog, icmp_frame(icmp6, q6, v6=True)) > 0
    assert run_filter(prog, icmp_frame(ICMPv6EchoRequest(), q6, v6=True)) == 0
    # the served traffic itself still passes, other ports still do not
    assert run_filter(prog, client_packet(False)) > 0
    assert run_filter(prog, client_packet(True)) > 0
    assert run_filter(prog, bytes(Ether() / IP(dst=VIP) / TCP(dport=8081))) == 0
