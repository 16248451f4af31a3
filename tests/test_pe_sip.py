"""The SIP persistence engine (``--pe sip``, lvs/pe_sip.py): the Call-ID
parser (ip_vs_pe_sip.c get_callid over nf_conntrack_sip.c
ct_sip_get_header) and the core's use of it (ip_vs_sched_persist with
pe->fill_param, ip_vs_ct_in_get with pe->ct_match, templates hashed by
pe->hashkey_raw)."""

from __future__ import annotations

import pytest

from lvs.conn import PeConn
from lvs.constants import (
    AF_INET,
    AF_INET6,
    CONN_F_MASQ,
    CONN_F_TEMPLATE,
    IPPROTO_IP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
)
from lvs.core import DROP, FORWARD, Director
from lvs.ctl import IPVS, DestSpec, ServiceSpec
from lvs.ipvsadm.listing import list_conns
from lvs.ipvsadm.proc import proc_ip_vs_conn
from lvs.model import Flow, ServiceKey
from lvs.pe_sip import PEDATA_MAXLEN, fill_param, get_callid
from tests.helpers import ip

# a start line longer than the 28 bytes the kernel skips (see lvs.pe_sip)
START = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"


def sip(callid_line: bytes, start: bytes = START, tail: bytes = b"CSeq: 1 INVITE\r\n\r\n") -> bytes:
    return start + b"Via: SIP/2.0/UDP pc33.example.com\r\n" + callid_line + tail


def callid(payload: bytes, af: int = AF_INET) -> bytes | None:
    return fill_param(af, IPPROTO_UDP, payload)


# ---------------------------------------------------------------------------
# get_callid
# ---------------------------------------------------------------------------
def test_full_header() -> None:
    assert callid(sip(b"Call-ID: a84b4c76e66710@pc33.example.com\r\n")) == b"a84b4c76e66710@pc33.example.com"


def test_compact_header() -> None:
    assert callid(sip(b"i: f81d4fae-7dec-11d0\r\n")) == b"f81d4fae-7dec-11d0"
    assert callid(sip(b"I: upper\r\n")) == b"upper"


@pytest.mark.parametrize("name", [b"call-id", b"CALL-ID", b"cAlL-iD", b"Call-Id"])
def test_header_name_is_case_insensitive(name: bytes) -> None:
    assert callid(sip(name + b": abc\r\n")) == b"abc"


def test_value_case_is_kept() -> None:
    assert callid(sip(b"Call-ID: AbC\r\n")) == b"AbC"


def test_whitespace_around_colon_and_bare_lf() -> None:
    assert callid(sip(b"Call-ID   :    abc   \r\n")) is None  # a space right after the token
    assert callid(sip(b"Call-ID   :    abc\r\n")) == b"abc"
    assert callid(sip(b"Call-ID:abc\n")) == b"abc"  # LF alone ends a line (RFC 2543)
    assert callid(sip(b"Call-ID: abc\r")) == b"abc"
    # a continuation line before the value (the kernel steps over its first character)
    assert callid(sip(b"Call-ID:\r\n  xabc\r\n")) == b"abc"


def test_token_rules() -> None:
    # the value must be a word (+ @ word) followed by the end of the line
    assert callid(sip(b"Call-ID: abc;tag=1\r\n")) is None
    assert callid(sip(b"Call-ID: a b\r\n")) is None
    assert callid(sip(b"Call-ID: abc@\r\n")) is None
    assert callid(sip(b"Call-ID: (x)+[y]~\r\n")) == b"(x)+[y]~"
    # Latin-1 letters are letters to the kernel's ctype
    assert callid(sip("Call-ID: café\r\n".encode("latin-1"))) == "café".encode("latin-1")


def test_tab_after_colon_skips_the_header() -> None:
    # sip_skip_whitespace skips spaces only: the value starts at a tab, is
    # not a token, and the search goes on, from dataoff + matchoff (the
    # kernel adds the value's offset to the start offset)
    assert callid(sip(b"Call-ID:\tabc\r\n")) is None
    assert callid(sip(b"Call-ID:\tabc\r\n", tail=b"i: second\r\n\r\n")) is None
    pad = b"X-Pad: " + b"p" * 60 + b"\r\n"
    assert callid(sip(b"Call-ID:\tabc\r\n", tail=pad + b"i: second\r\n\r\n")) == b"second"


def test_compact_form_needs_a_non_letter() -> None:
    assert callid(sip(b"Identity: xyz\r\n")) is None
    assert callid(sip(b"Identity: xyz\r\n", tail=b"i: ok\r\n\r\n")) == b"ok"


def test_name_followed_by_other_text_ends_the_search() -> None:
    # "Call-ID-X:" matches the name, then no colon: ct_sip_get_header gives up
    assert callid(sip(b"Call-ID-X: abc\r\n", tail=b"Call-ID: later\r\n\r\n")) is None


def test_first_of_several() -> None:
    assert callid(sip(b"Call-ID: one\r\n", tail=b"i: two\r\n\r\n")) == b"one"


def test_missing_header() -> None:
    assert callid(sip(b"From: <sip:alice@example.com>\r\n")) is None


def test_non_sip_payload() -> None:
    assert callid(b"ipvslab\n") is None
    assert callid(bytes(range(256)) * 2) is None
    # no SIP check at all: any payload with such a line has a Call-ID
    assert callid(b"x" * 40 + b"\ni: whatever\n") == b"whatever"


def test_empty_and_not_udp() -> None:
    assert fill_param(AF_INET, IPPROTO_UDP, b"") is None
    assert fill_param(AF_INET, IPPROTO_UDP, None) is None
    assert fill_param(AF_INET, IPPROTO_TCP, sip(b"Call-ID: abc\r\n")) is None


def test_truncated() -> None:
    full = sip(b"Call-ID: abcdef\r\n")
    cut = full.index(b"abcdef") + 6
    assert callid(full[:cut]) is None  # the datagram ends with the value
    assert callid(full[: cut - 3]) is None
    assert callid(full[: cut + 1]) == b"abcdef"
    assert callid(full[: full.index(b"Call-ID") + 4]) is None


def test_length_limit() -> None:
    assert callid(sip(b"Call-ID: " + b"a" * PEDATA_MAXLEN + b"\r\n")) == b"a" * PEDATA_MAXLEN
    assert callid(sip(b"Call-ID: " + b"a" * (PEDATA_MAXLEN + 1) + b"\r\n")) is None


def test_search_starts_at_the_ip_payload_offset() -> None:
    # ip_vs_sip_fill_param hands get_callid the payload pointer *and* the
    # payload's offset in the packet (28 for IPv4): a line only counts after
    # a terminator at or beyond that offset
    early = b"OPTIONS sip:x SIP/2.0\r\ni: early\r\n\r\n"  # the first CRLF is at 21
    assert callid(early) is None
    late = b"OPTIONS sip:somebody@example SIP/2.0\r\ni: late\r\n\r\n"  # at 36
    assert callid(late) == b"late"
    # IPv6: 48 bytes; IPv4 with options: more
    assert callid(late, AF_INET6) is None
    assert fill_param(AF_INET, IPPROTO_UDP, late, 24) == b"late"
    assert fill_param(AF_INET, IPPROTO_UDP, late, 60) is None
    assert get_callid(late, 0) == b"late"


# ---------------------------------------------------------------------------
# the core
# ---------------------------------------------------------------------------


VIP = ip("10.0.0.1")
RS = [ip(f"192.168.0.{i}") for i in range(1, 5)]


class Lab:
    def __init__(
        self,
        n: int = 2,
        timeout: int = 60,
        netmask: int | None = None,
        flags: int = SVC_F_PERSISTENT,
        proto: int = IPPROTO_UDP,
        pe: str = "sip",
        fwmark: int = 0,
    ) -> None:
        self.ipvs = IPVS()
        self.d = Director(self.ipvs)
        self.fwmark = fwmark
        self.proto = proto
        if fwmark:
            self.key = ServiceKey(AF_INET, IPPROTO_IP, 0, 0, fwmark)
        else:
            self.key = ServiceKey(AF_INET, proto, VIP, 5060)
        self.svc = self.ipvs.add_service(ServiceSpec(self.key, "rr", flags, timeout, netmask, pe))
        self.dests = [
            self.ipvs.add_dest(self.key, DestSpec(AF_INET, RS[i], 5060, CONN_F_MASQ), 0.0) for i in range(n)
        ]
        self.now = 0.0

    def send(self, client: str, cport: int, cid: bytes | None, proto: int | None = None):
        payload = None if cid is None else sip(b"Call-ID: " + cid + b"\r\n")
        flow = Flow(AF_INET, proto or self.proto, ip(client), cport, VIP, 5060, self.fwmark)
        return self.d.process_in(flow, self.now, 0, 100, payload)

    def templates(self) -> list:
        return [c for c in self.d.conns if c.flags & CONN_F_TEMPLATE]

    def sleep_until(self, t: float) -> None:
        self.d.advance(self.now, t)
        self.now = t


def test_same_callid_from_other_ports_same_server() -> None:
    lab = Lab()
    a = lab.send("172.16.1.5", 5060, b"call-1")
    b = lab.send("172.16.1.5", 5070, b"call-1")
    c = lab.send("172.16.1.5", 5080, b"call-1")
    assert a.action == b.action == c.action == FORWARD
    assert a.conn.daddr == b.conn.daddr == c.conn.daddr
    assert len(lab.templates()) == 1
    assert a.conn.control is b.conn.control is lab.templates()[0]


def test_same_callid_other_clients_needs_the_mask() -> None:
    # ct_match compares the masked client address too
    lab = Lab()
    a = lab.send("172.16.1.5", 5060, b"call-1")
    b = lab.send("172.16.9.9", 5060, b"call-1")
    assert a.conn.daddr != b.conn.daddr  # rr: two templates, two servers
    assert len(lab.templates()) == 2
    lab = Lab(netmask=0)  # -M 0.0.0.0: the Call-ID alone decides
    a = lab.send("172.16.1.5", 5060, b"call-1")
    b = lab.send("10.9.9.9", 5060, b"call-1")
    c = lab.send("192.0.2.1", 4000, b"call-2")
    assert a.conn.daddr == b.conn.daddr != c.conn.daddr
    assert len(lab.templates()) == 2


def test_different_callids_go_round_robin() -> None:
    lab = Lab(n=3)
    servers = [lab.send("172.16.1.5", 6000 + i, f"call-{i}".encode()).conn.daddr for i in range(6)]
    # rr over the kernel list (newest first): 3, 2, 1, 3, 2, 1
    assert servers == [RS[2], RS[1], RS[0], RS[2], RS[1], RS[0]]
    assert len(lab.templates()) == 6


def test_existing_entry_wins_over_the_callid() -> None:
    # ip_vs_in finds the connection before any scheduling: a flow keeps its
    # server whatever Call-ID a later datagram carries
    lab = Lab()
    a = lab.send("172.16.1.5", 5060, b"call-1")
    b = lab.send("172.16.1.5", 5060, b"call-2")
    assert b.conn is a.conn and not b.new
    assert len(lab.templates()) == 1


def test_one_packet_scheduling_per_datagram() -> None:
    # with -o every datagram is scheduled: one client port, two calls, two servers
    lab = Lab(flags=SVC_F_PERSISTENT | SVC_F_ONEPACKET)
    a = lab.send("172.16.1.5", 5060, b"call-1")
    b = lab.send("172.16.1.5", 5060, b"call-2")
    c = lab.send("172.16.1.5", 5060, b"call-1")
    assert a.conn.daddr != b.conn.daddr
    assert c.conn.daddr == a.conn.daddr


def test_no_callid_is_dropped() -> None:
    lab = Lab()
    assert lab.send("172.16.1.5", 5060, None).action == DROP
    flow = Flow(AF_INET, IPPROTO_UDP, ip("172.16.1.5"), 5061, VIP, 5060)
    assert lab.d.process_in(flow, 0.0, 0, 36, b"ipvslab\n").action == DROP
    assert lab.templates() == [] and len(lab.d.conns) == 0
    assert lab.svc.stats.conns == 0


def test_tcp_service_with_sip_drops() -> None:
    lab = Lab(proto=IPPROTO_TCP)
    from lvs.proto_tcp import SYN

    flow = Flow(AF_INET, IPPROTO_TCP, ip("172.16.1.5"), 40000, VIP, 5060)
    assert lab.d.process_in(flow, 0.0, SYN, 60, sip(b"Call-ID: x\r\n")).action == DROP


def test_not_persistent_ignores_the_pe() -> None:
    lab = Lab(flags=0)
    assert lab.send("172.16.1.5", 5060, None).action == FORWARD
    assert lab.templates() == []


def test_fwmark_service() -> None:
    lab = Lab(fwmark=7)
    a = lab.send("172.16.1.5", 5060, b"m-call")
    b = lab.send("172.16.1.5", 5061, b"m-call")
    assert a.conn.daddr == b.conn.daddr
    (tpl,) = lab.templates()
    assert (tpl.protocol, tpl.vaddr, tpl.vport, tpl.pe_data) == (IPPROTO_IP, 7, 0, b"m-call")


def test_template_fields_and_listing() -> None:
    lab = Lab()
    v = lab.send("172.16.1.5", 5060, b"a84b4c76e66710@pc33.example.com")
    (tpl,) = lab.templates()
    assert isinstance(tpl, PeConn)
    assert (tpl.af, tpl.protocol, tpl.caddr, tpl.cport) == (AF_INET, IPPROTO_UDP, ip("172.16.1.5"), 0)
    assert (tpl.vaddr, tpl.vport, tpl.daddr, tpl.dport) == (VIP, 5060, v.conn.daddr, 5060)
    assert (tpl.pe_name, tpl.pe_data) == ("sip", b"a84b4c76e66710@pc33.example.com")
    # the connection entry has no PE data (ip_vs_sched_persist fills a fresh param for it)
    assert (v.conn.pe_name, v.conn.pe_data) == ("", b"")
    proc = proc_ip_vs_conn(lab.ipvs, lab.now)
    assert (
        "UDP AC100105 0000 0A000001 13C4 C0A80002 13C4 NONE             60 sip a84b4c76e66710@pc33.example.com\n"
        in proc
    )
    assert "UDP AC100105 13C4 0A000001 13C4 C0A80002 13C4 UDP             300\n" in proc
    pc = list_conns(lab.ipvs, lab.now, numeric=True, persistent_conn=True)
    assert "sip                a84b4c76e66710@pc33.example.com\n" in pc
    assert lab.dests[1].persistconns == 1


def test_template_expiry() -> None:
    lab = Lab(timeout=60)
    first = lab.send("172.16.1.5", 5060, b"call-1").conn.daddr
    # the connection lives 300 s (UDP timeout) and holds the template
    lab.sleep_until(299.0)
    assert len(lab.templates()) == 1
    assert lab.send("172.16.1.5", 5061, b"call-1").conn.daddr == first  # re-arms the template: 60 s
    lab.sleep_until(299.0 + 300.0 + 0.5)  # both connections gone
    assert lab.templates() != []  # the template still runs its last 60 s
    lab.sleep_until(299.0 + 300.0 + 61.0)
    assert lab.templates() == [] and len(lab.d.conns) == 0
    assert lab.dests[0].persistconns == lab.dests[1].persistconns == 0
    # a fresh template: rr moves on
    assert lab.send("172.16.1.5", 5062, b"call-1").conn.daddr != first


def test_quiesced_server_gets_a_new_template() -> None:
    lab = Lab()
    lab.ipvs.sysctl.expire_quiescent_template = 1
    a = lab.send("172.16.1.5", 5060, b"call-1")
    dest = next(d for d in lab.dests if d.addr == a.conn.daddr)
    spec = DestSpec(AF_INET, dest.addr, dest.port, CONN_F_MASQ, 0)
    lab.ipvs.edit_dest(lab.key, spec, lab.now)
    b = lab.send("172.16.1.5", 5061, b"call-1")
    assert b.conn.daddr != a.conn.daddr
    live = [t for t in lab.templates() if t.dport != 0xFFFF]
    assert len(live) == 1 and live[0].daddr == b.conn.daddr
