"""Malformed frames never crash the DR/TUN engine or poison the connection
table (issue 5, point 3), plus exact checks of the packet layer against scapy.

The engine is driven in-process: a DirectPlane without capture socket or
nftables, a fake transmitter and a fixed next hop, so these tests need no
privileges.
"""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwarding import packet, tun
from forwarding.capture import Target, compile_filter, run_filter
from forwarding.dr import DirectPlane
from lvs.addr import parse_ip
from lvs.constants import CONN_F_DROUTE, CONN_F_TEMPLATE, CONN_F_TUNNEL, TUN_TYPE_GRE, TUN_TYPE_GUE
from lvs.core import Director
from lvs.ctl import IPVS, DestSpec, ServiceSpec
from lvs.model import ServiceKey

from .drfakes import RS, RS_INT, VIP, VIP_INT, FakeTx, OneHopResolver, rs_mac

scapy_all = pytest.importorskip("scapy.all")
Ether = scapy_all.Ether
IP = scapy_all.IP
IPv6 = scapy_all.IPv6
TCP = scapy_all.TCP
UDP = scapy_all.UDP


def make_plane(fwd: int = CONN_F_DROUTE, proto: int = 6, tun_type: int = 0) -> tuple[DirectPlane, FakeTx]:
    ipvs = IPVS()
    key = ServiceKey(socket.AF_INET, proto, VIP_INT, 8080)
    ipvs.add_service(ServiceSpec(key, "rr"))
    for rs in RS:
        ipvs.add_dest(
            key, DestSpec(socket.AF_INET, parse_ip(rs)[1], 8080, fwd=fwd, tun_type=tun_type, tun_port=6080)
        )
    director = Director(ipvs)
    tx = FakeTx()
    plane = DirectPlane(director, lambda: 1.0, guard=False, capture=False, tx=tx, resolver=OneHopResolver())  # type: ignore[arg-type]
    plane.start()
    plane._t = 1.0
    return plane, tx


def feed(plane: DirectPlane, frame: bytes) -> None:
    plane.handle_frame(memoryview(frame), 0, len(frame), 2, 0, len(frame))


def check_table(plane: DirectPlane) -> None:
    """Every entry is a well-formed entry of the one service; the dest
    counters agree with the table."""
    conns = [c for c in plane.director.conns if not c.flags & CONN_F_TEMPLATE]
    for c in conns:
        assert c.af == socket.AF_INET
        assert c.protocol in (6, 17)
        assert c.vaddr == VIP_INT and c.vport == 8080
        assert 0 <= c.cport <= 0xFFFF
    dests = [d for svc in plane.ipvs for d in svc.destinations]
    assert sum(d.activeconns + d.inactconns for d in dests) == len(conns)


def syn(**kw: object) -> bytes:
    ip_kw = {"src": "10.0.0.2", "dst": VIP}
    ip_kw.update(
        {k: v for k, v in kw.items() if k in ("ttl", "flags", "frag", "options", "ihl", "len", "tos")}
    )
    return bytes(Ether() / IP(**ip_kw) / TCP(sport=int(kw.get("sport", 40000)), dport=8080, flags="S"))


# -----------------------------------------------------------------------------
# exact behaviour
# -----------------------------------------------------------------------------
def test_dr_rewrites_mac_and_ttl_only() -> None:
    plane, tx = make_plane()
    f = syn(ttl=64)
    feed(plane, f)
    assert len(tx.frames) == 1
    ifx, out = tx.frames[0]
    assert ifx == 3
    assert out[:6] in (rs_mac(RS_INT[0]), rs_mac(RS_INT[1]))
    a, b = IP(f[14:]), IP(out[14:])
    assert b.ttl == a.ttl - 1
    assert (b.src, b.dst, bytes(b.payload)) == (a.src, a.dst, bytes(a.payload))
    chk = b.chksum
    del b.chksum
    assert IP(bytes(b)).chksum == chk
    assert len(plane.director.conns) == 1


def test_rr_alternates_over_clients() -> None:
    plane, tx = make_plane()
    for i in range(10):
        feed(plane, syn(sport=30000 + i))
    dsts = [IP(f[14:]).dst for _, f in tx.frames]
    assert dsts == [VIP] * 10  # DR leaves the IP header alone
    used = [c.daddr for c in plane.director.conns]
    assert sorted(used) == sorted([parse_ip(RS[0])[1]] * 5 + [parse_ip(RS[1])[1]] * 5)


def test_ttl_one_is_not_forwarded() -> None:
    plane, tx = make_plane()
    feed(plane, syn(ttl=1))
    assert plane.stats.ttl_exceeded == 1
    # the answer is an ICMP time exceeded back out of the ingress interface
    assert [ifx for ifx, _ in tx.frames] == [2]
    icmp = Ether(tx.frames[0][1])
    assert icmp[IP].proto == 1 and icmp[IP].payload.type == 11


def test_fragments_follow_the_first() -> None:
    plane, tx = make_plane(proto=17)
    pkt = IP(src="10.0.0.2", dst=VIP) / UDP(sport=5000, dport=8080) / (b"x" * 3000)
    frags = scapy_all.fragment(pkt, fragsize=1000)
    # later fragments first: they wait for the first
    for fr in frags[1:]:
        feed(plane, bytes(Ether() / fr))
    assert tx.frames == []
    feed(plane, bytes(Ether() / frags[0]))
    assert len(tx.frames) == len(frags)
    assert len(plane.director.conns) == 1
    back = scapy_all.defragment([IP(f[14:]) for _, f in tx.frames])
    assert bytes(back[0][UDP].payload) == b"x" * 3000


def test_tunnel_ipip_headers() -> None:
    plane, tx = make_plane(fwd=CONN_F_TUNNEL)
    f = syn(ttl=64, tos=0x2B, flags="DF")
    feed(plane, f)
    out = IP(tx.frames[0][1][14:])
    assert out.proto == 4 and out.dst in RS and out.src == "172.16.0.1"
    assert out.ttl == 63 and out.tos == 0x2A  # ECN CE (3) -> ECT(0) outside
    assert out.flags.DF
    inner = IP(bytes(out.payload))
    assert inner.dst == VIP and inner.ttl == 63


@pytest.mark.parametrize("flags", [0, 1])
def test_gue_and_gre_roundtrip(flags: int) -> None:
    inner = bytes(IP(src="10.0.0.2", dst=VIP, ttl=9) / UDP(sport=1, dport=8080) / b"hello")
    sa, da = parse_ip("172.16.0.1")[1], parse_ip(RS[0])[1]
    for tt in (TUN_TYPE_GUE, TUN_TYPE_GRE, 0):
        outer = tun.encapsulate(inner, packet.AF_INET, packet.AF_INET, sa, da, tt, 6080, flags, 12345)
        o = IP(outer)
        if tt == TUN_TYPE_GUE:
            assert o.proto == 17 and o[UDP].dport == 6080 and 32768 <= o[UDP].sport < 60999
            assert (o[UDP].chksum != 0) == bool(flags)
            if flags:
                c = o[UDP].chksum
                del o[UDP].chksum
                assert IP(bytes(o))[UDP].chksum == c
        elif tt == TUN_TYPE_GRE:
            assert o.proto == 47 and len(o.payload) == len(inner) + (8 if flags else 4)
        assert tun.decapsulate(outer, packet.AF_INET, 6080) == (packet.AF_INET, inner)
    # mixed families: IPv4 inside IPv6
    outer6 = tun.encapsulate(inner, packet.AF_INET, packet.AF_INET6, 1, 2, TUN_TYPE_GUE, 6080, flags, 1)
    assert IPv6(outer6).nh == 17 and IPv6(outer6).hlim == 9
    assert tun.decapsulate(outer6, packet.AF_INET6, 6080) == (packet.AF_INET, inner)


def test_filter_matches_only_served() -> None:
    prog = compile_filter(
        [Target(socket.AF_INET, VIP_INT, 6, 8080), Target(socket.AF_INET6, 0x20010DB8 << 96 | 5, 17, 0)]
    )
    assert run_filter(prog, syn()) > 0
    assert run_filter(prog, syn(), ifindex=1) == 0  # lo
    assert run_filter(prog, syn(), pkttype=3) == 0  # not for this host
    other = bytes(Ether() / IP(src="10.0.0.2", dst=VIP) / TCP(dport=8081))
    assert run_filter(prog, other) == 0
    opts = bytes(Ether() / IP(src="10.0.0.2", dst=VIP, options=[scapy_all.IPOption_RR()]) / TCP(dport=8080))
    assert run_filter(prog, opts) > 0
    v6 = bytes(Ether() / IPv6(dst="2001:db8::5") / UDP(dport=9))
    assert run_filter(prog, v6) > 0
    assert run_filter(prog, bytes(Ether() / IPv6(dst="2001:db8::6") / UDP(dport=9))) == 0
    assert run_filter(prog, b"\x00" * 10) == 0


# -----------------------------------------------------------------------------
# hypothesis: garbage in, nothing out of the ordinary
# -----------------------------------------------------------------------------
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    plane, _ = make_plane()
    feed(plane, data)
    feed(plane, b"\x00" * 12 + b"\x08\x00" + data)
    feed(plane, b"\x00" * 12 + b"\x86\xdd" + data)
    check_table(plane)


_TEMPLATES = [
    syn(),
    bytes(
        Ether()
        / IP(src="10.0.0.2", dst=VIP, options=[scapy_all.IPOption_RR()])
        / TCP(sport=1, dport=8080, flags="S")
    ),
    bytes(Ether() / IP(src="10.0.0.2", dst=VIP) / UDP(sport=1, dport=8080) / b"abc"),
    bytes(Ether() / IP(src="10.0.0.2", dst=VIP, flags="MF") / UDP(sport=1, dport=8080) / (b"a" * 16)),
    bytes(Ether() / IP(src="10.0.0.2", dst=VIP, frag=3) / (b"a" * 16)),
    bytes(Ether() / IPv6(dst="2001:db8::1") / TCP(dport=8080, flags="S")),
]


@FUZZ
@given(
    st.sampled_from(_TEMPLATES),
    st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=6),
    st.integers(0, 120),
    st.booleans(),
)
def test_mutated_frames(base: bytes, flips: list[tuple[int, int]], cut: int, tunnel: bool) -> None:
    plane, tx = make_plane(fwd=CONN_F_TUNNEL if tunnel else CONN_F_DROUTE)
    frame = bytearray(base)
    for pos, val in flips:
        if pos < len(frame):
            frame[pos] = val
    frame = frame[: max(0, len(frame) - cut)] if cut < len(frame) else frame
    before = len(plane.director.conns)
    feed(plane, bytes(frame))
    parsed = packet.parse_frame(bytes(frame))
    if parsed is None:
        # malformed: the table must not change and nothing is sent
        assert len(plane.director.conns) == before
        assert tx.frames == []
    check_table(plane)
    for _, out in tx.frames:
        # whatever went out is a parseable frame
        assert packet.parse_frame(out) is not None


def test_bad_checksum_and_lengths_refused() -> None:
    good = bytearray(syn())
    bad = bytearray(good)
    bad[24] ^= 0xFF  # header checksum
    assert packet.parse_frame(bytes(bad)) is None
    short = bytearray(good)
    short[16:18] = (200).to_bytes(2, "big")  # total length beyond the frame
    assert packet.parse_frame(bytes(short)) is None
    ihl = bytearray(good)
    ihl[14] = 0x44  # ihl 4 < 5
    assert packet.parse_frame(bytes(ihl)) is None
    plane, tx = make_plane()
    for f in (bad, short, ihl):
        feed(plane, bytes(f))
    assert len(plane.director.conns) == 0 and tx.frames == []
    assert plane.stats.malformed == 3
