"""Decisions on packets (ip_vs_core.c): find or create the connection entry a
packet belongs to, move its protocol state, count it, expire entries.

The :class:`Director` is what forwarders and ``lvsadm simulate`` drive.  It
never touches a socket or a clock: callers pass the flow key, the TCP flags
and the packet length, and the current virtual time ``now``.
"""

from __future__ import annotations

import itertools
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from .addr import v6_prefix_mask
from .conn import (
    CTPL_S_ASSURED,
    TCP_S_CLOSE,
    TCP_S_ESTABLISHED,
    TCP_S_FIN_WAIT,
    TCP_S_NONE,
    TCP_S_SYN_RECV,
    TCP_S_SYNACK,
    TCP_S_TIME_WAIT,
    Conn,
    PeConn,
    client_key,
)
from .conntab import INVALID_PORT, ConnTable
from .constants import (
    AF_INET6,
    CONN_F_FWD_MASK,
    CONN_F_INACTIVE,
    CONN_F_MASQ,
    CONN_F_NOOUTPUT,
    CONN_F_ONE_PACKET,
    CONN_F_SYNC,
    CONN_F_TEMPLATE,
    DEST_F_AVAILABLE,
    DEST_F_OVERLOAD,
    IPPROTO_IP,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
)
from .ctl import IPVS
from .defense import Defense
from .model import Dest, Flow, Service
from .pe_sip import fill_param as pe_sip_fill_param
from .pe_sip import pe_key
from .proto_tcp import ACK, DIR_INPUT, DIR_INPUT_ONLY, DIR_OUTPUT, RST, SYN, is_active, next_state
from .stats import ESTIMATOR_PERIOD
from .sync import BACKUP_UPD_MASK, HZ, SyncEntry, SyncMaster

FTPPORT = 21
#: how long an entry that cannot go yet is kept before the next try
EXPIRE_RETRY = 60.0
#: the timeout of a new entry before its first state transition
INITIAL_TIMEOUT = 3.0
#: MAX_SCHEDULE_TIMEOUT / HZ on 64 bits: the longest timeout a synced entry keeps
MAX_SYNC_TIMEOUT = (2**63 - 1) // 250

# Verdicts of process_in.
ACCEPT = "accept"  # not ours: the packet goes on to the local stack
DROP = "drop"  # dropped silently
REJECT = "reject"  # no real server: ICMP port unreachable (a proxy resets)
FORWARD = "forward"  # send to conn's real server


@dataclass(slots=True)
class Verdict:
    """What to do with a packet: ``action`` and the entry it belongs to."""

    action: str
    conn: Conn | None = None
    new: bool = False


class Director:
    """The packet path of one IPVS table."""

    def __init__(self, ipvs: IPVS | None = None, table_seed: int = 0) -> None:
        """``table_seed``: the connection table's hash secret (ConnTable)."""
        self.ipvs = ipvs or IPVS()
        self.conns = ConnTable(table_seed)
        #: amemthresh/drop_entry/drop_packet/secure_tcp (lvs/defense.py),
        #: updated once a second by lvsd
        self.defense = Defense()
        self.defense_drops = 0
        self.defense_dropped_entries = 0
        self.ipvs.conns = self.conns
        self.ipvs.nodest_flush = self.expire_nodest_conns
        self._next_estimate = 0.0
        self._next_sched_tick = 0.0
        #: the sync daemon's master side (lvs.sync.SyncMaster) while one runs
        self.sync: SyncMaster | None = None

    # ------------------------------------------------------------------------
    # entries
    # ------------------------------------------------------------------------
    def conn_new(
        self,
        flow_af: int,
        protocol: int,
        caddr: int,
        cport: int,
        vaddr: int,
        vport: int,
        dest: Dest,
        dport: int,
        flags: int,
        fwmark: int,
        now: float,
        pe_name: str = "",
        pe_data: bytes | None = None,
    ) -> Conn:
        """``ip_vs_conn_new`` + ``ip_vs_bind_dest``: a new entry bound to ``dest``.

        It inherits the dest's forwarding flags, which always include INACTIVE,
        so it counts as inactive until its protocol state says otherwise.  With
        ``pe_data`` (a persistence engine's template, ``p->pe_data``) the entry
        carries the engine and its data and is hashed by the data.
        """
        conn_flags = dest.conn_flags
        if protocol != IPPROTO_UDP:
            conn_flags &= ~CONN_F_ONE_PACKET
        flags |= conn_flags
        if pe_data is None:
            cp = Conn(flow_af, protocol, caddr, cport, vaddr, vport, dest.af, dest.addr, dport, flags, fwmark)
        else:
            cp = PeConn(
                flow_af, protocol, caddr, cport, vaddr, vport, dest.af, dest.addr, dport, flags, fwmark,
                pe_name=pe_name, pe_data=pe_data,
            )  # fmt: skip
        cp.timeout = INITIAL_TIMEOUT
        cp.expires = now + INITIAL_TIMEOUT
        self._bind_dest(cp, dest)
        if not cp.flags & CONN_F_ONE_PACKET:
            self.conns.hash(cp)
        if self.sync is not None:
            cp.sync_mark = (int(now * HZ) & ~3) << 4  # sync_endtime = jiffies & ~3
        return cp

    # ------------------------------------------------------------------------
    # entries learnt from a sync master (ip_vs_proc_conn)
    # ------------------------------------------------------------------------
    def sync_find_dest(self, e: SyncEntry) -> Dest | None:
        """``ip_vs_find_dest``: this director's own real server for a synced
        entry: the service of (fwmark | protocol, vaddr, vport), then its dest
        at (daddr, dport); fwmark services of DR/TUN match the dest by
        address alone (port 0), as the kernel does."""
        svc = self.ipvs.find_service(e.af, e.protocol, e.vaddr, e.vport, e.fwmark)
        if svc is None:
            return None
        port = e.dport
        if e.fwmark and e.flags & CONN_F_FWD_MASK != CONN_F_MASQ:
            port = 0
        dest = svc.find_dest(e.af, e.daddr, port)
        if dest is None and port != e.dport:
            dest = svc.find_dest(e.af, e.daddr, port ^ e.dport)
        return dest

    def _sync_bind(self, cp: Conn, dest: Dest) -> None:
        """``ip_vs_bind_dest`` for a SYNC entry: the forwarding method and
        NOOUTPUT come from this director's dest; INACTIVE stays as sent."""
        conn_flags = dest.conn_flags
        if cp.protocol != IPPROTO_UDP:
            conn_flags &= ~CONN_F_ONE_PACKET
        if not cp.flags & CONN_F_TEMPLATE:
            conn_flags &= ~CONN_F_INACTIVE
        cp.flags = (cp.flags & ~(CONN_F_FWD_MASK | CONN_F_NOOUTPUT)) | conn_flags
        self._bind_dest(cp, dest)

    def _bind_dest(self, cp: Conn, dest: Dest) -> None:
        """The counting half of ``ip_vs_bind_dest``: the entry holds the dest,
        and a template counts as persistconns, any other entry as inactconns
        or activeconns by its INACTIVE flag (the overload threshold checked)."""
        cp.dest = dest
        cp.svc = dest.svc
        dest.refcnt += 1
        if cp.flags & CONN_F_TEMPLATE:
            dest.persistconns += 1
        else:
            if cp.flags & CONN_F_INACTIVE:
                dest.inactconns += 1
            else:
                dest.activeconns += 1
            overload = dest.flags & DEST_F_OVERLOAD
            self.ipvs.dest_conn_bound(dest)
            self._counts_changed(dest, overload != dest.flags & DEST_F_OVERLOAD)

    def _sync_lookup_template(self, e: SyncEntry) -> Conn | None:
        """``ip_vs_ct_in_get`` for a synced template (by its PE data when it
        has some)."""
        if e.pe_data:
            return self.lookup_pe_template(e.protocol, e.af, e.caddr, e.vaddr, e.vport, e.pe_name, e.pe_data)
        c = self.conns.chain(client_key(e.protocol, e.af, e.caddr, e.cport))
        while c is not None:
            if (
                c.flags & CONN_F_TEMPLATE
                and c.vport == e.vport
                and c.vaddr == e.vaddr
                and c.dport != INVALID_PORT
            ):
                return c
            c = c.hnext
        return None

    def sync_apply(self, e: SyncEntry, now: float) -> Conn | None:
        """``ip_vs_proc_conn``: create or update the entry a master sent.

        A connection already here with another real server is expired and
        replaced, unless the message is the old one's INACTIVE (then it is
        ignored: None).  An existing entry takes only the INACTIVE and
        sequence bits (its dest's counters follow INACTIVE), the state and
        the timeout.  A new one is bound to this director's own real server
        when it has one (``sync_find_dest``), else kept unbound.  Either way
        the entry is marked SYNC, its packet count set to sync_threshold and
        its timer armed with the sent timeout (v0: this director's protocol
        timeout for the state; templates 3 minutes)."""
        flags = e.flags | CONN_F_SYNC
        cp: Conn | None
        if not flags & CONN_F_TEMPLATE:
            cp = self.conns.lookup_in(e.protocol, e.af, e.caddr, e.cport, e.vaddr, e.vport)
            if cp is not None and (cp.dport != e.dport or cp.daddr != e.daddr):
                if flags & CONN_F_INACTIVE:
                    return None
                self.expire_now(cp, now)
                cp = None
        else:
            cp = self._sync_lookup_template(e)
        if cp is not None:
            dest = cp.dest
            if (cp.flags ^ flags) & CONN_F_INACTIVE and not flags & CONN_F_TEMPLATE and dest is not None:
                if flags & CONN_F_INACTIVE:
                    dest.activeconns -= 1
                    dest.inactconns += 1
                else:
                    dest.activeconns += 1
                    dest.inactconns -= 1
                self._counts_changed(dest)
            cp.flags = (flags & BACKUP_UPD_MASK) | (cp.flags & ~BACKUP_UPD_MASK)
            if dest is None:
                dest = self.sync_find_dest(e)
                if dest is not None:
                    self._sync_bind(cp, dest)
        else:
            dest = self.sync_find_dest(e)
            if e.pe_data:
                cp = PeConn(
                    e.af, e.protocol, e.caddr, e.cport, e.vaddr, e.vport, e.af, e.daddr, e.dport,
                    flags, e.fwmark, pe_name=e.pe_name, pe_data=e.pe_data,
                )  # fmt: skip
            else:
                cp = Conn(e.af, e.protocol, e.caddr, e.cport, e.vaddr, e.vport, e.af, e.daddr, e.dport, flags,
                          e.fwmark)  # fmt: skip
            if dest is not None:
                self._sync_bind(cp, dest)
            self.conns.hash(cp)
        sysctl = self.ipvs.sysctl
        cp.in_pkts = sysctl.sync_threshold
        cp.state = e.state
        cp.sync_mark = (cp.sync_mark & ~15) | (e.state & 15)
        if e.timeout:
            cp.timeout = float(min(e.timeout, MAX_SYNC_TIMEOUT))
        elif not flags & CONN_F_TEMPLATE and e.protocol == IPPROTO_TCP:
            cp.timeout = self.ipvs.timeouts.tcp[e.state]
        elif not flags & CONN_F_TEMPLATE and e.protocol == IPPROTO_UDP:
            cp.timeout = self.ipvs.timeouts.udp
        else:
            cp.timeout = 180.0
        self._put(cp, now)
        return cp

    def _unbind(self, cp: Conn) -> None:
        """``ip_vs_unbind_dest``: give back the dest's counters."""
        dest = cp.dest
        if dest is None:
            return
        if cp.flags & CONN_F_TEMPLATE:
            dest.persistconns -= 1
        else:
            if cp.flags & CONN_F_INACTIVE:
                dest.inactconns -= 1
            else:
                dest.activeconns -= 1
            overload = dest.flags & DEST_F_OVERLOAD
            self.ipvs.dest_conn_unbound(dest)
            self._counts_changed(dest, overload != dest.flags & DEST_F_OVERLOAD)
        dest.refcnt -= 1
        cp.dest = None

    @staticmethod
    def _counts_changed(dest: Dest, overload_flipped: bool = False) -> None:
        """Tell the service's scheduler that ``dest``'s counters changed (and
        whether its OVERLOAD flag flipped with them); schedulers that read no
        counter hear only of flips."""
        svc = dest.svc
        if dest.pos >= 0 and svc is not None:
            sched = svc.scheduler
            if sched is not None and (overload_flipped or sched.watches_counts):
                sched.counts_changed(dest)

    def _put(self, cp: Conn, now: float) -> None:
        """``ip_vs_conn_put``: re-arm the entry's timer with its timeout."""
        cp.expires = now + cp.timeout
        self.conns.arm(cp)

    def expire(self, cp: Conn, now: float) -> bool:
        """``ip_vs_conn_expire``: remove the entry unless it still controls
        others; then it is kept another 60 s (and keeps 60 s as its timeout)."""
        if cp.n_control:
            cp.timeout = EXPIRE_RETRY
            self._put(cp, now)
            return False
        self.conns.unhash(cp)
        self.conns.wheel.discard(cp)
        ct = cp.control
        if ct is not None:
            ct.n_control -= 1
            cp.control = None
        self._unbind(cp)
        return True

    def conn_del(self, cp: Conn, now: float) -> None:
        """``ip_vs_conn_del``: expire a hashed entry now; an entry that has a
        controller drops it too when it was its last and the controller is
        a connection or a template not yet ASSURED (the ``timeout = 0``
        chain of ``ip_vs_conn_expire``)."""
        if not cp.hashed:
            return
        ct = cp.control
        if not self.expire(cp, now) or ct is None:
            return
        if not ct.n_control and (not ct.flags & CONN_F_TEMPLATE or not ct.state & CTPL_S_ASSURED):
            self.conn_del(ct, now)

    def expire_nodest_conns(self, now: float) -> None:
        """``ip_vs_expire_nodest_conn_flush``, the work a real server's deletion
        queues when ``expire_nodest_conn`` is set: every entry whose server is
        no longer available and that controls nothing is deleted, and so is
        its controller once it controls nothing more."""
        for cp in list(self.conns):
            dest = cp.dest
            if dest is None or dest.flags & DEST_F_AVAILABLE or cp.n_control or not cp.hashed:
                continue
            ct = cp.control
            self.conn_del(cp, now)
            if ct is not None and not ct.n_control:
                self.conn_del(ct, now)

    def random_dropentry(self, now: float, rng: Any) -> int:
        """``ip_vs_random_dropentry`` (drop_entry defence, once a second):
        look at a random 1/32 of the table; drop half-open TCP entries and,
        by :meth:`Defense.todrop_entry`'s rates, established TCP and UDP
        entries idle 60 s or more with few incoming packets.  Returns how
        many were dropped."""
        n = len(self.conns)
        if not n:
            return 0
        sample = max(1, n >> 5)
        start = rng.randrange(n)
        dropped = 0
        for cp in list(itertools.islice(itertools.chain(self.conns, self.conns), start, start + sample)):
            if cp.n_control or not cp.hashed:
                continue
            if cp.flags & CONN_F_TEMPLATE:
                if not cp.flags & CONN_F_ONE_PACKET:
                    continue
            else:
                idle_60 = cp.timeout - (cp.expires - now) >= 60
                if cp.protocol == IPPROTO_TCP:
                    if cp.state in (TCP_S_SYN_RECV, TCP_S_SYNACK):
                        pass
                    elif cp.state != TCP_S_ESTABLISHED or not self.defense.todrop_entry(cp.in_pkts, idle_60):
                        continue
                elif not self.defense.todrop_entry(cp.in_pkts, idle_60):
                    continue
            control = cp.control
            self.expire(cp, now)
            if control is not None and not control.n_control and control.hashed:
                self.expire(control, now)
            dropped += 1
        self.defense_dropped_entries += dropped
        return dropped

    def expire_now(self, cp: Conn, now: float) -> None:
        """``ip_vs_conn_expire_now``: let the timer fire at once."""
        if cp.n_control:
            return
        self.expire(cp, now)

    # ------------------------------------------------------------------------
    # scheduling (ip_vs_schedule, ip_vs_sched_persist)
    # ------------------------------------------------------------------------
    def schedule(
        self,
        svc: Service,
        flow: Flow,
        now: float,
        payload: bytes | bytearray | memoryview | None = None,
        l4_offset: int = 0,
    ) -> tuple[Conn | None, int]:
        """Pick a real server for a new flow and create its entry.

        Returns ``(conn, ignored)`` like the kernel: ``ignored`` 0 means no
        server (reject), -1 drop, 1 let it pass.  ``payload`` and
        ``l4_offset``: see :meth:`process_in` (only a persistent service
        with a persistence engine reads them).
        """
        if svc.flags & SVC_F_PERSISTENT:
            return self._sched_persist(svc, flow, now, payload, l4_offset)
        if not svc.key.fwmark and flow.vport != svc.key.port:
            return None, 0
        sched = svc.scheduler
        dest = sched.schedule(flow, now) if sched is not None else None
        if dest is None:
            return None, 0
        flags = CONN_F_ONE_PACKET if svc.flags & SVC_F_ONEPACKET and flow.protocol == IPPROTO_UDP else 0
        cp = self.conn_new(
            flow.af,
            flow.protocol,
            flow.caddr,
            flow.cport,
            flow.vaddr,
            flow.vport,
            dest,
            dest.port or flow.vport,
            flags,
            flow.fwmark,
            now,
        )
        self._conn_stats(cp, svc)
        return cp, 0

    def _masked_client(self, svc: Service, caddr: int) -> int:
        if svc.key.af == AF_INET6:
            return caddr & v6_prefix_mask(svc.netmask)
        return caddr & svc.netmask

    def template_key(self, svc: Service, flow: Flow) -> tuple[int, int, int, int]:
        """(protocol, masked client, vaddr, vport) of the flow's template:
        port services ⟨proto, net, vaddr, vport⟩ (vport 0 for FTP), port-zero
        services ⟨proto, net, vaddr, 0⟩, fwmark ⟨IPPROTO_IP, net, mark, 0⟩."""
        snet = self._masked_client(svc, flow.caddr)
        protocol = flow.protocol
        vaddr = flow.vaddr
        vport = 0
        if flow.vport == svc.key.port:
            if svc.key.port != FTPPORT:
                vport = flow.vport
        elif svc.key.fwmark:
            protocol = IPPROTO_IP
            vaddr = svc.key.fwmark
        return protocol, snet, vaddr, vport

    def check_template(self, ct: Conn) -> bool:
        """``ip_vs_check_template``: the template's dest must still be available
        (and, with expire_quiescent_template, have a weight); otherwise the
        template is marked invalid and left to expire."""
        dest = ct.dest
        if (
            dest is None
            or not dest.flags & DEST_F_AVAILABLE
            or (self.ipvs.sysctl.expire_quiescent_template and dest.weight == 0)
        ):
            ct.dport = INVALID_PORT
            return False
        return True

    def _sched_persist(
        self,
        svc: Service,
        flow: Flow,
        now: float,
        payload: bytes | bytearray | memoryview | None = None,
        l4_offset: int = 0,
    ) -> tuple[Conn | None, int]:
        protocol, snet, tvaddr, tvport = self.template_key(svc, flow)
        pe_data = None
        if svc.pe_name:
            # ip_vs_conn_fill_param_persist: the PE's fill_param (the SIP
            # Call-ID); its failure makes ip_vs_sched_persist return with
            # *ignored = -1, and the packet is dropped
            pe_data = pe_sip_fill_param(svc.key.af, flow.protocol, payload, l4_offset)
            if pe_data is None:
                return None, -1
            ct = self.lookup_pe_template(protocol, flow.af, snet, tvaddr, tvport, svc.pe_name, pe_data)
        else:
            ct = self.conns.lookup_template(protocol, flow.af, snet, tvaddr, tvport)
        if ct is None or not self.check_template(ct):
            sched = svc.scheduler
            dest = sched.schedule(flow, now) if sched is not None else None
            if dest is None:
                return None, 0
            dport = dest.port if (flow.vport == svc.key.port and svc.key.port != FTPPORT) else 0
            ct = self.conn_new(
                flow.af,
                protocol,
                snet,
                0,
                tvaddr,
                tvport,
                dest,
                dport,
                CONN_F_TEMPLATE,
                flow.fwmark,
                now,
                svc.pe_name,
                pe_data,
            )
            ct.timeout = float(svc.timeout)
        else:
            dest = ct.dest
            assert dest is not None
        dport = flow.vport
        if dport == svc.key.port and dest.port:
            dport = dest.port
        flags = CONN_F_ONE_PACKET if svc.flags & SVC_F_ONEPACKET and flow.protocol == IPPROTO_UDP else 0
        cp = self.conn_new(
            flow.af,
            flow.protocol,
            flow.caddr,
            flow.cport,
            flow.vaddr,
            flow.vport,
            dest,
            dport,
            flags,
            flow.fwmark,
            now,
        )
        cp.control = ct
        ct.n_control += 1
        self._put(ct, now)
        self._conn_stats(cp, svc)
        return cp, 0

    def lookup_pe_template(
        self, protocol: int, af: int, snet: int, vaddr: int, vport: int, pe_name: str, pe_data: bytes
    ) -> Conn | None:
        """``ip_vs_ct_in_get`` with PE data: the chain of the data's hash
        (``pe->hashkey_raw``), an entry of the same engine that
        ``pe->ct_match`` accepts (for sip: family, masked client address,
        virtual address or fwmark, virtual port, protocol, template, and the
        same Call-ID; the client port is 0 in every template).  An
        invalidated template (``ip_vs_check_template`` set its ports to
        0xffff, which pylvs marks in ``dport``) no longer matches."""
        ckey = client_key(protocol, af, snet, 0)
        c = self.conns.chain(pe_key(pe_data))
        while c is not None:
            if (
                c.flags & CONN_F_TEMPLATE
                and c.vport == vport
                and c.vaddr == vaddr
                and c.dport != INVALID_PORT
                and c.ckey == ckey  # type: ignore[attr-defined]
                and c.pe_name == pe_name
                and c.pe_data == pe_data
            ):
                return c
            c = c.hnext
        return None

    def _conn_stats(self, cp: Conn, svc: Service) -> None:
        """``ip_vs_conn_stats``: one more connection for dest, service, total."""
        dest = cp.dest
        if dest is not None:
            dest.stats.conns += 1
        svc.stats.conns += 1
        self.ipvs.stats.conns += 1

    # ------------------------------------------------------------------------
    # the packet path (ip_vs_in_hook / handle_response)
    # ------------------------------------------------------------------------
    def process_in(
        self,
        flow: Flow,
        now: float,
        tcp_flags: int = 0,
        length: int = 0,
        payload: bytes | bytearray | memoryview | None = None,
        l4_offset: int = 0,
    ) -> Verdict:
        """A packet from a client to a virtual address: ``ip_vs_in_hook``.

        ``tcp_flags`` are the segment's flags for TCP (ignored otherwise) and
        ``length`` the IP packet length for the byte counters.

        ``payload`` is the transport payload (the data after the UDP header)
        and ``l4_offset`` the offset of the transport header in the IP packet
        (0: the family's header without options, 20 or 40).  Only a packet
        that has no entry yet and goes to a persistent service with a
        persistence engine is looked into (``ip_vs_sched_persist`` ->
        ``pe->fill_param``): for ``--pe sip`` the template is the one of the
        datagram's Call-ID (:mod:`lvs.pe_sip`), and a packet without one
        (not UDP, no data, no usable Call-ID, or ``payload`` None) is
        dropped, as the kernel drops it.  Packets of an existing entry keep
        its real server whatever they carry.
        """
        ipvs = self.ipvs
        protocol = flow.protocol
        cp = self.conns.lookup_in(protocol, flow.af, flow.caddr, flow.cport, flow.vaddr, flow.vport)
        sysctl = ipvs.sysctl
        if cp is not None and protocol == IPPROTO_TCP and tcp_flags & SYN and not tcp_flags & RST:
            cp = self._port_reuse(cp, now)
        if cp is not None and cp.dest is not None and not cp.dest.flags & DEST_F_AVAILABLE:
            if sysctl.expire_nodest_conn:
                self.expire_now(cp, now)
                cp = None
            else:
                return Verdict(DROP, cp)
        new = False
        if cp is None:
            svc = ipvs.find_service(flow.af, protocol, flow.vaddr, flow.vport, flow.fwmark)
            if svc is None:
                return Verdict(ACCEPT)
            if protocol == IPPROTO_TCP and not self._tcp_may_schedule(tcp_flags):
                return Verdict(ACCEPT)
            if self.defense.drop_rate and self.defense.todrop():
                self.defense_drops += 1
                return Verdict(DROP)  # ip_vs_todrop: "we are very loaded" (drop_packet)
            cp, ignored = self.schedule(svc, flow, now, payload, l4_offset)
            if cp is None:
                return Verdict(REJECT if ignored == 0 else (DROP if ignored < 0 else ACCEPT))
            new = True
        self._in_stats(cp, length)
        self.set_state(cp, DIR_INPUT, tcp_flags, now)
        if cp.flags & CONN_F_ONE_PACKET:
            # one-packet scheduling: the entry lives for this datagram only;
            # ip_vs_conn_put expires it at once, and ip_vs_conn_expire takes
            # it off its template (ip_vs_control_del) before unbinding
            ct = cp.control
            if ct is not None:
                ct.n_control -= 1
                cp.control = None
            self._unbind(cp)
        else:
            cp.in_pkts += 1
            self._put(cp, now)
        if self.sync is not None:
            # ip_vs_in_hook: every client packet offers its entry to the master
            self.sync.sync_conn(cp, cp.in_pkts, now)
        return Verdict(FORWARD, cp, new)

    def held_segment(self, cp: Conn, direction: int, tcp_flags: int, now: float) -> bool:
        """One TCP segment of an entry the forwarder already holds, so the
        look-up of :meth:`process_in` / :meth:`process_out` is skipped (the
        NAT proxy shows the core only segments that change state: SYN+ACK,
        ACK, FIN, RST).  As for a packet found in the table: an entry whose
        real server is unavailable, or that is no longer hashed, drops the
        packet (False); otherwise the state moves through the table of
        ``direction``, the timer is re-armed with the new timeout and, for a
        client segment, ``in_pkts`` counts it.  Byte and packet counters stay
        with the caller, which batches them (:meth:`add_bytes`)."""
        dest = cp.dest
        if dest is None or not dest.flags & DEST_F_AVAILABLE or not cp.hashed:
            return False
        self._set_tcp_state(cp, direction, tcp_flags)
        self._put(cp, now)
        if direction != DIR_OUTPUT:
            cp.in_pkts += 1
            if self.sync is not None:
                self.sync.sync_conn(cp, cp.in_pkts, now)
        return True

    def account_in(self, cp: Conn, now: float, packets: int, nbytes: int) -> None:
        """``packets`` client packets of ``cp`` (``nbytes`` IP bytes in all),
        all seen at ``now``, counted at once: the same counters, timeout, timer
        and ``in_pkts`` as that many :meth:`process_in` calls give, for the
        packets on which process_in does nothing else.  The caller (the DR/TUN
        fast path) guarantees that: ``cp`` is hashed, not one-packet, its dest
        available; the packets are UDP, or TCP segments without SYN, FIN and
        RST but with ACK on an ESTABLISHED entry, which stays ESTABLISHED in
        every table (INPUT, INPUT_ONLY, and their secure_tcp variants)."""
        self._count(cp, packets, nbytes, 0, 0)
        timeouts = self.ipvs.timeouts
        cp.timeout = timeouts.tcp[cp.state] if cp.protocol == IPPROTO_TCP else timeouts.udp
        cp.in_pkts += packets
        self._put(cp, now)
        if self.sync is not None:
            self._sync_batch(cp, packets, now)

    def _sync_batch(self, cp: Conn, packets: int, now: float) -> None:
        """``packets`` client packets of ``cp`` counted at once (already in
        ``in_pkts``): offer the entry to the sync master with the count at
        which the kernel, seeing them one by one, would have sent it, if one
        lies in the batch."""
        sync = self.sync
        if sync is None or packets <= 0:
            return
        period, threshold = sync.params.period, sync.params.threshold
        pkts = cp.in_pkts
        if period > 0 and packets > 1:
            before = pkts - packets
            hit = before + ((threshold - before - 1) % period) + 1
            if hit <= pkts:
                pkts = hit
        sync.sync_conn(cp, pkts, now)

    def refresh(self, cp: Conn, now: float) -> bool:
        """Traffic of ``cp`` relayed since the last call (a forwarder that
        batches, such as the NAT proxy's sweep): what ``ip_vs_conn_put`` does
        for each packet, done once: the timer is pushed to ``now`` plus the
        entry's timeout, never earlier than it already was.  False (and
        nothing done) if the entry is no longer hashed."""
        if not cp.hashed:
            return False
        if now + cp.timeout > cp.expires:
            cp.expires = now + cp.timeout
        self.conns.arm(cp)
        return True

    def in_icmp(
        self,
        protocol: int,
        af: int,
        caddr: int,
        cport: int,
        vaddr: int,
        vport: int,
        length: int,
        csum_ok: bool,
        methods: Container[int],
    ) -> Verdict:
        """``ip_vs_in_icmp``: an ICMP error whose quoted packet (read in the
        client -> VIP direction, ``protocol``/``caddr``... here) may belong to
        an entry.  ACCEPT (the local stack's) when no entry has that key or
        its forwarding method is not in ``methods`` (another data plane's
        entry); DROP for a bad ICMP checksum; else the error counts as one
        inbound packet of ``length`` bytes for the entry (``ip_vs_in_stats``,
        ``in_pkts``; no state change, no timer) and is to be forwarded to its
        real server (FORWARD)."""
        cp = self.conns.lookup_in(protocol, af, caddr, cport, vaddr, vport)
        if cp is None or cp.flags & CONN_F_FWD_MASK not in methods:
            return Verdict(ACCEPT)
        if not csum_ok:
            return Verdict(DROP, cp)
        self._count(cp, 1, length, 0, 0)
        cp.in_pkts += 1
        return Verdict(FORWARD, cp)

    def _tcp_may_schedule(self, tcp_flags: int) -> bool:
        """``tcp_conn_schedule``: only a SYN opens a connection (any non-RST
        segment with sloppy_tcp); a RST never does."""
        if tcp_flags & RST:
            return False
        return bool(tcp_flags & SYN) or bool(self.ipvs.sysctl.sloppy_tcp)

    def _port_reuse(self, cp: Conn, now: float) -> Conn | None:
        """A SYN for an existing entry: reschedule instead of reusing it when
        expire_nodest_conn finds the dest quiesced, or when conn_reuse_mode
        allows and the old connection is over (TIME_WAIT/CLOSE, or FIN_WAIT of
        DR/TUN with mode bit 2) and nothing controls it."""
        sysctl = self.ipvs.sysctl
        resched = False
        if (sysctl.expire_nodest_conn and cp.dest is not None and cp.dest.weight == 0) or (
            sysctl.conn_reuse_mode and self._new_conn_expected(cp, sysctl.conn_reuse_mode)
        ):
            resched = True
        if not resched:
            return cp
        if not cp.n_control:
            self.expire_now(cp, now)
        return None

    @staticmethod
    def _new_conn_expected(cp: Conn, mode: int) -> bool:
        if cp.control is not None:
            return False
        if cp.protocol == IPPROTO_TCP:
            return cp.state in (TCP_S_TIME_WAIT, TCP_S_CLOSE) or (
                bool(mode & 2) and cp.state == TCP_S_FIN_WAIT and bool(cp.flags & CONN_F_NOOUTPUT)
            )
        if cp.protocol == IPPROTO_SCTP:
            return cp.state == 13  # IP_VS_SCTP_S_CLOSED
        return False

    def process_out(self, cp: Conn, now: float, tcp_flags: int = 0, length: int = 0) -> None:
        """A reply from the real server through the director (NAT): ``handle_response``."""
        self._out_stats(cp, length)
        self.set_state(cp, DIR_OUTPUT, tcp_flags, now)
        self._put(cp, now)

    def lookup_out(self, flow: Flow, daddr: int, dport: int) -> Conn | None:
        return self.conns.lookup_out(flow.protocol, flow.af, daddr, dport, flow.caddr, flow.cport)

    # -- protocol state ------------------------------------------------------------
    def set_state(self, cp: Conn, direction: int, tcp_flags: int, now: float) -> None:
        """Move ``cp`` by one packet: TCP through its tables, UDP/others just
        refresh the timeout."""
        protocol = cp.protocol
        if protocol == IPPROTO_TCP:
            self._set_tcp_state(cp, direction, tcp_flags)
        elif protocol == IPPROTO_UDP:
            cp.timeout = self.ipvs.timeouts.udp
            if direction == DIR_OUTPUT:
                self._assure_template(cp)
        else:
            cp.timeout = self.ipvs.timeouts.udp

    def _set_tcp_state(self, cp: Conn, direction: int, tcp_flags: int) -> None:
        if cp.flags & CONN_F_NOOUTPUT:
            if direction == DIR_OUTPUT:
                cp.flags &= ~CONN_F_NOOUTPUT
            else:
                direction = DIR_INPUT_ONLY
        # the DoS table while secure_tcp is above 1 (update_defense_level's
        # ip_vs_protocol_timeout_change(ipvs, secure_tcp > 1))
        new = next_state(cp.state, direction, tcp_flags, self.ipvs.sysctl.secure_tcp > 1)
        self._move_tcp_state(cp, new)

    def kernel_tcp_state(self, cp: Conn, state: int, now: float) -> bool:
        """A forwarder that leaves a flow's packets to the kernel (the kernel
        NAT engine: netfilter's conntrack follows the TCP exchange) reports
        the IPVS TCP state the flow has reached: the entry moves there with
        the same active/inactive accounting as a packet would give, takes the
        state's timeout and its timer is re-armed.  False (nothing done) if
        the entry is no longer hashed."""
        if not cp.hashed:
            return False
        self._move_tcp_state(cp, state)
        self._put(cp, now)
        return True

    def _move_tcp_state(self, cp: Conn, new: int) -> None:
        """``set_tcp_state``'s bookkeeping: ActiveConn/InActConn of the dest,
        the template assured on ESTABLISHED, the state's timeout."""
        old = cp.state
        if new != old:
            dest = cp.dest
            if dest is not None:
                if not cp.flags & CONN_F_INACTIVE and not is_active(new):
                    dest.activeconns -= 1
                    dest.inactconns += 1
                    cp.flags |= CONN_F_INACTIVE
                    self._counts_changed(dest)
                elif cp.flags & CONN_F_INACTIVE and is_active(new):
                    dest.activeconns += 1
                    dest.inactconns -= 1
                    cp.flags &= ~CONN_F_INACTIVE
                    self._counts_changed(dest)
            if new == TCP_S_ESTABLISHED:
                self._assure_template(cp)
            cp.state = new
        cp.timeout = self.ipvs.timeouts.tcp[new]

    @staticmethod
    def _assure_template(cp: Conn) -> None:
        ct = cp.control
        if ct is not None and ct.flags & CONN_F_TEMPLATE:
            ct.state |= CTPL_S_ASSURED

    # -- stats --------------------------------------------------------------------
    def _count(self, cp: Conn, inpkts: int, inbytes: int, outpkts: int, outbytes: int) -> None:
        """``ip_vs_in_stats`` / ``ip_vs_out_stats``: traffic of ``cp`` counts for
        its real server, that server's service and the table's totals, and only
        while the server is available (packets to a deleted one are dropped
        before they are counted)."""
        dest = cp.dest
        if dest is None or not dest.flags & DEST_F_AVAILABLE:
            return
        dest.stats.add(inpkts, inbytes, outpkts, outbytes)
        svc = dest.svc
        if svc is not None:
            svc.stats.add(inpkts, inbytes, outpkts, outbytes)
        self.ipvs.stats.add(inpkts, inbytes, outpkts, outbytes)

    def _in_stats(self, cp: Conn, length: int) -> None:
        self._count(cp, 1, length, 0, 0)

    def _out_stats(self, cp: Conn, length: int) -> None:
        self._count(cp, 0, 0, 1, length)

    def count_out(self, cp: Conn, length: int) -> None:
        """A related reply (ICMP error) seen outbound: counted, no state change."""
        self._count(cp, 0, 0, 1, length)

    def add_bytes(
        self,
        cp: Conn,
        inbytes: int = 0,
        outbytes: int = 0,
        inpkts: int = 0,
        outpkts: int = 0,
        now: float | None = None,
    ) -> None:
        """Count traffic a forwarder moved without per-packet calls (the NAT
        proxy relays byte streams, not packets).  With ``now`` the client
        packets also count in ``in_pkts`` as the kernel's per-packet path
        counts them, and a sync master hears of them (the UDP proxy's
        datagrams after the first)."""
        self._count(cp, inpkts, inbytes, outpkts, outbytes)
        if now is not None and inpkts > 0:
            cp.in_pkts += inpkts
            if self.sync is not None:
                self._sync_batch(cp, inpkts, now)

    def add_bytes_unbound(self, dest: Dest, inbytes: int, outbytes: int, inpkts: int, outpkts: int) -> None:
        """Traffic a forwarder batched for an entry that has meanwhile been
        unbound from ``dest`` (it expired with counts still in the batch):
        counted for ``dest``, its service and the totals, whatever the
        server's state (the packets did pass while the entry lived)."""
        dest.stats.add(inpkts, inbytes, outpkts, outbytes)
        svc = dest.svc
        if svc is not None:
            svc.stats.add(inpkts, inbytes, outpkts, outbytes)
        self.ipvs.stats.add(inpkts, inbytes, outpkts, outbytes)

    # ------------------------------------------------------------------------
    # time
    # ------------------------------------------------------------------------
    def tick(self, now: float, budget: int = -1) -> bool:
        """Run everything that is due at ``now``: entry expiry, the 2-second
        rate estimator, scheduler timers, the dest trash.  With a ``budget``,
        at most that many timers are examined; returns True if work remains."""
        more = self.conns.expire_due(now, self._on_timer, budget)
        while now >= self._next_estimate:
            if self.ipvs.sysctl.run_estimation:
                self._estimate()
            self._next_estimate += ESTIMATOR_PERIOD
        if now >= self._next_sched_tick:
            for svc in self.ipvs.services.values():
                if svc.scheduler is not None:
                    svc.scheduler.tick(now)
            self._next_sched_tick = now + 1.0
        timer = self.ipvs.trash_timer
        if timer is not None and now >= timer:
            self.ipvs.trash_expire(now)
        return more

    def advance(self, start: float, end: float) -> None:
        """Move virtual time from ``start`` to ``end``, running every timer
        (entries, estimator, dest trash) at its own time, in order (for
        simulations)."""
        t = start
        while True:
            deadlines = [end, self._next_estimate, self._next_sched_tick]
            nxt = self.conns.wheel.next_deadline()
            if nxt is not None:
                deadlines.append(nxt)
            if self.ipvs.trash_timer is not None:
                deadlines.append(self.ipvs.trash_timer)
            later = [x for x in deadlines if x > t]
            step = min(later) if later else end
            self.tick(step)
            if step >= end:
                break
            t = step

    def _on_timer(self, cp: Conn) -> None:
        now = cp.expires
        self.expire(cp, now)

    def _estimate(self) -> None:
        ipvs = self.ipvs
        ipvs.stats.estimate()
        for svc in ipvs.services.values():
            svc.stats.estimate()
            for dest in svc.destinations:
                dest.stats.estimate()

    def reset_clock(self, now: float) -> None:
        """Align periodic work with a clock that does not start at zero."""
        self._next_estimate = now + ESTIMATOR_PERIOD
        self._next_sched_tick = now + 1.0


__all__ = ["ACCEPT", "ACK", "DROP", "FORWARD", "REJECT", "TCP_S_NONE", "Director", "Verdict"]
