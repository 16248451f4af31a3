"""``--pe sip`` on the DR/TUN plane: the slow path hands the core the UDP
payload of a new flow, so the Call-ID picks the template; the fast path
only ever carries packets of an existing entry, which keep their real
server whatever they carry (as ``ip_vs_in`` finds the entry first).
In-process, no privileges needed."""

from __future__ import annotations

import itertools
import socket

import pytest

from forwarding import tun
from forwarding.capture import layout_frames
from forwarding.dr import DirectPlane
from lvs.constants import CONN_F_DROUTE, CONN_F_TEMPLATE, SVC_F_PERSISTENT
from lvs.core import Director
from lvs.ctl import IPVS, DestSpec, ServiceSpec
from lvs.model import ServiceKey

from .drfakes import IFX_IN, RS_INT, VIP, VIP_INT, FakeTx, OneHopResolver

scapy_all = pytest.importorskip("scapy.all")


def make_plane(pe: str = "sip") -> tuple[DirectPlane, FakeTx]:
    tun._ids = itertools.count(1)
    ipvs = IPVS()
    key = ServiceKey(socket.AF_INET, 17, VIP_INT, 5060)
    ipvs.add_service(ServiceSpec(key, "rr", SVC_F_PERSISTENT, 60, None, pe))
    for addr in RS_INT:
        ipvs.add_dest(key, DestSpec(socket.AF_INET, addr, 5060, fwd=CONN_F_DROUTE))
    tx = FakeTx()
    plane = DirectPlane(
        Director(ipvs), lambda: 0.0, guard=False, capture=False, tx=tx,  # type: ignore[arg-type]
        resolver=OneHopResolver(), fast_path=True,
    )  # fmt: skip
    plane.start()
    plane.director.reset_clock(1.0)
    plane._t = 1.0
    return plane, tx


def frame(client: str, sport: int, call_id: bytes | None) -> bytes:
    body = (
        b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP pc33\r\n"
        + (b"Call-ID: " + call_id + b"\r\n" if call_id is not None else b"")
        + b"CSeq: 1 INVITE\r\n\r\n"
    )
    pkt = scapy_all.Ether() / scapy_all.IP(src=client, dst=VIP) / scapy_all.UDP(sport=sport, dport=5060)
    return bytes(pkt / scapy_all.Raw(body))


def send(plane: DirectPlane, tx: FakeTx, *frames: bytes) -> list[int]:
    """The real server (last byte of its address) each frame went to."""
    before = len(tx.frames)
    blk = layout_frames([(f, 0, IFX_IN) for f in frames])
    plane.process_block(blk, 0, len(frames))
    plane._flush()
    return [f[1][5] for f in tx.frames[before:]]


def test_call_id_decides_new_flows_on_the_slow_path() -> None:
    plane, tx = make_plane()
    got = send(
        plane,
        tx,
        frame("10.0.0.2", 40000, b"call-1"),
        frame("10.0.0.2", 40001, b"call-1"),
        frame("10.0.0.2", 40002, b"call-2"),
        frame("10.0.0.2", 40003, b"call-2"),
        frame("10.0.0.2", 40004, None),  # no Call-ID: dropped
    )
    assert len(got) == 4
    assert got[0] == got[1] and got[2] == got[3] and got[0] != got[2]
    assert plane.stats.dropped == 1
    tpl = sorted(c.pe_data for c in plane.director.conns if c.flags & CONN_F_TEMPLATE)
    assert tpl == [b"call-1", b"call-2"]
    # a later datagram of the first flow takes the fast path with its entry's
    # server, whatever Call-ID it carries (the kernel finds the entry first)
    fast_before = plane.stats.fast
    assert send(plane, tx, frame("10.0.0.2", 40000, b"call-2")) == [got[0]]
    assert plane.stats.fast == fast_before + 1


def test_without_pe_no_payload_is_needed() -> None:
    plane, tx = make_plane(pe="")
    assert not plane._pe_payload
    got = send(plane, tx, frame("10.0.0.2", 40000, None), frame("10.0.0.2", 40001, b"x"))
    assert got[0] == got[1]  # plain persistence by client address
