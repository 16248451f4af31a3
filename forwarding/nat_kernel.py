"""The kernel NAT engine (``lvsd --nat-engine kernel``, EXPERIMENTAL):
decisions in Python, bytes in netfilter.

Kernel IPVS never terminates a NAT connection: it rewrites addresses.  This
engine does the same with netfilter's NAT on hosts without ip_vs: only the
first packet of each new flow of a served ``-m`` service (a TCP SYN, the
first UDP datagram of a conntrack entry) reaches lvsd, through NFQUEUE; the
core decides as for every other plane (``Director.process_in``: persistence,
scheduler, thresholds, conn_reuse_mode), and the verdict gives the packet a
mark that names the chosen real server.  An nft map from mark to
(address, port) does the DNAT and conntrack carries every later packet of
the flow, both ways, without Python.  Real servers see the client's address
(true ``-m``): their replies must be routed back through the director, as
with kernel IPVS, and the director must forward (``ip_forward``).

The table ``inet pylvs_nat`` (plus the control socket's name, as the DR/TUN
plane's ``pylvs`` table):

* ``decide_pre`` (prerouting, priority mangle + 10: after conntrack and the
  user's mangle marking; clients on the network) and ``decide_out`` (output,
  same priority; local clients): a packet of a conntrack entry in state new
  and not yet destination-NATed, to a served (VIP, protocol, port), jumps to
  ``enqueue``;
* ``enqueue``: one rule, the xtables ``NFQUEUE`` target through nft_compat
  (this kernel has no native nft ``queue``; :func:`forwarding.netfilter.
  queue_rule_batch`), without bypass: while no lvsd is bound, new flows are
  dropped and their clients retry (a SYN is sent again after 1 s, 3 s...),
  established flows are not touched;
* ``reject_pre`` / ``reject_out`` (priority mangle + 20): the reject mark
  (no real server: the core says REJECT) gets an ICMP port unreachable, as
  ``ip_vs_leave`` sends;
* ``nat_pre`` / ``nat_out`` (dstnat): ``dnat to meta mark map @dst4|@dst6``;
* ``clear_pre`` / ``clear_out`` (dstnat + 1): the mark is set back to 0 (the
  packet's own mark, if it had one, is not restored).

Marks are ``0x4C56xxxx`` ("LV"): one per translation target (family, real
server address, port), allocated when a served service gets the real server
and never reused while lvsd runs (65534 of them); ``0x4C56FFFF`` rejects.

Start, crash, stop: :meth:`KernelNatPlane.start` replaces a table left by an
earlier lvsd (crash or SIGKILL) in one transaction, so the NAT hooks never
go away in between and the flows the old lvsd set up keep being translated
(their bindings live in conntrack).  A clean stop deletes the table and its
queue rule: flows through it are then no longer translated.

State after the first packet: conntrack's events (:mod:`forwarding.ct_events`)
move each entry to the TCP state conntrack reached (``Director.
kernel_tcp_state``: ESTABLISHED, FIN_WAIT, TIME_WAIT...; so ActiveConn and
InActConn follow the kernel), and a flow's end (conntrack DESTROY) adds its
packet and byte counters (``nf_conntrack_acct``, switched on in the
namespace) and expires its entry.  A real server that is no longer
available (deleted) gets its flows' conntrack entries deleted, so their
next packets meet the core's verdict as in the kernel (dropped, or passed
on with expire_nodest_conn).

Not done yet: counters of a flow arrive only when it ends (long flows do
not show in ``--rate`` meanwhile); the IPVS timeouts are not imposed on the
conntrack entries (an IPVS entry may expire while conntrack still
translates its flow, whose later counters are then lost); one-packet scheduling (conntrack keeps the binding);
firewall-mark, wildcard (0.0.0.0) and port-0 services; events of every
conntrack entry of the namespace are read (no kernel-side filter yet); the
short-connection TIME_WAIT collision after DNAT (issue 16).  The README
says the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from lvs.addr import format_ip
from lvs.conn import (
    TCP_S_CLOSE,
    TCP_S_CLOSE_WAIT,
    TCP_S_ESTABLISHED,
    TCP_S_FIN_WAIT,
    TCP_S_LAST_ACK,
    TCP_S_SYN_RECV,
    TCP_S_TIME_WAIT,
)
from lvs.constants import CONN_F_FWD_MASK, CONN_F_MASQ, CONN_F_TEMPLATE, DEST_F_AVAILABLE, IPPROTO_TCP
from lvs.core import ACCEPT, DROP, FORWARD, REJECT, Director
from lvs.model import Flow, Service

from . import ct_events, packet
from .nat_common import ServedAddress
from .nat_services import NatServices
from .netfilter import (
    NftError,
    delete_table,
    nft_available,
    queue_rule_batch,
    run_script,
    send_batch,
    table_exists,
)
from .nfqueue import NF_ACCEPT, NF_DROP, NfQueue, bind_free_queue

log = logging.getLogger("lvsd.natk")

#: the first NFQUEUE number the kernel NAT engine tries ("Lv"; the DR/TUN
#: plane starts at 0x4C56)
QUEUE_BASE = 0x4C76
MARK_BASE = 0x4C560000
MARK_MASK = 0xFFFF0000
REJECT_MARK = 0x4C56FFFF
ENQUEUE_CHAIN = "enqueue"

_PROTO_NAMES = {6: "tcp", 17: "udp"}

#: conntrack's TCP state -> the IPVS state the entry takes (SYN_SENT and
#: SYN_SENT2 leave it where the first packet put it)
CT_TO_IPVS = {
    ct_events.CT_TCP_SYN_RECV: TCP_S_SYN_RECV,
    ct_events.CT_TCP_ESTABLISHED: TCP_S_ESTABLISHED,
    ct_events.CT_TCP_FIN_WAIT: TCP_S_FIN_WAIT,
    ct_events.CT_TCP_CLOSE_WAIT: TCP_S_CLOSE_WAIT,
    ct_events.CT_TCP_LAST_ACK: TCP_S_LAST_ACK,
    ct_events.CT_TCP_TIME_WAIT: TCP_S_TIME_WAIT,
    ct_events.CT_TCP_CLOSE: TCP_S_CLOSE,
}
#: first packets' lengths kept for the byte counters at most (see _first_len)
MAX_FIRST_LEN = 1 << 20

#: what this engine does not do yet, shown in lvsadm --status
NOT_YET = (
    "nat-engine kernel is EXPERIMENTAL: states follow conntrack's events, counters arrive when a flow ends, "
    "IPVS timeouts are not imposed on conntrack, "
    "no fwmark/wildcard/port-0 services, no fix yet for short connections meeting TIME_WAIT"
)


class KernelNatUnavailable(RuntimeError):
    """The kernel engine cannot start here (the text says why)."""


def ruleset(table: str) -> str:
    """The whole table, defined afresh in one transaction (adding, then
    deleting any previous one, then defining: the NAT hooks stay registered
    throughout, so the old flows' translations go on)."""
    m = f"meta mark & 0x{MARK_MASK:08x} == 0x{MARK_BASE:08x}"
    match4 = "ct state new ct status & dnat == 0 ip daddr . meta l4proto . th dport @svc4"
    match6 = "ct state new ct status & dnat == 0 ip6 daddr . meta l4proto . th dport @svc6"

    def chains(suffix: str, hook: str) -> str:
        return f"""
    chain decide_{suffix} {{
        type filter hook {hook} priority mangle + 10; policy accept;
        {match4} goto {ENQUEUE_CHAIN}
        {match6} goto {ENQUEUE_CHAIN}
    }}
    chain reject_{suffix} {{
        type filter hook {hook} priority mangle + 20; policy accept;
        meta mark 0x{REJECT_MARK:08x} meta mark set 0 reject with icmpx port-unreachable
    }}
    chain nat_{suffix} {{
        type nat hook {hook} priority -100; policy accept;
        {m} meta nfproto ipv4 meta l4proto {{ tcp, udp }} dnat ip to meta mark map @dst4
        {m} meta nfproto ipv6 meta l4proto {{ tcp, udp }} dnat ip6 to meta mark map @dst6
    }}
    chain clear_{suffix} {{
        type filter hook {hook} priority -99; policy accept;
        {m} meta mark set 0
    }}"""

    return f"""add table inet {table}
delete table inet {table}
table inet {table} {{
    set svc4 {{ type ipv4_addr . inet_proto . inet_service; }}
    set svc6 {{ type ipv6_addr . inet_proto . inet_service; }}
    map dst4 {{ type mark : ipv4_addr . inet_service; }}
    map dst6 {{ type mark : ipv6_addr . inet_service; }}
    chain {ENQUEUE_CHAIN} {{
    }}{chains("pre", "prerouting")}{chains("out", "output")}
}}
"""


Target = tuple[int, int, int]  # (family, address, port) of a real server


def elements_script(table: str, services: list[tuple[int, int, int, int]], marks: dict[Target, int]) -> str:
    """One transaction that replaces the served (VIP, protocol, port) sets
    and the mark -> real server maps."""
    svc: dict[int, list[str]] = {4: [], 6: []}
    dst: dict[int, list[str]] = {4: [], 6: []}
    for af, protocol, addr, port in services:
        v = 6 if af == socket.AF_INET6 else 4
        svc[v].append(f"{format_ip(af, addr)} . {_PROTO_NAMES[protocol]} . {port}")
    for (af, addr, port), mark in marks.items():
        v = 6 if af == socket.AF_INET6 else 4
        dst[v].append(f"0x{mark:08x} : {format_ip(af, addr)} . {port}")
    lines = []
    for v in (4, 6):
        for name, elems in ((f"svc{v}", svc[v]), (f"dst{v}", dst[v])):
            lines.append(f"flush {'set' if name.startswith('svc') else 'map'} inet {table} {name}")
            if elems:
                lines.append(f"add element inet {table} {name} {{ {', '.join(sorted(set(elems)))} }}")
    return "\n".join(lines) + "\n"


def check_possible(nft: str = "nft") -> None:
    """Raise :class:`KernelNatUnavailable` with the reason when this host
    cannot run the engine (before anything is changed)."""
    if os.geteuid() != 0:
        raise KernelNatUnavailable("it needs root (CAP_NET_ADMIN) for nftables and NFQUEUE")
    if not nft_available(nft):
        raise KernelNatUnavailable("the nft tool is missing (apt package nftables; `make netdeps`)")


class KernelNatPlane(NatServices):
    """The kernel NAT engine of one lvsd (see the module text)."""

    name = "nat-kernel"

    def __init__(
        self,
        director: Director,
        now_fn: Callable[[], float],
        *,
        manage_vips: bool = True,
        table: str = "pylvs_nat",
        queue_base: int = QUEUE_BASE,
        nft: str = "nft",
    ) -> None:
        super().__init__(director, now_fn, manage_vips=manage_vips)
        self.table = table
        self.queue_base = queue_base
        self.nft = nft
        self.queue: NfQueue | None = None
        #: the table is ours to delete at close (None after a hand-over)
        self.guard: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.marks: dict[Target, int] = {}
        self._next_mark = MARK_BASE + 1
        self._written: tuple[frozenset[Any], frozenset[Any]] | None = None
        self._refresh_soon = False
        self.queued = 0
        self.forwarded = 0
        self.rejected = 0
        self.dropped = 0
        self.accepted = 0
        self.replaced_table = False
        self.ct: ct_events.ConntrackEvents | None = None
        self.ct_accounting = False
        #: the first packet's IP length by original tuple: process_in counted
        #: it, conntrack's counters at the end include it
        self._first_len: dict[tuple[int, int, int, int, int, int], int] = {}
        self.ct_states = 0
        #: flows whose conntrack entries were deleted for an unavailable real server
        self._ended: set[tuple[int, int, int, int, int, int]] = set()
        self.ct_ended = 0

    # -- life cycle ------------------------------------------------------------------
    def start(self) -> None:
        """Bind a queue, (re)define the table, serve the current table.
        Raises :class:`KernelNatUnavailable` (nothing left behind) when the
        host cannot do it."""
        check_possible(self.nft)
        self.loop = asyncio.get_running_loop()
        try:
            self.queue = bind_free_queue(self.queue_base)
        except OSError as exc:
            raise KernelNatUnavailable(f"cannot bind an NFQUEUE queue (nfnetlink_queue): {exc}") from None
        self.replaced_table = table_exists(self.table, self.nft)
        try:
            run_script(ruleset(self.table), self.nft)
            self.guard = self.table
            send_batch(queue_rule_batch(self.table, ENQUEUE_CHAIN, self.queue.queue_num), acks=2)
        except (NftError, OSError) as exc:
            self._close_queue()
            if self.guard is not None:
                delete_table(self.table, self.nft)
                self.guard = None
            raise KernelNatUnavailable(f"cannot install nftables table inet {self.table}: {exc}") from None
        if self.replaced_table:
            log.warning("replaced the nftables table inet %s left by an earlier lvsd (crash or kill?); "
                        "its flows keep their translation in conntrack", self.table)  # fmt: skip
        self.loop.add_reader(self.queue.fileno(), self._on_queue)
        try:
            self.ct = ct_events.ConntrackEvents()
        except OSError as exc:
            self.problem(f"kernel NAT engine: no conntrack events ({exc}): entries keep their first state",
                         "ct")  # fmt: skip
        else:
            self.ct_accounting = ct_events.enable_accounting()
            self.loop.add_reader(self.ct.fileno(), self._on_ct_events)
        self.follow()
        self._refresh()
        log.info("kernel NAT engine: table inet %s, NFQUEUE %d", self.table, self.queue.queue_num)

    def _close_queue(self) -> None:
        if self.queue is not None:
            if self.loop is not None:
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_reader(self.queue.fileno())
            self.queue.close()
            self.queue = None

    def shutdown(self) -> None:
        """Stop deciding; the table goes too unless ``guard`` was cleared (a
        successor lvsd owns it)."""
        self.unfollow()
        self._close_queue()
        if self.ct is not None:
            if self.loop is not None:
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_reader(self.ct.fileno())
            self.ct.close()
            self.ct = None
        if self.guard is not None:
            with contextlib.suppress(NftError, OSError):
                delete_table(self.guard, self.nft)
            self.guard = None

    def stop_accepting(self) -> None:
        self.guard = None
        self.vips.added.clear()
        self.shutdown()

    async def close(self) -> None:
        self.shutdown()
        self.vips.close(keep=self.guard is None and not self.vips.added)
        await asyncio.sleep(0)

    def describe(self) -> str:
        q = self.queue
        return (
            f"nat (kernel engine, EXPERIMENTAL): {len(self.served)} services in table inet {self.table}, "
            f"NFQUEUE {q.queue_num if q else '-'}; first packets {self.queued}: forwarded {self.forwarded}, "
            f"rejected {self.rejected}, dropped {self.dropped}, passed {self.accepted}; "
            f"{len(self.marks)} real-server marks; conntrack events {self.ct.events if self.ct else 'off'}: "
            f"{self.ct_states} state changes, {self.ct_ended} flows ended"
            f"{'' if self.ct_accounting else ' (no conntrack accounting: counters cover first packets)'}"
        )

    def warnings(self) -> list[str]:
        out = super().warnings()
        if self.served:
            out.append(NOT_YET)
        return out

    # -- serving (NatServices) ------------------------------------------------------------
    def open_service(self, svc: Service, address: ServedAddress) -> ServedAddress:
        if address.host in ("0.0.0.0", "::"):
            raise OSError(errno.EOPNOTSUPP, "the kernel NAT engine does not serve wildcard addresses yet")
        return address

    def close_service(self, served: ServedAddress) -> None:
        pass

    def table_changed(self) -> None:
        if not self._refresh_soon and self.loop is not None:
            self._refresh_soon = True
            self.loop.call_soon(self._refresh)

    def _end_unavailable(self) -> None:
        """``ip_vs_in_hook`` drops (or, with expire_nodest_conn, expires) the
        packets of an entry whose real server is no longer available
        (deleted, or its service gone); here conntrack would go on
        translating them, so their conntrack entries are deleted: the
        flow's next packet starts a new conntrack entry, is queued, and the
        core gives it the kernel's verdict (DROP, or the entry expired and
        the packet, not a SYN, passed to the local stack)."""
        doomed = []
        for cp in self.director.conns:
            dest = cp.dest
            if dest is None or dest.flags & DEST_F_AVAILABLE or cp.flags & CONN_F_FWD_MASK != CONN_F_MASQ:
                continue
            flow = (cp.af, cp.protocol, cp.caddr, cp.cport, cp.vaddr, cp.vport)
            if cp.flags & CONN_F_TEMPLATE or flow in self._ended:
                continue
            self._ended.add(flow)
            doomed.append(flow)
        if doomed:
            try:
                n = ct_events.delete_entries(doomed)
            except OSError as exc:
                log.warning("cannot delete the conntrack entries of removed real servers: %s", exc)
                return
            log.info("real servers no longer available: %d of %d conntrack entries deleted", n, len(doomed))
        if len(self._ended) > MAX_FIRST_LEN:
            self._ended.clear()

    def _mark_of(self, af: int, addr: int, port: int) -> int:
        key = (af, addr, port)
        mark = self.marks.get(key)
        if mark is None:
            if self._next_mark >= REJECT_MARK:
                return 0
            mark = self.marks[key] = self._next_mark
            self._next_mark += 1
        return mark

    def _refresh(self) -> None:
        """Bring the sets and maps in step with the served services and
        their real servers (one nft transaction when something changed)."""
        self._refresh_soon = False
        if self.guard is None:
            return
        if len(self.director.conns):
            self._end_unavailable()
        services = []
        for key in self.served:
            services.append((key.af, key.protocol, key.addr, key.port))
            svc = self.director.ipvs.services.get(key)
            if svc is not None:
                for d in svc.destinations:
                    self._mark_of(d.af, d.addr, d.port or key.port)
        state = (frozenset(services), frozenset(self.marks.items()))
        if state == self._written:
            return
        try:
            run_script(elements_script(self.table, services, self.marks), self.nft)
        except NftError as exc:
            self.problem(f"kernel NAT engine: cannot update table inet {self.table}: {exc}", "nft")
            return
        self.problems.pop("nft", None)
        self._written = state

    # -- the first packets -----------------------------------------------------------------
    def _on_queue(self) -> None:
        q = self.queue
        if q is None:
            return
        out = bytearray()
        for _ in range(16):  # bounded: other work gets the loop between batches
            batch = q.receive()
            if not batch:
                break
            now = self.now()
            for item in batch:
                verdict, mark = self._decide(item.payload, item.mark, now)
                out += q.marked_verdict_message(item.packet_id, verdict, mark)
            q.send_raw(bytes(out))
            out.clear()

    def _decide(self, payload: memoryview, pkt_mark: int, now: float) -> tuple[int, int]:
        """One first packet: (netfilter verdict, mark to give it)."""
        self.queued += 1
        p = packet.parse_ip(payload)
        if p is None or p[packet.P_FRAG] == packet.FRAG_LATER:
            self.accepted += 1
            return NF_ACCEPT, pkt_mark
        flow = Flow(p[packet.P_AF], p[packet.P_PROTO], p[packet.P_SADDR], p[packet.P_SPORT],
                    p[packet.P_DADDR], p[packet.P_DPORT])  # fmt: skip
        v = self.director.process_in(flow, now, p[packet.P_TCPFLAGS], p[packet.P_IPLEN])
        if v.action == FORWARD and v.conn is not None:
            cp = v.conn
            if self.ct_accounting and len(self._first_len) < MAX_FIRST_LEN:
                key = (flow.protocol, flow.af, flow.caddr, flow.cport, flow.vaddr, flow.vport)
                self._first_len[key] = p[packet.P_IPLEN]
            mark = self.marks.get((cp.daf, cp.daddr, cp.dport))
            if mark is None:
                self._refresh()  # a real server added since the last refresh
                mark = self.marks.get((cp.daf, cp.daddr, cp.dport))
            if mark:
                self.forwarded += 1
                return NF_ACCEPT, mark
            self.dropped += 1
            return NF_DROP, pkt_mark
        if v.action == REJECT:
            self.rejected += 1
            return NF_ACCEPT, REJECT_MARK
        if v.action == DROP:
            self.dropped += 1
            return NF_DROP, pkt_mark
        assert v.action == ACCEPT
        self.accepted += 1
        return NF_ACCEPT, pkt_mark

    # -- what conntrack reports ------------------------------------------------------------
    def _on_ct_events(self) -> None:
        """Conntrack events of the flows this engine set up: TCP states move
        the entries (``Director.kernel_tcp_state``); a flow's end adds its
        counters (when accounting is on) and expires its entry (the kernel
        no longer translates it)."""
        ct = self.ct
        if ct is None:
            return
        now = self.now()
        lookup = self.director.conns.lookup_in
        for ev in ct.receive():
            cp = lookup(ev.protocol, ev.af, ev.saddr, ev.sport, ev.daddr, ev.dport)
            if cp is None or cp.flags & CONN_F_FWD_MASK != CONN_F_MASQ:
                continue
            if ev.kind == ct_events.DESTROY:
                key = (ev.protocol, ev.af, ev.saddr, ev.sport, ev.daddr, ev.dport)
                first = self._first_len.pop(key, None)
                if ev.orig_packets > 0 and first is not None:
                    self.director.add_bytes(
                        cp, ev.orig_bytes - first, max(ev.reply_bytes, 0), ev.orig_packets - 1,
                        max(ev.reply_packets, 0), now,
                    )  # fmt: skip
                self.ct_ended += 1
                self.director.expire_now(cp, now)
            elif ev.protocol == IPPROTO_TCP and ev.tcp_state in CT_TO_IPVS:
                state = CT_TO_IPVS[ev.tcp_state]
                if state != cp.state and self.director.kernel_tcp_state(cp, state, now):
                    self.ct_states += 1


__all__ = [
    "KernelNatPlane",
    "KernelNatUnavailable",
    "check_possible",
    "elements_script",
    "ruleset",
]
