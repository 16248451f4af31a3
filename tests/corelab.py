"""A director with a few real servers, driven packet by packet on a virtual
clock: the shared lab of the core decision tests (test_core_decisions, test_defense)."""

from __future__ import annotations

from lvs.conn import (
    TCP_S_CLOSE_WAIT,
    TCP_S_ESTABLISHED,
    TCP_S_TIME_WAIT,
    Conn,
)
from lvs.constants import (
    AF_INET,
    CONN_F_MASQ,
    CONN_F_TEMPLATE,
    IPPROTO_IP,
    IPPROTO_TCP,
)
from lvs.core import FORWARD, Director, Verdict
from lvs.ctl import IPVS, DestSpec, ServiceSpec
from lvs.model import Dest, Flow, ServiceKey
from lvs.proto_tcp import ACK, FIN, SYN
from tests.helpers import ip

VIP = ip("10.0.0.1")
CLIENT = ip("172.16.1.5")
RS = [ip(f"192.168.0.{i}") for i in range(1, 9)]


class Lab:
    """One service with ``n`` real servers on a fresh table, and helpers to
    send packets.  Real servers are added in order RS[0], RS[1], ... so the
    kernel list (newest first) is ``dests[::-1]``."""

    def __init__(
        self,
        sched: str = "rr",
        proto: int = IPPROTO_TCP,
        port: int = 80,
        flags: int = 0,
        timeout: int = 0,
        netmask: int | None = None,
        fwd: int = CONN_F_MASQ,
        n: int = 2,
        fwmark: int = 0,
        classic: bool = False,
        u: int = 0,
        l: int = 0,  # noqa: E741 - ipvsadm's -y
    ) -> None:
        self.ipvs = IPVS(classic=classic)
        self.d = Director(self.ipvs)
        self.sysctl = self.ipvs.sysctl
        self.port = port
        self.proto = proto
        self.fwmark = fwmark
        if fwmark:
            self.key = ServiceKey(AF_INET, IPPROTO_IP, 0, 0, fwmark)
        else:
            self.key = ServiceKey(AF_INET, proto, VIP, port)
        self.svc = self.ipvs.add_service(ServiceSpec(self.key, sched, flags, timeout, netmask))
        self.fwd = fwd
        self.now = 0.0
        #: how many distinct clients _fill has used
        self.clients = 0
        self.dests = [self.add(i, u=u, l=l) for i in range(n)]

    def add(self, i: int, weight: int = 1, u: int = 0, l: int = 0) -> Dest:  # noqa: E741
        return self.ipvs.add_dest(
            self.key,
            DestSpec(AF_INET, RS[i], self.port, self.fwd, weight, u, l),
            self.now,
        )

    def edit(self, dest: Dest, weight: int | None = None, u: int | None = None, l: int | None = None) -> None:  # noqa: E741
        spec = DestSpec(
            AF_INET,
            dest.addr,
            dest.port,
            self.fwd,
            dest.weight if weight is None else weight,
            dest.u_threshold if u is None else u,
            dest.l_threshold if l is None else l,
        )
        self.ipvs.edit_dest(self.key, spec, self.now)

    def delete(self, dest: Dest) -> None:
        self.ipvs.del_dest(self.key, dest.af, dest.addr, dest.port, self.now)

    def flow(
        self, client: int = CLIENT, cport: int = 40000, proto: int | None = None, vport: int | None = None
    ) -> Flow:
        return Flow(
            AF_INET,
            self.proto if proto is None else proto,
            client,
            cport,
            VIP,
            self.port if vport is None else vport,
            self.fwmark,
        )

    def send(self, flow: Flow, flags: int = 0, length: int = 60) -> Verdict:
        return self.d.process_in(flow, self.now, flags, length)

    def reply(self, cp: Conn, flags: int = 0, length: int = 60) -> None:
        found = self.d.lookup_out(self.flow(cp.caddr, cp.cport, cp.protocol, cp.vport), cp.daddr, cp.dport)
        assert found is cp
        self.d.process_out(cp, self.now, flags, length)

    def sleep_until(self, t: float) -> None:
        self.d.advance(self.now, t)
        self.now = t

    def templates(self) -> list[Conn]:
        return [c for c in self.d.conns if c.flags & CONN_F_TEMPLATE]

    def conns(self) -> list[Conn]:
        return [c for c in self.d.conns if not c.flags & CONN_F_TEMPLATE]


def counts(dest: Dest) -> tuple[int, int, int]:
    return dest.activeconns, dest.inactconns, dest.persistconns


def handshake(lab: Lab, flow: Flow) -> Conn:
    """SYN in, SYN+ACK out (NAT only), ACK in: an ESTABLISHED entry."""
    v = lab.send(flow, SYN)
    assert v.action == FORWARD and v.conn is not None
    cp = v.conn
    if lab.fwd == CONN_F_MASQ:
        lab.reply(cp, SYN | ACK)
    lab.send(flow, ACK)
    assert cp.state == TCP_S_ESTABLISHED
    return cp


def time_wait(lab: Lab, flow: Flow) -> Conn:
    """A NAT connection closed by both ends: ES -FIN in-> CLOSE_WAIT
    -FIN out-> TIME_WAIT."""
    cp = handshake(lab, flow)
    lab.send(flow, FIN | ACK)
    assert cp.state == TCP_S_CLOSE_WAIT
    lab.reply(cp, FIN | ACK)
    assert cp.state == TCP_S_TIME_WAIT
    return cp


# ----------------------------------------------------------------------------
# persistence (kernel-notes §3 templates, §4 ip_vs_sched_persist)
# ----------------------------------------------------------------------------
