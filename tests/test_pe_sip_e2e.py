"""``--pe sip`` end to end: a real lvsd, a NAT UDP service with two UDP
echo servers on 127.0.0.1, SIP datagrams from several client sockets.
The relay hands each new flow's datagram to the core, which keys the
persistence template by the Call-ID (lvs/pe_sip.py)."""

from __future__ import annotations

import re
import socket

import pytest

from .helpers import running_lvsd
from .natlab import Adm, Backends, free_port

pytestmark = pytest.mark.timeout(60)


def invite(call_id: bytes) -> bytes:
    return (
        b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5060\r\n"
        b"Call-ID: " + call_id + b"\r\n"
        b"CSeq: 1 INVITE\r\n\r\n"
    )


def ask(vport: int, data: bytes, timeout: float = 3.0) -> bytes | None:
    """One datagram from a fresh client socket (a new client port); the
    echo server's port, or None when nothing came back."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(data, ("127.0.0.1", vport))
        reply = s.recvfrom(65536)[0]
    except TimeoutError:
        return None
    finally:
        s.close()
    assert reply.endswith(data)
    return reply.split(b":", 1)[0]


def test_sip_call_id_persistence_through_lvsd(backends: Backends) -> None:
    a, b = backends.udp_echo(), backends.udp_echo()
    vport = free_port(socket.SOCK_DGRAM)
    vip = f"127.0.0.1:{vport}"
    with running_lvsd() as name:
        adm = Adm(name)
        adm("-A", "-u", vip, "-s", "rr", "-p", "60", "--pe", "sip")
        adm("-a", "-u", vip, "-r", f"127.0.0.1:{a}", "-m")
        adm("-a", "-u", vip, "-r", f"127.0.0.1:{b}", "-m")
        # every datagram from its own client port: only the Call-ID ties them
        first = [ask(vport, invite(b"call-A@pc33")) for _ in range(3)]
        second = [ask(vport, invite(b"call-B@pc33")) for _ in range(3)]
        assert None not in first and None not in second
        assert len(set(first)) == 1 and len(set(second)) == 1
        assert first[0] != second[0]  # rr gave the second call the other server
        assert {first[0], second[0]} == {b"%d" % a, b"%d" % b}
        # a datagram without a Call-ID is dropped (no ICMP: *ignored = -1)
        assert ask(vport, b"not sip at all, no call id\r\n", timeout=0.5) is None
        # templates (client port 0) carry "sip <Call-ID>", assured by the replies
        listing = adm("-L", "-c", "-n", "--persistent-conn")
        tpl = re.findall(
            r"^UDP \S+\s+ASSURED\s+127\.0\.0\.1:0\s+\S+\s+127\.0\.0\.1:(\d+)\s+sip\s+(\S+)$", listing, re.M
        )
        assert sorted(tpl) == sorted(
            [(first[0].decode(), "call-A@pc33"), (second[0].decode(), "call-B@pc33")]
        ), listing
        assert len(re.findall(r"^UDP .* UDP ", listing, re.M)) == 6, listing
        stats = adm("-L", "-n", "--stats", "--exact")
        m = re.search(rf"UDP  {re.escape(vip)}\s+(\d+)\s+(\d+)", stats)
        assert m and m.groups() == ("6", "6"), stats  # the dropped datagram is not counted
