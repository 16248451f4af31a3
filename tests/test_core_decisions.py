"""Kernel decision rules of the packet path (lvs.core.Director), one rule per
test, with the exact values the kernel would produce.

The references are docs/kernel-notes.md (section numbers in the docstrings)
and /work/shared/spec/ipvs-semantics.md.  Virtual time starts at 0; every
test drives the director through ``process_in``/``process_out`` and moves
the clock with ``advance`` so that timers fire as they would in the kernel.
"""

from __future__ import annotations

import pytest

from lvs.conn import (
    CTPL_S_ASSURED,
    TCP_S_CLOSE,
    TCP_S_CLOSE_WAIT,
    TCP_S_ESTABLISHED,
    TCP_S_FIN_WAIT,
    TCP_S_SYN_RECV,
    TCP_S_TIME_WAIT,
    Conn,
)
from lvs.conntab import INVALID_PORT
from lvs.constants import (
    AF_INET,
    CONN_F_DROUTE,
    CONN_F_INACTIVE,
    CONN_F_MASQ,
    CONN_F_NOOUTPUT,
    CONN_F_ONE_PACKET,
    DEST_F_AVAILABLE,
    DEST_F_OVERLOAD,
    IPPROTO_IP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
)
from lvs.core import ACCEPT, DROP, FORWARD, REJECT
from lvs.proto_tcp import ACK, FIN, RST, SYN
from tests.corelab import CLIENT, VIP, Lab, counts, handshake, time_wait
from tests.helpers import ip


def test_persistence_netmask_groups_clients() -> None:
    """-p 300 -M 255.255.255.0: clients of one /24 share a template and so a
    real server, without calling the scheduler; the template has the masked
    address, client port 0, the service port and the dest port."""
    lab = Lab("rr", flags=SVC_F_PERSISTENT, timeout=300, netmask=0xFFFFFF00)
    a, b = lab.dests[1], lab.dests[0]  # rr starts at the newest (list head)
    c1 = lab.send(lab.flow(ip("10.1.1.5"), 1000), SYN).conn
    c2 = lab.send(lab.flow(ip("10.1.1.77"), 2000), SYN).conn
    c3 = lab.send(lab.flow(ip("10.1.2.5"), 1000), SYN).conn
    assert c1 is not None and c2 is not None and c3 is not None
    assert c1.dest is a and c2.dest is a and c3.dest is b
    tpl = c1.control
    assert tpl is not None and c2.control is tpl and c3.control is not tpl
    assert (tpl.protocol, tpl.caddr, tpl.cport, tpl.vaddr, tpl.vport) == (
        IPPROTO_TCP,
        ip("10.1.1.0"),
        0,
        VIP,
        80,
    )
    assert tpl.daddr == a.addr and tpl.dport == 80
    assert tpl.n_control == 2
    assert tpl.timeout == 300 and tpl.expires == 300
    assert counts(a) == (2, 0, 1) and counts(b) == (1, 0, 1)
    # templates are never counted in the conns statistics
    assert lab.svc.stats.conns == 3 and a.stats.conns == 2 and lab.ipvs.stats.conns == 3
    assert len(lab.d.conns) == 5 and lab.d.conns.templates == 2
    assert lab.d.conns.lookup_template(IPPROTO_TCP, AF_INET, ip("10.1.1.0"), VIP, 80) is tpl


def test_fwmark_template_uses_ipproto_ip() -> None:
    """A fwmark service's template is ⟨IPPROTO_IP, net, mark, 0⟩ with dport 0,
    so TCP and UDP flows of one client carrying the mark share it."""
    lab = Lab("rr", fwmark=7, flags=SVC_F_PERSISTENT, timeout=60, n=2)
    first = lab.dests[1]
    tcp = lab.send(lab.flow(proto=IPPROTO_TCP, vport=80), SYN).conn
    udp = lab.send(lab.flow(proto=IPPROTO_UDP, vport=53, cport=5353)).conn
    other = lab.send(lab.flow(ip("172.16.9.9"), proto=IPPROTO_UDP, vport=53)).conn
    assert tcp is not None and udp is not None and other is not None
    tpl = tcp.control
    assert tpl is not None and udp.control is tpl
    assert (tpl.protocol, tpl.caddr, tpl.cport, tpl.vaddr, tpl.vport, tpl.dport) == (
        IPPROTO_IP,
        CLIENT,
        0,
        7,
        0,
        0,
    )
    assert tcp.dest is first and udp.dest is first and other.dest is lab.dests[0]
    # a connection of a port-0 template gets the packet's port
    assert tcp.dport == 80 and udp.dport == 53
    assert tpl.n_control == 2
    tab = lab.d.conns
    assert tab.lookup_template(IPPROTO_IP, AF_INET, CLIENT, 7, 0) is tpl
    assert tab.lookup_template(IPPROTO_TCP, AF_INET, CLIENT, 7, 0) is None
    assert tab.lookup_template(IPPROTO_TCP, AF_INET, CLIENT, VIP, 80) is None


def test_ftp_and_port_zero_templates_have_vport_zero() -> None:
    """Persistent FTP (port 21) and port-0 services key templates with vport 0
    and give them dport 0; port-0 connections keep the packet's port."""
    ftp = Lab("rr", port=21, flags=SVC_F_PERSISTENT, timeout=60, n=1)
    cp = ftp.send(ftp.flow(), SYN).conn
    assert cp is not None and cp.control is not None
    assert (cp.control.vport, cp.control.dport, cp.dport) == (0, 0, 21)

    zero = Lab("rr", port=0, flags=SVC_F_PERSISTENT, timeout=60, n=1)
    cp = zero.send(zero.flow(vport=8443), SYN).conn
    assert cp is not None and cp.control is not None
    assert (cp.control.vport, cp.control.dport, cp.dport, cp.vport) == (0, 0, 8443, 8443)
    cp2 = zero.send(zero.flow(vport=22, cport=40001), SYN).conn
    assert cp2 is not None and cp2.control is cp.control


def test_template_outlives_controlled_conn_and_rearms_with_60s() -> None:
    """A template cannot expire while it controls a connection: its timer is
    deferred by 60 s, and its timeout stays 60 s for good, so a later
    connection through it re-arms it for 60 s instead of -p."""
    lab = Lab("rr", flags=SVC_F_PERSISTENT, timeout=30)
    cp = handshake(lab, lab.flow())  # ESTABLISHED: expires at 900
    tpl = cp.control
    assert tpl is not None
    assert cp.expires == 900 and tpl.expires == 30 and tpl.timeout == 30
    lab.sleep_until(31)
    assert tpl.hashed and tpl.timeout == 60 and tpl.expires == 90
    lab.sleep_until(100)
    assert tpl.expires == 150
    cp2 = lab.send(lab.flow(cport=40001), SYN).conn  # SYN_RECV: expires at 160
    assert cp2 is not None and cp2.control is tpl and tpl.n_control == 2
    assert tpl.expires == 160 and tpl.timeout == 60
    lab.sleep_until(161)
    assert not cp2.hashed and tpl.n_control == 1 and tpl.expires == 220
    lab.sleep_until(899.5)
    assert cp.hashed and tpl.hashed and tpl.expires == 940
    lab.sleep_until(900.5)
    assert not cp.hashed and tpl.n_control == 0 and tpl.hashed
    lab.sleep_until(939.5)
    assert tpl.hashed
    lab.sleep_until(940.5)
    assert not tpl.hashed and len(lab.d.conns) == 0
    assert counts(cp.dest if cp.dest else lab.dests[1]) == (0, 0, 0)
    assert all(counts(d) == (0, 0, 0) for d in lab.dests)


def test_template_without_controlled_conns_expires_after_p() -> None:
    """With no controlled connection left, the template goes at -p."""
    lab = Lab("rr", proto=IPPROTO_UDP, port=53, flags=SVC_F_PERSISTENT, timeout=400, n=1)
    cp = lab.send(lab.flow()).conn
    assert cp is not None and cp.expires == 300
    tpl = cp.control
    assert tpl is not None and tpl.expires == 400
    lab.sleep_until(300.5)
    assert not cp.hashed and tpl.hashed and tpl.n_control == 0
    lab.sleep_until(399.5)
    assert tpl.hashed
    lab.sleep_until(400.5)
    assert not tpl.hashed and counts(lab.dests[0]) == (0, 0, 0)


def test_persistence_overrides_weight_zero_by_default() -> None:
    """A valid template is used even if its real server is quiesced."""
    lab = Lab("rr", flags=SVC_F_PERSISTENT, timeout=300)
    a = lab.dests[1]
    lab.send(lab.flow(), SYN)
    lab.edit(a, weight=0)
    cp = lab.send(lab.flow(cport=40001), SYN).conn
    assert cp is not None and cp.dest is a
    assert lab.d.conns.templates == 1


def test_expire_quiescent_template_invalidates_weight_zero_template() -> None:
    """expire_quiescent_template=1: a template whose server has weight 0 is
    marked invalid (dport 0xffff) and a new template is made next to it; the
    old one keeps its persistconns until its own timer removes it."""
    lab = Lab("rr", flags=SVC_F_PERSISTENT, timeout=300)
    lab.sysctl.expire_quiescent_template = 1
    a, b = lab.dests[1], lab.dests[0]
    c1 = lab.send(lab.flow(), SYN).conn
    assert c1 is not None and c1.dest is a
    old = c1.control
    assert old is not None
    lab.edit(a, weight=0)
    lab.now = 10.0
    c2 = lab.send(lab.flow(cport=40001), SYN).conn
    assert c2 is not None and c2.dest is b
    new = c2.control
    assert new is not None and new is not old
    assert old.dport == INVALID_PORT and old.hashed and old.expires == 300
    assert new.dport == 80 and new.expires == 310
    assert counts(a) == (1, 0, 1) and counts(b) == (1, 0, 1)
    assert lab.d.conns.lookup_template(IPPROTO_TCP, AF_INET, CLIENT, VIP, 80) is new
    # c1 keeps the invalid template alive until c1 itself goes (SYN_RECV: 60 s)
    lab.sleep_until(300.5)
    assert not c1.hashed and not old.hashed
    assert counts(a) == (0, 0, 0)


def test_deleted_dest_invalidates_template() -> None:
    """A template whose server was deleted (not AVAILABLE) is invalid even
    with expire_quiescent_template=0."""
    lab = Lab("rr", proto=IPPROTO_UDP, port=53, flags=SVC_F_PERSISTENT, timeout=300)
    a, b = lab.dests[1], lab.dests[0]
    c1 = lab.send(lab.flow()).conn
    assert c1 is not None and c1.dest is a
    lab.delete(a)
    c2 = lab.send(lab.flow(cport=40001)).conn
    assert c2 is not None and c2.dest is b
    assert c1.control is not None and c1.control.dport == INVALID_PORT


def test_template_assured_by_established_tcp_and_udp_reply() -> None:
    """TCP templates become ASSURED when a controlled connection reaches
    ESTABLISHED; UDP templates when a reply is seen."""
    lab = Lab("rr", flags=SVC_F_PERSISTENT, timeout=300, n=1)
    cp = lab.send(lab.flow(), SYN).conn
    assert cp is not None and cp.control is not None
    assert cp.control.state == 0
    lab.send(lab.flow(), ACK)
    assert cp.control.state & CTPL_S_ASSURED

    ulab = Lab("rr", proto=IPPROTO_UDP, port=53, flags=SVC_F_PERSISTENT, timeout=300, n=1)
    up = ulab.send(ulab.flow()).conn
    assert up is not None and up.control is not None
    ulab.send(ulab.flow())
    assert up.control.state == 0
    ulab.reply(up)
    assert up.control.state & CTPL_S_ASSURED


# ----------------------------------------------------------------------------
# conn_reuse_mode (kernel-notes §5.1)
# ----------------------------------------------------------------------------
def test_syn_on_time_wait_entry_reschedules() -> None:
    """conn_reuse_mode=1: a SYN hitting a TIME_WAIT entry expires it and is
    scheduled afresh (rr moves on to the other server)."""
    lab = Lab("rr")
    a, b = lab.dests[1], lab.dests[0]
    old = time_wait(lab, lab.flow())
    assert old.dest is a and counts(a) == (0, 1, 0)
    v = lab.send(lab.flow(), SYN)
    assert v.action == FORWARD and v.new and v.conn is not old
    assert v.conn is not None and v.conn.dest is b and v.conn.state == TCP_S_SYN_RECV
    assert not old.hashed and old.dest is None
    assert counts(a) == (0, 0, 0) and counts(b) == (1, 0, 0)
    assert len(lab.d.conns) == 1 and len(lab.d.conns.wheel) == 1


def test_syn_on_time_wait_entry_reused_with_mode_zero() -> None:
    """conn_reuse_mode=0: the SYN moves the old entry TIME_WAIT -> SYN_RECV
    on the same server (now active again)."""
    lab = Lab("rr")
    lab.sysctl.conn_reuse_mode = 0
    a = lab.dests[1]
    old = time_wait(lab, lab.flow())
    v = lab.send(lab.flow(), SYN)
    assert v.conn is old and not v.new
    assert old.state == TCP_S_SYN_RECV and old.dest is a and counts(a) == (1, 0, 0)
    assert old.timeout == 60 and old.expires == 60


def test_syn_on_controlled_time_wait_entry_is_reused() -> None:
    """is_new_conn_expected is false for a controlled (persistent)
    connection, so its TIME_WAIT entry is reused, not rescheduled."""
    lab = Lab("rr", flags=SVC_F_PERSISTENT, timeout=300)
    a = lab.dests[1]
    old = time_wait(lab, lab.flow())
    v = lab.send(lab.flow(), SYN)
    assert v.conn is old and not v.new and old.state == TCP_S_SYN_RECV and old.dest is a
    assert old.control is not None and old.control.n_control == 1


def test_conn_reuse_mode_bit1_reschedules_dr_fin_wait() -> None:
    """Bit 1 of conn_reuse_mode also reschedules FIN_WAIT entries of DR/TUN
    (NOOUTPUT) connections; with mode 1 they are reused."""
    for mode, resched in ((1, False), (2, True), (3, True)):
        lab = Lab("rr", fwd=CONN_F_DROUTE)
        lab.sysctl.conn_reuse_mode = mode
        old = handshake(lab, lab.flow())
        lab.send(lab.flow(), FIN | ACK)
        assert old.state == TCP_S_FIN_WAIT and old.flags & CONN_F_NOOUTPUT
        v = lab.send(lab.flow(), SYN)
        assert (v.conn is not old) == resched, mode
        assert v.new == resched
        assert old.hashed != resched


def test_syn_with_rst_does_not_trigger_reuse() -> None:
    """A segment with RST set is not a new connection even if SYN is set."""
    lab = Lab("rr")
    old = time_wait(lab, lab.flow())
    v = lab.send(lab.flow(), SYN | RST)
    assert v.conn is old and old.state == TCP_S_CLOSE


# ----------------------------------------------------------------------------
# expire_nodest_conn (kernel-notes §5.2)
# ----------------------------------------------------------------------------
def test_deleted_dest_packets_dropped_without_expire_nodest_conn() -> None:
    """A packet of an entry whose server was deleted is dropped silently:
    no statistics, no state change, the entry stays."""
    lab = Lab("rr", proto=IPPROTO_UDP, port=53)
    a = lab.dests[1]
    cp = lab.send(lab.flow(), length=100).conn
    assert cp is not None and cp.dest is a
    lab.delete(a)
    lab.now = 5.0
    v = lab.send(lab.flow(), length=100)
    assert v.action == DROP and v.conn is cp and not v.new
    assert cp.hashed and cp.expires == 300
    assert a.stats.inpkts == 1 and lab.svc.stats.inpkts == 1 and lab.ipvs.stats.inpkts == 1
    assert counts(a) == (0, 1, 0) and a.refcnt == 1


def test_deleted_dest_conn_rescheduled_with_expire_nodest_conn() -> None:
    """expire_nodest_conn=1: the entry is expired at once and the packet is
    scheduled to a live server; the deleted server's counters drop."""
    lab = Lab("rr", proto=IPPROTO_UDP, port=53)
    lab.sysctl.expire_nodest_conn = 1
    a, b = lab.dests[1], lab.dests[0]
    cp = lab.send(lab.flow()).conn
    lab.delete(a)
    v = lab.send(lab.flow())
    assert v.action == FORWARD and v.new and v.conn is not cp
    assert v.conn is not None and v.conn.dest is b
    assert cp is not None and not cp.hashed
    assert counts(a) == (0, 0, 0) and a.refcnt == 0 and counts(b) == (0, 1, 0)
    assert len(lab.d.conns) == 1 and len(lab.d.conns.wheel) == 1


def test_expire_nodest_conn_tcp_ack_is_not_scheduled() -> None:
    """After the entry is expired a non-SYN TCP segment cannot schedule and
    goes to the local stack (ACCEPT)."""
    lab = Lab("rr")
    lab.sysctl.expire_nodest_conn = 1
    a = lab.dests[1]
    cp = handshake(lab, lab.flow())
    lab.delete(a)
    v = lab.send(lab.flow(), ACK)
    assert v.action == ACCEPT and v.conn is None
    assert not cp.hashed and len(lab.d.conns) == 0 and counts(a) == (0, 0, 0)


def test_expire_nodest_conn_syn_on_weight_zero_reschedules() -> None:
    """expire_nodest_conn=1 and a SYN on an entry whose server has weight 0:
    rescheduled even from ESTABLISHED; other segments keep flowing to it."""
    lab = Lab("rr")
    lab.sysctl.expire_nodest_conn = 1
    a, b = lab.dests[1], lab.dests[0]
    cp = handshake(lab, lab.flow())
    lab.edit(a, weight=0)
    v = lab.send(lab.flow(), ACK)
    assert v.action == FORWARD and v.conn is cp
    v = lab.send(lab.flow(), SYN)
    assert v.new and v.conn is not None and v.conn.dest is b and not cp.hashed
    assert counts(a) == (0, 0, 0)


def test_weight_zero_without_expire_nodest_conn_keeps_serving() -> None:
    lab = Lab("rr")
    a = lab.dests[1]
    cp = handshake(lab, lab.flow())
    lab.edit(a, weight=0)
    v = lab.send(lab.flow(), SYN)
    assert v.conn is cp and cp.dest is a and cp.state == TCP_S_ESTABLISHED


# ----------------------------------------------------------------------------
# one-packet scheduling (-o)
# ----------------------------------------------------------------------------
def test_one_packet_udp_entry_not_kept() -> None:
    """-o: every datagram is scheduled on its own, the entry is not hashed
    and the counters go straight back to 0; conns statistics count each."""
    lab = Lab("rr", proto=IPPROTO_UDP, port=53, flags=SVC_F_ONEPACKET)
    a, b = lab.dests[1], lab.dests[0]
    picks = []
    for _ in range(3):
        v = lab.send(lab.flow(), length=40)
        assert v.action == FORWARD and v.new and v.conn is not None
        assert v.conn.flags & CONN_F_ONE_PACKET and not v.conn.hashed
        assert v.conn.dest is None  # already unbound: ip_vs_conn_put expired it
        picks.append(v.conn.daddr)
    assert picks == [a.addr, b.addr, a.addr]
    assert len(lab.d.conns) == 0 and len(lab.d.conns.wheel) == 0
    assert counts(a) == (0, 0, 0) and counts(b) == (0, 0, 0)
    assert a.refcnt == 0 and b.refcnt == 0
    assert a.stats.conns == 2 and b.stats.conns == 1 and lab.svc.stats.conns == 3
    assert a.stats.inpkts == 2 and a.stats.inbytes == 80


def test_one_packet_flag_ignored_for_tcp() -> None:
    """The ONE_PACKET flag only applies to UDP: a TCP flow of an -o fwmark
    service gets a normal, hashed entry."""
    lab = Lab("rr", fwmark=3, flags=SVC_F_ONEPACKET)
    v = lab.send(lab.flow(proto=IPPROTO_TCP, vport=80), SYN)
    assert v.conn is not None and not v.conn.flags & CONN_F_ONE_PACKET and v.conn.hashed
    u = lab.send(lab.flow(proto=IPPROTO_UDP, vport=53))
    assert u.conn is not None and u.conn.flags & CONN_F_ONE_PACKET and not u.conn.hashed


def test_one_packet_persistent_conn_releases_its_template() -> None:
    """-o with -p: the one-packet entry expires right after its datagram
    (ip_vs_conn_put -> ip_vs_conn_expire), which takes it off its template
    (ip_vs_control_del), so the template is left with n_control 0 and goes
    at -p."""
    lab = Lab("rr", proto=IPPROTO_UDP, port=53, flags=SVC_F_PERSISTENT | SVC_F_ONEPACKET, timeout=30)
    a = lab.dests[1]
    v = lab.send(lab.flow())
    assert v.conn is not None and v.conn.daddr == a.addr
    tpl = lab.templates()[0]
    assert tpl.n_control == 0 and v.conn.control is None
    assert counts(a) == (0, 0, 1)
    lab.now = 10.0
    v2 = lab.send(lab.flow(cport=40001))
    assert v2.conn is not None and v2.conn.daddr == a.addr  # persistence still applies
    assert tpl.n_control == 0 and tpl.expires == 40
    lab.sleep_until(40.5)
    assert len(lab.d.conns) == 0 and counts(a) == (0, 0, 0)


# ----------------------------------------------------------------------------
# thresholds -x/-y (kernel-notes §1)
# ----------------------------------------------------------------------------
def _fill(lab: Lab, n: int) -> list[Conn]:
    """n UDP flows from distinct clients, one per second from now on."""
    out = []
    for _ in range(n):
        lab.clients += 1
        v = lab.send(lab.flow(ip("172.16.2.0") + lab.clients))
        assert v.action == FORWARD and v.conn is not None
        out.append(v.conn)
        lab.now += 1
    return out


@pytest.mark.parametrize("classic", [False, True])
def test_overload_set_at_upper_and_cleared_below_three_quarters(classic: bool) -> None:
    """-x 4: OVERLOAD at total >= 4; without -y it clears below u - u//4 = 3
    (classic: 4*total < 3*u, the same numbers), so at 3 it stays set."""
    lab = Lab("rr", proto=IPPROTO_UDP, port=53, n=1, u=4, classic=classic)
    a = lab.dests[0]
    _fill(lab, 3)  # t = 0, 1, 2
    assert not a.flags & DEST_F_OVERLOAD
    _fill(lab, 1)  # t = 3: total 4
    assert a.flags & DEST_F_OVERLOAD
    v = lab.send(lab.flow(ip("172.16.3.1")))
    assert v.action == REJECT and v.conn is None
    lab.sleep_until(300.5)  # the t=0 flow expired: total 3
    assert a.inactconns == 3 and a.flags & DEST_F_OVERLOAD
    lab.sleep_until(301.5)  # total 2
    assert a.inactconns == 2 and not a.flags & DEST_F_OVERLOAD
    assert lab.send(lab.flow(ip("172.16.3.1"))).action == FORWARD


def test_overload_lower_threshold() -> None:
    """-x 4 -y 2: cleared only once total < 2."""
    lab = Lab("rr", proto=IPPROTO_UDP, port=53, n=1, u=4, l=2)
    a = lab.dests[0]
    _fill(lab, 4)
    assert a.flags & DEST_F_OVERLOAD
    lab.sleep_until(301.5)  # total 2
    assert a.flags & DEST_F_OVERLOAD
    lab.sleep_until(302.5)  # total 1
    assert not a.flags & DEST_F_OVERLOAD


def test_overloaded_dest_skipped_by_scheduler() -> None:
    lab = Lab("rr", proto=IPPROTO_UDP, port=53, n=2)
    a, b = lab.dests[1], lab.dests[0]
    lab.edit(a, u=1)
    c = _fill(lab, 3)
    assert [x.dest for x in c] == [a, b, b]
    assert a.flags & DEST_F_OVERLOAD and not b.flags & DEST_F_OVERLOAD


def test_threshold_edit_new_rules() -> None:
    """Recent kernels re-evaluate OVERLOAD on a threshold edit, with the same
    hysteresis: set at >= u, clear below l, unchanged in between."""
    lab = Lab("rr", proto=IPPROTO_UDP, port=53, n=1)
    a = lab.dests[0]
    _fill(lab, 4)
    lab.edit(a, u=3)
    assert a.flags & DEST_F_OVERLOAD  # 4 >= 3: set at once
    lab.edit(a, u=5)  # l = 5 - 1 = 4: 4 is in [4, 5): unchanged
    assert a.flags & DEST_F_OVERLOAD
    lab.edit(a, u=6)  # l = 6 - 1 = 5: 4 < 5 clears
    assert not a.flags & DEST_F_OVERLOAD
    lab.edit(a, u=4, l=1)
    assert a.flags & DEST_F_OVERLOAD
    lab.edit(a, weight=3)  # same thresholds: not re-evaluated
    assert a.flags & DEST_F_OVERLOAD
    lab.edit(a, u=0, l=0)
    assert not a.flags & DEST_F_OVERLOAD


def test_threshold_edit_classic_rules() -> None:
    """Classic kernels never set OVERLOAD on edit, and clear it only when the
    new u is 0 or above the old one."""
    lab = Lab("rr", proto=IPPROTO_UDP, port=53, n=1, classic=True)
    a = lab.dests[0]
    _fill(lab, 4)
    lab.edit(a, u=3)
    assert not a.flags & DEST_F_OVERLOAD  # not set by the edit
    _fill(lab, 1)  # bind: 5 >= 3
    assert a.flags & DEST_F_OVERLOAD
    lab.edit(a, u=2)  # lower: stays
    assert a.flags & DEST_F_OVERLOAD
    lab.edit(a, u=2, l=1)  # same u: stays
    assert a.flags & DEST_F_OVERLOAD
    lab.edit(a, u=5, l=0)  # higher u clears even though 5 >= 5
    assert not a.flags & DEST_F_OVERLOAD


def test_new_rules_keep_flag_where_classic_clears() -> None:
    """The one observable difference: flagged at total 4 with u=4, edit to
    u=5 (l = 4): recent kernels keep OVERLOAD, classic clears it."""
    for classic, expect in ((False, True), (True, False)):
        lab = Lab("rr", proto=IPPROTO_UDP, port=53, n=1, u=4, classic=classic)
        a = lab.dests[0]
        _fill(lab, 4)
        assert a.flags & DEST_F_OVERLOAD
        lab.edit(a, u=5)
        assert bool(a.flags & DEST_F_OVERLOAD) == expect, classic


def test_templates_do_not_count_towards_thresholds() -> None:
    lab = Lab("rr", proto=IPPROTO_UDP, port=53, n=1, u=2, flags=SVC_F_PERSISTENT, timeout=60)
    a = lab.dests[0]
    lab.send(lab.flow())
    assert counts(a) == (0, 1, 1) and not a.flags & DEST_F_OVERLOAD


# ----------------------------------------------------------------------------
# TCP states (kernel-notes §2)
# ----------------------------------------------------------------------------
def test_dr_connection_uses_input_only_table() -> None:
    """DR entries carry NOOUTPUT and move by the INPUT_ONLY table: a client
    FIN on ESTABLISHED gives FIN_WAIT (120 s)."""
    lab = Lab("rr", fwd=CONN_F_DROUTE, n=1)
    a = lab.dests[0]
    v = lab.send(lab.flow(), SYN)
    cp = v.conn
    assert cp is not None and cp.flags & CONN_F_NOOUTPUT
    assert cp.state == TCP_S_SYN_RECV and cp.timeout == 60 and counts(a) == (1, 0, 0)
    lab.send(lab.flow(), ACK)
    assert cp.state == TCP_S_ESTABLISHED and cp.expires == 900
    lab.send(lab.flow(), FIN | ACK)
    assert cp.state == TCP_S_FIN_WAIT and cp.timeout == 120
    assert cp.flags & CONN_F_INACTIVE and counts(a) == (0, 1, 0)


def test_nat_connection_uses_input_table() -> None:
    """NAT entries use INPUT: a client FIN on ESTABLISHED gives CLOSE_WAIT (60 s)."""
    lab = Lab("rr", fwd=CONN_F_MASQ, n=1)
    a = lab.dests[0]
    cp = handshake(lab, lab.flow())
    assert not cp.flags & CONN_F_NOOUTPUT
    lab.send(lab.flow(), FIN | ACK)
    assert cp.state == TCP_S_CLOSE_WAIT and cp.timeout == 60 and counts(a) == (0, 1, 0)


def test_reply_clears_nooutput_for_good() -> None:
    """The first reply seen on a DR entry clears NOOUTPUT and is itself moved
    by the OUTPUT table; later client segments use INPUT."""
    lab = Lab("rr", fwd=CONN_F_DROUTE, n=1)
    cp = handshake(lab, lab.flow())
    lab.reply(cp, FIN | ACK)  # OUTPUT fin on ES -> FIN_WAIT
    assert not cp.flags & CONN_F_NOOUTPUT and cp.state == TCP_S_FIN_WAIT
    lab.send(lab.flow(), FIN | ACK)  # INPUT fin on FW -> TIME_WAIT (INPUT_ONLY would keep FW)
    assert cp.state == TCP_S_TIME_WAIT


def test_segment_without_flags_closes() -> None:
    lab = Lab("rr", n=1)
    cp = handshake(lab, lab.flow())
    lab.send(lab.flow(), 0)
    assert cp.state == TCP_S_CLOSE and cp.timeout == 10 and counts(lab.dests[0]) == (0, 1, 0)


def test_each_packet_rearms_with_state_timeout() -> None:
    lab = Lab("rr", n=1)
    cp = handshake(lab, lab.flow())
    lab.sleep_until(500)
    lab.send(lab.flow(), ACK)
    assert cp.expires == 1400
    lab.sleep_until(1399.5)
    assert cp.hashed
    lab.sleep_until(1400.5)
    assert not cp.hashed and counts(lab.dests[0]) == (0, 0, 0)


# ----------------------------------------------------------------------------
# which segments may open a connection (tcp_conn_schedule)
# ----------------------------------------------------------------------------
def test_ack_without_entry_not_scheduled_unless_sloppy() -> None:
    lab = Lab("rr", n=1)
    v = lab.send(lab.flow(), ACK)
    assert v.action == ACCEPT and len(lab.d.conns) == 0
    lab.sysctl.sloppy_tcp = 1
    v = lab.send(lab.flow(), ACK)
    assert v.action == FORWARD and v.new and v.conn is not None
    assert v.conn.state == TCP_S_ESTABLISHED and v.conn.timeout == 900
    assert counts(lab.dests[0]) == (1, 0, 0)


def test_sloppy_fin_creates_closed_entry() -> None:
    lab = Lab("rr", n=1)
    lab.sysctl.sloppy_tcp = 1
    v = lab.send(lab.flow(), FIN | ACK)
    assert v.conn is not None and v.conn.state == TCP_S_CLOSE and v.conn.timeout == 10
    assert counts(lab.dests[0]) == (0, 1, 0)


@pytest.mark.parametrize("sloppy", [0, 1])
@pytest.mark.parametrize("flags", [RST, RST | SYN, RST | ACK, RST | FIN])
def test_rst_never_schedules(sloppy: int, flags: int) -> None:
    lab = Lab("rr", n=1)
    lab.sysctl.sloppy_tcp = sloppy
    v = lab.send(lab.flow(), flags)
    assert v.action == ACCEPT and v.conn is None and len(lab.d.conns) == 0
    assert lab.svc.stats.conns == 0


def test_no_real_server_rejects() -> None:
    lab = Lab("rr", n=1)
    lab.edit(lab.dests[0], weight=0)
    assert lab.send(lab.flow(), SYN).action == REJECT
    assert lab.send(lab.flow(vport=81), SYN).action == ACCEPT  # not a service


# ----------------------------------------------------------------------------
# dest trash (kernel-notes §6)
# ----------------------------------------------------------------------------
def test_trash_resurrection_keeps_counters_and_stats() -> None:
    """A real server deleted and re-added within the trash period comes back
    as the same object, with its connection counters and statistics, and
    its old entries are forwarded again."""
    lab = Lab("rr", proto=IPPROTO_UDP, port=53)
    a = lab.dests[1]
    cp = lab.send(lab.flow()).conn
    assert cp is not None and cp.dest is a
    lab.sleep_until(10)
    lab.delete(a)
    assert not a.flags & DEST_F_AVAILABLE and a in lab.ipvs.trash
    lab.sleep_until(100)
    assert lab.send(lab.flow()).action == DROP
    back = lab.add(1)
    assert back is a and a.flags & DEST_F_AVAILABLE and a not in lab.ipvs.trash
    assert counts(a) == (0, 1, 0) and a.stats.conns == 1 and a.refcnt == 1
    v = lab.send(lab.flow())
    assert v.action == FORWARD and v.conn is cp and not v.new
    assert a in lab.svc.destinations and lab.svc.destinations[0] is a


def test_trash_purged_after_period() -> None:
    """Without references a trashed server is freed: re-adding it later
    gives a fresh server with zero statistics."""
    lab = Lab("rr", proto=IPPROTO_UDP, port=53)
    a = lab.dests[1]
    lab.send(lab.flow())
    lab.sleep_until(5)
    lab.delete(a)
    lab.sleep_until(305.5)  # the entry expired at 300
    assert a.refcnt == 0
    lab.sleep_until(305.5 + 180 + 60)
    assert a not in lab.ipvs.trash
    fresh = lab.add(1)
    assert fresh is not a and fresh.stats.conns == 0 and counts(fresh) == (0, 0, 0)


def test_trash_referenced_dest_is_kept() -> None:
    """A trashed server still referenced by an entry is never freed."""
    lab = Lab("rr", n=1)
    a = lab.dests[0]
    handshake(lab, lab.flow())  # ESTABLISHED: 900 s
    lab.delete(a)
    lab.sleep_until(850)
    assert a in lab.ipvs.trash and a.refcnt == 1
    assert lab.add(0) is a


def test_trash_kernel_idle_start_timing() -> None:
    """Entry made at t=0 (expires 300), server deleted at t=5: the kernel's
    trash timer runs at 65, 125, ..., 305 (first tick without references:
    idle_start), 365, 425 (freed), so a re-add at 420 still resurrects."""
    lab = Lab("rr", proto=IPPROTO_UDP, port=53)
    a = lab.dests[1]
    lab.send(lab.flow())
    lab.sleep_until(5)
    lab.delete(a)
    lab.sleep_until(420)
    assert lab.add(1) is a


def test_held_segment_matches_a_table_hit_and_drops_for_a_deleted_server() -> None:
    """``held_segment`` (the NAT proxy's path for entries it holds) moves an
    entry exactly as the same segment found through ``process_in`` /
    ``process_out`` would, minus the byte counters; once the real server is
    deleted the segment is dropped and the entry is left as it was."""
    from lvs.proto_tcp import DIR_INPUT, DIR_OUTPUT

    held, seen = Lab("rr"), Lab("rr")
    cp = held.send(held.flow(), SYN).conn
    ref = seen.send(seen.flow(), SYN).conn
    assert cp is not None and ref is not None
    for now, direction, flags in (
        (1.0, DIR_INPUT, ACK),
        (2.0, DIR_OUTPUT, FIN | ACK),
        (3.0, DIR_INPUT, FIN | ACK),
    ):
        held.now = seen.now = now
        assert held.d.held_segment(cp, direction, flags, now)
        if direction == DIR_INPUT:
            seen.send(seen.flow(), flags)
        else:
            seen.d.process_out(ref, now, flags)
        assert (cp.state, cp.timeout, cp.expires, cp.in_pkts) == (
            ref.state,
            ref.timeout,
            ref.expires,
            ref.in_pkts,
        )
        assert counts(cp.dest) == counts(ref.dest)
    assert cp.state == TCP_S_TIME_WAIT  # SYN_RECV, ESTABLISHED, FIN_WAIT, TIME_WAIT
    # the byte and packet counters are the caller's
    assert cp.dest.stats.inpkts == 1 and ref.dest.stats.inpkts == 3
    dest = cp.dest
    state, expires = cp.state, cp.expires
    held.delete(dest)
    assert not held.d.held_segment(cp, DIR_INPUT, RST, 4.0)
    assert (cp.state, cp.expires) == (state, expires)


# -- the doors a data plane uses instead of touching entries (Director) -----------------
def test_refresh_pushes_the_timer_like_conn_put_and_never_back() -> None:
    """A batching forwarder's traffic: ``ip_vs_conn_put`` once, at the sweep."""
    lab = Lab(n=1)
    cp = handshake(lab, lab.flow())
    timeout = cp.timeout
    lab.now = 10.0
    assert lab.d.refresh(cp, lab.now)
    assert cp.expires == 10.0 + timeout
    cp.expires = 10.0 + 2 * timeout  # a later expiry stays
    assert lab.d.refresh(cp, 11.0)
    assert cp.expires == 10.0 + 2 * timeout
    lab.sleep_until(10.0 + 2 * timeout + 1)  # the timer fires when the entry says
    assert not cp.hashed
    assert not lab.d.refresh(cp, lab.now)


def test_add_bytes_unbound_counts_for_a_server_the_entry_left() -> None:
    """Traffic batched before the entry expired still counts, for the real
    server it went to, its service and the totals."""
    lab = Lab(proto=IPPROTO_UDP, n=1)
    dest = lab.dests[0]
    cp = lab.send(lab.flow()).conn
    assert cp is not None
    before = (dest.stats.inbytes, lab.svc.stats.inbytes, lab.ipvs.stats.inbytes)
    lab.delete(dest)  # unavailable: add_bytes would count nothing
    lab.d.add_bytes(cp, 100, 0, 1, 0)
    assert dest.stats.inbytes == before[0]
    lab.d.add_bytes_unbound(dest, 100, 30, 1, 2)
    assert (dest.stats.inbytes, lab.svc.stats.inbytes, lab.ipvs.stats.inbytes) == tuple(b + 100 for b in before)
    assert dest.stats.outpkts == lab.ipvs.stats.outpkts == 2


def test_in_icmp_counts_a_related_error_for_its_entry() -> None:
    """ip_vs_in_icmp: the quoted connection's entry gets one inbound packet
    (stats, in_pkts), no state change; a bad checksum drops; no entry, or an
    entry of another data plane's method, is the local stack's."""
    lab = Lab(fwd=CONN_F_DROUTE, n=1)
    flow = lab.flow()
    cp = handshake(lab, flow)
    dest = lab.dests[0]
    state, expires, in_pkts = cp.state, cp.expires, cp.in_pkts
    inpkts, inbytes = dest.stats.inpkts, dest.stats.inbytes
    direct = (CONN_F_DROUTE,)
    key = (IPPROTO_TCP, AF_INET, CLIENT, 40000, VIP, 80)
    assert lab.d.in_icmp(*key[:3], 40001, *key[4:], 56, True, direct).action == ACCEPT
    assert lab.d.in_icmp(*key, 56, True, (CONN_F_MASQ,)).action == ACCEPT
    v = lab.d.in_icmp(*key, 56, False, direct)
    assert v.action == DROP and (cp.in_pkts, dest.stats.inpkts) == (in_pkts, inpkts)
    v = lab.d.in_icmp(*key, 56, True, direct)
    assert v.action == FORWARD and v.conn is cp
    assert (cp.in_pkts, dest.stats.inpkts, dest.stats.inbytes) == (in_pkts + 1, inpkts + 1, inbytes + 56)
    assert (cp.state, cp.expires) == (state, expires)
