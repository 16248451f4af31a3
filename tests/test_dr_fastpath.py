"""The DR/TUN fast path (DirectPlane.process_block) against the slow path.

Two planes with the same configuration see the same frames, laid out as the
kernel lays them out in TPACKET_V3 ring blocks, and the same clock; one has
the fast path, the other does every frame through ``handle_frame`` and
``Director.process_in``.  They must send byte-identical frames and end with
identical connection tables, counters and plane statistics, whatever the
sequence: new flows, TCP flags in any order, TTL 1, IP options, fragments,
bad checksums, checksum offload pending, entries expiring, real servers
deleted or reweighted, timeouts changed.

In-process, no privileges needed.
"""

from __future__ import annotations

import itertools
import socket
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwarding import packet, tun
from forwarding.capture import TP_STATUS_CSUMNOTREADY, layout_frames
from forwarding.dr import DirectPlane
from lvs.addr import parse_ip
from lvs.conn import TCP_S_ESTABLISHED, TCP_S_FIN_WAIT
from lvs.constants import (
    CONN_F_DROUTE,
    CONN_F_TUNNEL,
    SVC_F_PERSISTENT,
    TUN_TYPE_GRE,
    TUN_TYPE_GUE,
    TUN_TYPE_IPIP,
)
from lvs.core import Director
from lvs.ctl import IPVS, DestSpec, ServiceSpec
from lvs.model import Flow, ServiceKey

from .drfakes import IFX_IN, RS_INT, VIP, VIP_INT, FailingTx, FakeTx, OneHopResolver, PlainTx

scapy_all = pytest.importorskip("scapy.all")
Ether = scapy_all.Ether
IP = scapy_all.IP
TCP = scapy_all.TCP
UDP = scapy_all.UDP
Raw = scapy_all.Raw



@dataclass(frozen=True)
class Config:
    fwd: int = CONN_F_DROUTE
    tun_type: int = TUN_TYPE_IPIP
    persistent: bool = False
    plain_tx: bool = False
    failing_tx: bool = False


def make_plane(cfg: Config, fast: bool) -> tuple[DirectPlane, FakeTx]:
    ipvs = IPVS()
    for proto in (6, 17):
        key = ServiceKey(socket.AF_INET, proto, VIP_INT, 8080)
        flags = SVC_F_PERSISTENT if cfg.persistent else 0
        ipvs.add_service(ServiceSpec(key, "rr", flags=flags, timeout=30 if cfg.persistent else 0))
        for addr in RS_INT:
            ipvs.add_dest(
                key,
                DestSpec(socket.AF_INET, addr, 8080, fwd=cfg.fwd, tun_type=cfg.tun_type, tun_port=6080),
            )
    director = Director(ipvs)
    tx = FailingTx() if cfg.failing_tx else PlainTx() if cfg.plain_tx else FakeTx()
    plane = DirectPlane(
        director, lambda: 0.0, guard=False, capture=False, tx=tx,  # type: ignore[arg-type]
        resolver=OneHopResolver(), fast_path=fast,
    )  # fmt: skip
    plane.start()
    return plane, tx


# -----------------------------------------------------------------------------
# frames
# -----------------------------------------------------------------------------
TCP_FLAGS = ["S", "A", "PA", "A", "PA", "FA", "R", "RA", "SA", "", "P", "U", "A", "PA"]


@dataclass(frozen=True)
class Pkt:
    flow: int
    tcp: bool
    flags: str = "A"
    ttl: int = 64
    tos: int = 0
    df: bool = True
    payload: int = 10
    bad: str = ""  # "", "csum", "options", "frag", "trunc", "notready", "udplen", "vlan"


def build(pkt: Pkt) -> tuple[bytes, int]:
    """(frame, tpacket status)."""
    sport = 40000 + pkt.flow
    client = f"10.0.0.{2 + pkt.flow % 3}"
    ip_kw: dict = {"src": client, "dst": VIP, "ttl": pkt.ttl, "tos": pkt.tos, "flags": "DF" if pkt.df else 0}
    if pkt.bad == "options":
        ip_kw["options"] = [scapy_all.IPOption_NOP()] * 4
    if pkt.bad == "frag":
        ip_kw["flags"] = "MF"
    l4 = TCP(sport=sport, dport=8080, flags=pkt.flags, seq=1000) if pkt.tcp else UDP(sport=sport, dport=8080)
    frame = bytearray(bytes(Ether() / IP(**ip_kw) / l4 / Raw(b"x" * pkt.payload)))
    status = 0
    if pkt.bad == "csum":
        frame[24] ^= 0x40
    elif pkt.bad == "trunc":
        frame = frame[: 14 + 20 + 6]
    elif pkt.bad == "notready":
        status = TP_STATUS_CSUMNOTREADY
    elif pkt.bad == "udplen" and not pkt.tcp:
        frame[14 + 20 + 4 : 14 + 20 + 6] = (0xFFF).to_bytes(2, "big")
    elif pkt.bad == "vlan":
        frame = frame[:12] + b"\x81\x00\x00\x05" + frame[12:]
    return bytes(frame), status


pkts = st.builds(
    Pkt,
    flow=st.integers(0, 5),
    tcp=st.booleans(),
    flags=st.sampled_from(TCP_FLAGS),
    ttl=st.sampled_from([64, 64, 64, 2, 1]),
    tos=st.sampled_from([0, 0, 0x10, 0x03, 0xB8]),
    df=st.booleans(),
    payload=st.integers(0, 40),
    bad=st.sampled_from([""] * 12 + ["csum", "options", "frag", "trunc", "notready", "udplen", "vlan"]),
)

#: ("frames", [Pkt...]) | ("time", seconds) | ("deldest", k) | ("weight", (k, w)) | ("timeouts", udp)
events = st.one_of(
    st.tuples(st.just("frames"), st.lists(pkts, min_size=1, max_size=12)),
    st.tuples(st.just("frames"), st.lists(pkts, min_size=1, max_size=12)),
    st.tuples(st.just("frames"), st.lists(pkts, min_size=1, max_size=12)),
    st.tuples(st.just("time"), st.sampled_from([0.5, 2.0, 10.0, 61.0, 400.0])),
    st.tuples(st.just("deldest"), st.integers(0, 1)),
    st.tuples(st.just("weight"), st.tuples(st.integers(0, 1), st.integers(0, 3))),
    st.tuples(st.just("timeouts"), st.sampled_from([5, 300])),
)


# -----------------------------------------------------------------------------
# driving and comparing
# -----------------------------------------------------------------------------
def run(cfg: Config, fast: bool, evs: list) -> tuple[DirectPlane, FakeTx]:
    tun._ids = itertools.count(1)  # the IPIP identification counter, same for both runs
    plane, tx = make_plane(cfg, fast)
    ipvs = plane.ipvs
    t = 1.0
    plane.director.reset_clock(t)
    for kind, arg in evs:
        if kind == "frames":
            built = [build(p) for p in arg]
            blk = layout_frames([(f, s, IFX_IN) for f, s in built])
            plane._t = t
            plane.process_block(blk, 0, len(built))
            plane._flush()
        elif kind == "time":
            t += arg
            plane.director.tick(t)
        elif kind == "deldest":
            for svc in list(ipvs):
                d = svc.find_dest(socket.AF_INET, RS_INT[arg], 8080)
                if d is not None and len(svc.destinations) > 1:
                    ipvs.del_dest(svc.key, socket.AF_INET, RS_INT[arg], 8080, t)
        elif kind == "weight":
            k, w = arg
            for svc in list(ipvs):
                d = svc.find_dest(socket.AF_INET, RS_INT[k], 8080)
                if d is not None:
                    spec = DestSpec(
                        socket.AF_INET,
                        RS_INT[k],
                        8080,
                        fwd=cfg.fwd,
                        weight=w,
                        tun_type=cfg.tun_type,
                        tun_port=6080,
                    )
                    ipvs.edit_dest(svc.key, spec, t)
        elif kind == "timeouts":
            ipvs.set_timeouts(0, 0, arg)
    return plane, tx


CONN_FIELDS = (
    "protocol", "caddr", "cport", "vaddr", "vport", "daddr", "dport", "flags", "state",
    "timeout", "expires", "in_pkts", "n_control", "timer_slot",
)  # fmt: skip
DEST_FIELDS = ("addr", "activeconns", "inactconns", "persistconns", "refcnt")


def snapshot(plane: DirectPlane) -> dict:
    d = plane.director
    conns = sorted(tuple(getattr(c, f) for f in CONN_FIELDS) for c in d.conns)
    dests = []
    svcs = []
    for svc in sorted(d.ipvs, key=lambda s: s.key.protocol):
        svcs.append((svc.key.protocol, svc.stats.counters()))
        for dest in svc.destinations:
            dests.append((svc.key.protocol, *(getattr(dest, f) for f in DEST_FIELDS), dest.stats.counters()))
    stats = dict(vars(plane.stats))
    stats.pop("fast")
    return {
        "conns": conns,
        "dests": dests,
        "svcs": svcs,
        "total": d.ipvs.stats.counters(),
        "wheel": len(d.conns.wheel),
        "plane": stats,
    }


def assert_same(cfg: Config, evs: list) -> DirectPlane:
    slow, slow_tx = run(cfg, False, evs)
    fast, fast_tx = run(cfg, True, evs)
    assert fast_tx.frames == slow_tx.frames
    assert (fast_tx.sent, fast_tx.errors) == (slow_tx.sent, slow_tx.errors)
    assert snapshot(fast) == snapshot(slow)
    assert slow.stats.fast == 0
    return fast


configs = st.sampled_from(
    [
        Config(),
        Config(fwd=CONN_F_TUNNEL),
        Config(fwd=CONN_F_TUNNEL, tun_type=TUN_TYPE_GUE),
        Config(fwd=CONN_F_TUNNEL, tun_type=TUN_TYPE_GRE),
        Config(persistent=True),
        Config(fwd=CONN_F_TUNNEL, persistent=True, plain_tx=True),
        Config(plain_tx=True),
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs, evs=st.lists(events, min_size=1, max_size=14))
def test_fast_path_equals_slow_path(cfg: Config, evs: list) -> None:
    assert_same(cfg, evs)


# -----------------------------------------------------------------------------
# the fast path is really taken, and left when it must be
# -----------------------------------------------------------------------------
def flow_pkts(flow: int, tcp: bool, flags: list[str]) -> list:
    return [("frames", [Pkt(flow, tcp, flags=f) for f in flags])]


@pytest.mark.parametrize("fwd", [CONN_F_DROUTE, CONN_F_TUNNEL])
def test_udp_flow_goes_fast_after_its_first_packet(fwd: int) -> None:
    evs = [("frames", [Pkt(0, False)] * 10), ("frames", [Pkt(1, False)] * 3)]
    plane = assert_same(Config(fwd=fwd), evs)
    assert plane.stats.fast == 9 + 2
    assert plane.stats.forwarded == 13
    (c0, c1) = sorted(plane.director.conns, key=lambda c: c.cport)
    assert (c0.in_pkts, c1.in_pkts) == (10, 3)


def test_send_errors_count_as_on_the_slow_path() -> None:
    evs = [("frames", [Pkt(0, False)] * 5 + [Pkt(1, True, flags="S")])]
    plane = assert_same(Config(failing_tx=True), evs)
    assert plane.stats.fast == 4
    assert isinstance(plane.tx, FailingTx) and plane.tx.errors == 6


def test_tcp_follows_flags_through_the_core() -> None:
    evs = flow_pkts(0, True, ["S", "A", "PA", "PA", "A"])
    plane = assert_same(Config(), evs)
    # SYN and the first ACK (SYN_RECV -> ESTABLISHED) are decided by the core
    assert plane.stats.fast == 3
    (cp,) = plane.director.conns
    assert cp.state == TCP_S_ESTABLISHED
    evs2 = [*evs, *flow_pkts(0, True, ["FA", "A", "A"])]
    plane = assert_same(Config(), evs2)
    (cp,) = plane.director.conns
    # FIN moves the entry to FIN_WAIT (INPUT_ONLY); later ACKs stay off the fast path
    assert cp.state == TCP_S_FIN_WAIT
    assert plane.stats.fast == 3
    assert plane.director.ipvs.timeouts.tcp[TCP_S_FIN_WAIT] == cp.timeout


def test_fast_path_refuses_what_the_kernel_drops() -> None:
    evs = [
        ("frames", [Pkt(0, False), Pkt(0, False, bad="csum"), Pkt(0, False, bad="udplen"), Pkt(0, False, ttl=1)]),
        ("frames", [Pkt(0, False, bad="trunc"), Pkt(0, False, bad="frag"), Pkt(0, False, bad="options")]),
    ]  # fmt: skip
    plane = assert_same(Config(), evs)
    assert plane.stats.fast == 0
    assert plane.stats.malformed == 3  # bad checksum, bad UDP length, cut short
    assert plane.stats.truncated == 0 and plane.stats.ttl_exceeded == 1


def test_expired_entry_is_rescheduled() -> None:
    evs = [("frames", [Pkt(0, False)] * 3), ("time", 400.0), ("frames", [Pkt(0, False)] * 3)]
    plane = assert_same(Config(), evs)
    (cp,) = plane.director.conns
    assert cp.in_pkts == 3
    assert plane.director.ipvs.stats.conns == 2
    assert plane.stats.fast == 4


def test_admin_change_and_next_hop_change_clear_the_table() -> None:
    plane, _tx = make_plane(Config(), True)
    plane._t = 1.0
    f, s = build(Pkt(0, False))
    blk = layout_frames([(f, s, IFX_IN)] * 3)
    plane.process_block(blk, 0, 3)
    assert len(plane._fast) == 1
    plane._flush()
    plane.ipvs.set_timeouts(0, 0, 60)  # no listener: read at each flush instead
    plane.process_block(blk, 0, 3)
    plane._flush()
    (cp,) = plane.director.conns
    assert cp.timeout == 60
    spec = DestSpec(socket.AF_INET, RS_INT[0], 8080, fwd=CONN_F_DROUTE, weight=5)
    plane.ipvs.edit_dest(ServiceKey(socket.AF_INET, 17, VIP_INT, 8080), spec)
    assert not plane._fast
    plane.process_block(blk, 0, 3)
    assert len(plane._fast) == 1
    assert plane.resolver is not None
    plane.resolver.invalidate()
    assert not plane._fast
    assert plane.stats.fast == 2 + 3 + 2


def test_a_failing_frame_does_not_stop_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    plane, _tx = make_plane(Config(), True)
    plane._t = 1.0
    frames = [build(Pkt(i, False)) for i in range(4)]
    calls = []
    real = plane.handle_frame

    def flaky(buf, start, end, ifindex, status, wire):  # type: ignore[no-untyped-def]
        calls.append(start)
        if len(calls) == 2:
            raise RuntimeError("boom")
        real(buf, start, end, ifindex, status, wire)

    monkeypatch.setattr(plane, "handle_frame", flaky)
    plane.process_block(layout_frames([(f, s, IFX_IN) for f, s in frames]), 0, 4)
    assert plane.stats.errors == 1
    assert plane.stats.forwarded == 3


# -----------------------------------------------------------------------------
# the core's batched accounting
# -----------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    tcp=st.booleans(),
    batches=st.lists(st.tuples(st.integers(1, 20), st.integers(40, 1500), st.floats(0, 50)), max_size=8),
)
def test_account_in_equals_process_in(tcp: bool, batches: list[tuple[int, int, float]]) -> None:
    """account_in(cp, now, n, bytes) == n process_in calls at ``now`` for
    ACK segments on an ESTABLISHED entry (TCP) or datagrams (UDP)."""
    results = []
    for batched in (False, True):
        ipvs = IPVS()
        proto = 6 if tcp else 17
        key = ServiceKey(socket.AF_INET, proto, VIP_INT, 8080)
        ipvs.add_service(ServiceSpec(key, "rr"))
        ipvs.add_dest(key, DestSpec(socket.AF_INET, RS_INT[0], 8080, fwd=CONN_F_DROUTE))
        d = Director(ipvs)
        flow = Flow(socket.AF_INET, proto, parse_ip("10.0.0.2")[1], 40000, VIP_INT, 8080)
        t = 1.0
        v = d.process_in(flow, t, packet.TCP_SYN, 60)
        if tcp:
            d.process_in(flow, t, packet.TCP_ACK, 52)
        cp = v.conn
        assert cp is not None
        for n, size, dt in batches:
            t += dt
            if batched:
                d.account_in(cp, t, n, n * size)
            else:
                for _ in range(n):
                    d.process_in(flow, t, packet.TCP_ACK | packet.TCP_PSH, size)
        dest = cp.dest
        assert dest is not None
        conn = tuple(getattr(cp, f) for f in CONN_FIELDS)
        dst = tuple(getattr(dest, f) for f in DEST_FIELDS)
        results.append((conn, dst, dest.stats.counters(), ipvs.stats.counters()))
    assert results[0] == results[1]
