"""The DR/TUN data plane: frames from AF_PACKET, decisions from the core,
frames out to the real servers.

For every virtual service whose real servers are all direct-routing (``-g``)
or tunnel (``-i``) destinations, :class:`DirectPlane` captures the client's
frames (:mod:`forwarding.capture`), keeps the director's own stack from
answering them (:mod:`forwarding.netfilter`), asks the core
(``Director.process_in``: same connection table, persistence, schedulers;
DR/TUN entries carry NOOUTPUT, so TCP moves through the INPUT_ONLY table
since replies bypass the director) and transmits, following ip_vs_xmit.c:

* **DR** (``ip_vs_dr_xmit``): the IP packet is left as it is except for the
  TTL (``decrement_ttl`` in ``__ip_vs_get_out_rt``: TTL <= 1 gives ICMP time
  exceeded) and goes out on the interface of the route to the real server,
  with the destination MAC of that route's next hop
  (:mod:`forwarding.neighbours`: the kernel's neighbour table, ARP/ND on a
  miss, packets waiting meanwhile as in the kernel's ``unres_qlen``).
* **TUN** (``ip_vs_tunnel_xmit``): the same TTL step, then the outer
  headers of :mod:`forwarding.tun`, sent to the real server's next hop.

MTU (``ensure_mtu_is_adequate``): an IPv4 packet with DF that does not fit
the route MTU (less the tunnel overhead for TUN) is answered with ICMP
"fragmentation needed" carrying that MTU; without DF it is fragmented (for
TUN the outer packet is, as ``ignore_df`` makes the kernel do); an IPv6
packet gets ICMPv6 "packet too big" (the ICMP answers:
:mod:`forwarding.dr_icmp`).  TCP aggregates built by receive offload
(longer than the ingress MTU, which no wire frame can be) are cut back into
segments first, as the kernel's GSO would.

Fragments: the kernel reassembles before IPVS; here the first fragment
(which has the ports) takes the decision and every fragment of the datagram
is forwarded the same way, on its own.  Later fragments that arrive first
wait (bounded, 30 s like ``ipfrag_time``).

Fast path (:meth:`DirectPlane.process_block`, here; its entry type and
frame layouts in :mod:`forwarding.dr_fast`): once the core has decided a
flow, an established IPv4 flow's later packets are forwarded from a table
keyed by the raw address and port bytes of the frame, their counters going
to the core in batches (``account_in``).  Everything else stays on the path
described above.

Verdicts other than FORWARD: REJECT sends ICMP port unreachable
(:mod:`forwarding.dr_icmp`, rate limited per client like
``icmp_ratelimit``), DROP drops, ACCEPT (the packet is not for a scheduled
connection, e.g. a stray ACK) also drops, because the frame was already
taken from the local stack (the kernel would hand it to the local stack,
which would answer with a RST).

Firewall-mark services (``-f MARK``): the mark does not exist yet when
AF_PACKET sees the frame, so their packets come from NFQUEUE instead
(:mod:`forwarding.nfqueue`).  With the first such service, lvsd binds a
free queue (from :data:`QUEUE_BASE` up) and its nftables table gets, per
served (family, mark), a rule queueing marked packets at ``input`` priority
99, where the kernel's ``ip_vs_in_hook`` sits (:mod:`forwarding.netfilter`);
the user marks packets as for the kernel (``iptables -t mangle -A
PREROUTING -d VIP -p tcp --dport 80 -j MARK --set-mark 1`` or ``nft ...
meta mark set 1``), and the VIP must be local so that routing delivers the
packets to ``input``, as with the kernel.  :meth:`DirectPlane.handle_queued`
puts each queued packet through the same core decision (the mark in the
flow: ``ip_vs_service_find`` looks the fwmark table up first) and the same
transmit code as a captured frame, then gives the kernel its verdict:
DROP when lvsd forwarded (or deliberately dropped, or rejected with ICMP)
the packet, ACCEPT when IPVS would have let it through to the local stack
(``NF_ACCEPT``: no service, not a SYN, a protocol IPVS does not schedule,
a packet it cannot parse).  All verdicts of one receive batch go back in
one ``send``.  Flows decided this way never enter the fast path (their
packets do not come through the ring).  If a fwmark service and an
address/port DR/TUN service cover the same packets, the address/port
service serves them: AF_PACKET and the raw-priority drop take them before
any mark is set.

ICMP errors about DR/TUN connections (``ip_vs_in_icmp``,
``ip_vs_in_icmp_v6``; :mod:`forwarding.icmp_related`): an ICMP destination
unreachable (fragmentation needed included), source quench or time exceeded
(ICMPv6: any error) addressed to a VIP, whose quoted packet is a reply of
an existing DR/TUN connection (VIP -> client, looked up reversed, client ->
VIP, as the kernel does), is counted for that connection and forwarded to
its real server like the connection's packets: MAC rewrite (DR) or
encapsulated (TUN), TTL decremented.  The capture filter lets ICMP errors
to a served address through for this.  Errors matching no connection are
the local stack's (the kernel's ``schedule_icmp`` is not emulated); the
local stack also sees the forwarded ones (AF_PACKET copies, the nftables
table does not drop ICMP), where they find no socket of theirs.  No ICMP
error is ever sent about an ICMP error.

Not handled here: local clients of the VIP (traffic on lo).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lvs.conn import TCP_S_ESTABLISHED
from lvs.constants import (
    CONN_F_DROUTE,
    CONN_F_FWD_MASK,
    CONN_F_ONE_PACKET,
    CONN_F_TUNNEL,
    DEST_F_AVAILABLE,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TUN_TYPE_IPIP,
)
from lvs.core import ACCEPT, FORWARD, REJECT, Director
from lvs.model import Dest, Flow, Service

from . import icmp_related as IR
from . import packet as P
from . import tun as T
from .capture import (
    PKT3,
    SLL_IFINDEX_OFF,
    TP_STATUS_CSUMNOTREADY,
    FilterTooLarge,
    RxRing,
    Target,
    TxSockets,
    compile_addr_filter,
    compile_filter,
)
from .dr_fast import (
    _FAST_KEY,
    _FAST_TCP,
    _FAST_UDP,
    _IFINDEX,
    _OUTER4,
    _TCP_ES_ACK_MASK,
    _TTL_CSUM,
    FAST_MAX,
    _Fast,
)
from .dr_icmp import ICMP_BURST, ICMP_INTERVAL, build_icmp_error, icmp_allowed
from .neighbours import (
    ARP_TIMEOUT,
    NEG_TTL,
    NEIGH_TTL,
    NTF_USE,
    NUD_FAILED,
    NUD_INCOMPLETE,
    NUD_USABLE,
    RTN_LOCAL,
    RTN_UNICAST,
    UNRES_QLEN,
    LinkInfo,
    NetInfo,
    NextHop,
    Resolver,
    solicit,
)
from .netfilter import NftError, NftGuard, delete_table, nft_available
from .nfqueue import NF_ACCEPT, NF_DROP, NfQueue, Queued, bind_free_queue

log = logging.getLogger("lvsd.dr")

FRAG_TIMEOUT = 30.0
FRAG_MAX_KEYS = 1024
FRAG_MAX_HELD = 64
#: the first NFQUEUE number lvsd tries for firewall-mark services ("LV")
QUEUE_BASE = 0x4C56
#: a status bit (beyond the TP_STATUS_* ones) for packets that came from
#: NFQUEUE: their flows never get a fast-path entry
STATUS_QUEUED = 1 << 30
#: the forwarding methods of the entries this plane serves
_DIRECT_METHODS = frozenset((CONN_F_DROUTE, CONN_F_TUNNEL))
#: the transport protocols ip_vs_in_hook schedules (ip_vs_proto_data_get)
_SCHEDULED_PROTOS = frozenset((6, 17, 132))


# -----------------------------------------------------------------------------
# the plane
# -----------------------------------------------------------------------------
@dataclass
class PlaneStats:
    frames: int = 0
    malformed: int = 0
    truncated: int = 0
    not_ours: int = 0
    forwarded: int = 0
    dropped: int = 0
    rejected: int = 0
    accepted: int = 0
    icmp_sent: int = 0
    ttl_exceeded: int = 0
    frag_needed: int = 0
    fragments: int = 0
    resegmented: int = 0
    waiting: int = 0
    no_route: int = 0
    other_method: int = 0
    fast: int = 0
    queued: int = 0
    errors: int = 0
    extra: dict[str, int] = field(default_factory=dict)


#: blocks handled per wake-up before the event loop gets a turn
BLOCKS_PER_WAKEUP = 32


class DirectPlane:
    """The DR/TUN data plane of one lvsd (see the module text).

    ``start()`` only subscribes to service changes; the capture socket and
    the nftables table appear with the first DR/TUN service, so a daemon that
    only does NAT never touches either.
    """

    name = "dr/tun"

    def __init__(
        self,
        director: Director,
        now: Callable[[], float],
        *,
        table: str = "pylvs",
        guard: bool = True,
        capture: bool = True,
        ifname: str | None = None,
        block_size: int = 1 << 17,
        block_nr: int = 128,
        timeout_ms: int = 1,
        tx: TxSockets | None = None,
        resolver: Resolver | None = None,
        fast_path: bool = True,
        queue_base: int = QUEUE_BASE,
    ) -> None:
        self.director = director
        self.ipvs = director.ipvs
        self.now = now
        self.table = table
        self.use_guard = guard
        self.use_capture = capture
        self.ifname = ifname
        self.ring_args = (block_size, block_nr, timeout_ms)
        self.tx = tx or TxSockets()
        self.resolver = resolver
        self.ring: RxRing | None = None
        self.guard: NftGuard | None = None
        self.queue: NfQueue | None = None
        self.queue_base = queue_base
        self._marks: frozenset[tuple[int, int]] = frozenset()
        self._resolver_ready = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stats = PlaneStats()
        self._owned: set[Any] = set()
        self._match: set[tuple[int, int, int, int]] = set()
        self._match_any: set[tuple[int, int, int]] = set()
        self._targets: frozenset[Target] = frozenset()
        self._warnings: list[str] = []
        self._frags: collections.OrderedDict[tuple[int, int, int, int, int], _FragState] = (
            collections.OrderedDict()
        )
        self._icmp_tokens: dict[int, tuple[float, float]] = {}
        self._port_range = T.local_port_range()
        self._t = 0.0
        self.filter_kind = "none"
        self._started = False
        self.ring_drops = 0
        #: the fast path (see process_block): raw key bytes -> _Fast
        self.fast_path = fast_path
        self._fast: dict[bytes, _Fast] = {}
        self._touched: list[_Fast] = []
        #: some service has a persistence engine (--pe sip): the slow path
        #: hands the core UDP payloads (set by refresh; True until then)
        self._pe_payload = True
        # a transmitter with sender() (TxSockets) hands the fast path its
        # sockets' own send and is told the counts afterwards; others get
        # send(ifindex, frame) calls, which count themselves
        self._tx_count: Callable[..., None] | None = (
            getattr(self.tx, "count", None) if getattr(self.tx, "sender", None) is not None else None
        )

    # -- life cycle -------------------------------------------------------------
    def start(self) -> None:
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        if self.resolver is None:
            self.resolver = Resolver(self.loop)
        elif self.resolver.loop is None:
            self.resolver.loop = self.loop
        self.resolver.on_change.append(self.fast_clear)
        self.ipvs.listeners.append(self._on_change)
        self._started = True
        self._remove_leftover_table()
        self.refresh()

    def _remove_leftover_table(self) -> None:
        """A crashed lvsd of the same name leaves its table behind, and with
        it rules that drop (or queue to nobody) the traffic of services that
        no longer exist: remove it at start, not only when this lvsd first
        serves a DR/TUN service.  (The control socket is bound before the
        planes start, so a second lvsd of the same name never gets here.)"""
        if not self.use_guard or not nft_available():
            return
        try:
            if delete_table(self.table):
                log.warning("removed a leftover nftables table %s (earlier lvsd crash?)", self.table)
        except (OSError, NftError, subprocess.SubprocessError) as exc:
            log.warning("could not check for a leftover nftables table %s: %s", self.table, exc)

    def _open_guard(self) -> None:
        """The nftables table, once (installing it removes a crashed lvsd's)."""
        if self.guard is None and self.use_guard:
            guard = NftGuard(self.table)
            guard.install()
            self.guard = guard

    def _prepare_resolver(self) -> None:
        if self._resolver_ready:
            return
        self._resolver_ready = True
        assert self.resolver is not None
        self.resolver.prefetch_links()
        self.resolver.prewarm()

    def _open(self) -> None:
        if self.ring is not None or not self.use_capture:
            return
        self._open_guard()
        bs, nr, tmo = self.ring_args
        self.ring = RxRing(self.ifname, bs, nr, tmo)
        self._prepare_resolver()
        if self.loop is not None:
            self.loop.add_reader(self.ring.fileno(), self._on_readable)

    def _open_queue(self) -> None:
        """The table and a bound NFQUEUE queue for firewall-mark services."""
        if self.queue is not None:
            return
        if not self.use_guard:
            raise RuntimeError("firewall-mark services need lvsd's nftables table for their queue rules")
        self._open_guard()
        self.queue = bind_free_queue(self.queue_base)
        self._prepare_resolver()
        if self.loop is not None:
            self.loop.add_reader(self.queue.fileno(), self._on_queue_readable)

    async def close(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        self.fast_clear()
        if self._on_change in self.ipvs.listeners:
            self.ipvs.listeners.remove(self._on_change)
        if self.ring is not None:
            if self.loop is not None and not self.loop.is_closed():
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_reader(self.ring.fileno())
            self.ring.close()
            self.ring = None
        if self.guard is not None:
            # the queue rules go with the table, before the queue closes
            try:
                self.guard.remove()
            except Exception as exc:
                log.error("removing nftables table: %s", exc)
            self.guard = None
        if self.queue is not None:
            if self.loop is not None and not self.loop.is_closed():
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_reader(self.queue.fileno())
            self.queue.close()
            self.queue = None
        self._marks = frozenset()
        self.tx.close()
        if self.resolver is not None:
            self.resolver.close()

    def describe(self) -> str:
        s = self.stats
        text = (
            f"dr/tun: {len(self._targets)} capture targets ({self.filter_kind} filter), "
            f"frames {s.frames}, forwarded {s.forwarded} (fast path {s.fast}), rejected {s.rejected}, "
            f"dropped {s.dropped + s.accepted}, malformed {s.malformed}, "
            f"waiting for neighbour {s.waiting}, no route {s.no_route}, "
            f"tx errors {getattr(self.tx, 'errors', 0)}"
        )
        if self.ring is not None:
            with contextlib.suppress(OSError):
                _pk, drops = self.ring.stats()
                self.ring_drops += drops
            text += f", ring drops {self.ring_drops}"
        if self.queue is not None:
            q = self.queue
            text += (
                f"; nfqueue {q.queue_num}: {len(self._marks)} marks, {s.queued} packets "
                f"in {q.syscalls} receives, {q.verdict_msgs} verdict messages"
            )
        return text

    def warnings(self) -> list[str]:
        return list(self._warnings)

    # -- which services are ours --------------------------------------------------
    def _on_change(self, what: str, svc: Service) -> None:
        """A service or its real servers changed: the served set is updated
        before the admin command returns, so the first packet after
        ``lvsadm -a`` already finds the nftables rule and the filter."""
        if what == "del":
            self._owned.discard(svc.key)
        self.fast_clear()
        self.refresh()

    @staticmethod
    def method_of(svc: Service) -> str:
        """'direct' when every real server is DR or TUN, 'masq' if any is NAT
        (the NAT plane's), '' for a service without real servers."""
        kinds = {d.conn_flags & CONN_F_FWD_MASK for d in svc.destinations}
        if not kinds:
            return ""
        if kinds <= {CONN_F_DROUTE, CONN_F_TUNNEL}:
            return "direct"
        return "masq"

    def refresh(self) -> None:
        """Recompute the served set; update nftables first (the local stack
        stops answering), then the capture filter."""
        targets: set[Target] = set()
        warn: list[str] = []
        match: set[tuple[int, int, int, int]] = set()
        match_any: set[tuple[int, int, int]] = set()
        marks: set[tuple[int, int]] = set()
        for svc in self.ipvs:
            kind = self.method_of(svc)
            key = svc.key
            if kind == "direct":
                self._owned.add(key)
            elif kind == "masq":
                if key in self._owned:
                    self._owned.discard(key)
                if any(
                    d.conn_flags & CONN_F_FWD_MASK in (CONN_F_DROUTE, CONN_F_TUNNEL) for d in svc.destinations
                ):
                    warn.append(
                        f"{svc.describe()}: DR/TUN and NAT real servers mixed; the NAT plane serves it"
                    )
            if key not in self._owned:
                continue
            if key.fwmark:
                marks.add((key.af, key.fwmark))
                continue
            targets.add(Target(key.af, key.addr, key.protocol, key.port))
            if key.port:
                match.add((key.af, key.protocol, key.addr, key.port))
            else:
                match_any.add((key.af, key.protocol, key.addr))
        self._warnings = warn
        self._pe_payload = any(svc.pe_name for svc in self.ipvs)
        self._match = match
        self._match_any = match_any
        self._refresh_marks(frozenset(marks))
        new = frozenset(targets)
        if new == self._targets and (self.ring is not None or not new or not self.use_capture):
            return
        if new and self.ring is None and self.use_capture:
            try:
                self._open()
            except Exception as exc:
                self._warnings.append(f"DR/TUN capture not started: {exc}")
                log.error("DR/TUN capture not started: %s", exc)
                return
        if self.guard is not None:
            try:
                self.guard.update(new)
            except Exception as exc:
                self._warnings.append(f"nftables update failed: {exc}")
                log.error("nftables update failed: %s", exc)
        if self.ring is not None:
            try:
                prog = compile_filter(new)
                self.filter_kind = "exact"
            except FilterTooLarge:
                prog = compile_addr_filter(new)
                self.filter_kind = "coarse"
            self.ring.set_filter(prog)
        self._targets = new

    def _refresh_marks(self, marks: frozenset[tuple[int, int]]) -> None:
        """Queue exactly the served marks: bind the queue with the first
        one, then replace the table's queue rules (one transaction)."""
        if not self.use_capture:
            self._marks = marks
            return
        if marks and self.queue is None:
            try:
                self._open_queue()
            except Exception as exc:
                self._warnings.append(f"firewall-mark DR/TUN services not served: {exc}")
                log.error("firewall-mark DR/TUN services not served: %s", exc)
                return
        if self.guard is None or self.queue is None:
            return
        try:
            self.guard.update_fwmarks(marks, self.queue.queue_num)
            self._marks = marks
        except Exception as exc:
            self._warnings.append(f"firewall-mark queue rules not updated: {exc}")
            log.error("firewall-mark queue rules not updated: %s", exc)

    # -- receive --------------------------------------------------------------------
    def _on_queue_readable(self) -> None:
        """Queued packets (firewall-mark services): a bounded number of
        ``recvmmsg`` batches per wake-up, each answered by one ``send`` of
        verdicts.  Every packet gets a verdict, also when handling it fails
        (DROP), or it would stay in the kernel's queue."""
        q = self.queue
        if q is None:
            return
        self._t = self.now()
        for _ in range(BLOCKS_PER_WAKEUP):
            try:
                batch = q.receive()
            except OSError as exc:
                log.error("NFQUEUE receive: %s", exc)
                break
            if not batch:
                break
            verdicts: list[tuple[int, int]] = []
            for pk in batch:
                try:
                    v = self.handle_queued(pk)
                except Exception:
                    self.stats.errors += 1
                    log.exception("DR/TUN: queued packet handling failed")
                    v = NF_DROP
                verdicts.append((pk.packet_id, v))
            try:
                q.send_verdicts(verdicts)
            except OSError as exc:
                log.error("NFQUEUE verdicts: %s", exc)
            if len(batch) < q.batch:
                break
        if self._frags:
            self._expire_frags(self._t)

    def handle_queued(self, pk: Queued) -> int:
        """One packet from NFQUEUE (a firewall-mark service's): the verdict
        for the kernel, after ``ip_vs_in_hook``'s rules.

        The IP packet gets an Ethernet header (our MAC, the sender's MAC from
        NFQA_HWADDR) so that the frame code (decision, transmit, ICMP errors
        back to the sender's MAC) serves it unchanged.  NF_ACCEPT for what
        IPVS lets through (unparsable packets, protocols other than
        TCP/UDP/SCTP, core verdict ACCEPT); NF_DROP for everything lvsd
        forwarded, dropped or rejected itself.
        """
        st = self.stats
        st.queued += 1
        st.frames += 1
        if pk.truncated:
            # longer than the copy range: cannot be forwarded whole
            st.truncated += 1
            return NF_DROP
        payload = pk.payload
        if not len(payload):
            st.malformed += 1
            return NF_ACCEPT
        etype = P.ETH_P_IPV6 if payload[0] >> 4 == 6 else P.ETH_P_IP
        link = self.resolver.links.get(pk.indev) if self.resolver is not None else None
        sender = pk.hwaddr[:6] if len(pk.hwaddr) >= 6 else bytes(6)
        frame = P.ethernet_header(link.mac if link is not None else bytes(6), sender, etype) + payload
        p = P.parse_frame(frame)
        if p is None:
            st.malformed += 1
            return NF_ACCEPT
        if p[1] not in _SCHEDULED_PROTOS:
            st.not_ours += 1
            return NF_ACCEPT
        if p[10] != P.FRAG_NONE:
            self._fragment(frame, 0, len(frame), p, pk.indev, STATUS_QUEUED, pk.mark)
            return NF_DROP
        v = self._decide(frame, 0, p, pk.indev, STATUS_QUEUED, pk.mark)
        return NF_ACCEPT if v.action == ACCEPT else NF_DROP

    def _on_readable(self) -> None:
        ring = self.ring
        if ring is None:
            return
        self._t = self.now()
        mm = ring.mm
        mv = ring.mv
        # a bounded share, then the event loop gets a turn (resolver answers,
        # timers, lvsadm): the kernel keeps releasing blocks under load
        try:
            for _ in range(BLOCKS_PER_WAKEUP):
                blk = ring.next_block()
                if blk is None:
                    break
                try:
                    self.process_block(mm, blk[0], blk[1], mv)
                finally:
                    ring.release()
        finally:
            self._flush()
        if self._frags:
            self._expire_frags(self._t)

    # -- the fast path ------------------------------------------------------------------
    def process_block(self, buf: Any, off: int, num: int, view: Any = None) -> None:
        """The frames of one TPACKET_V3 block: ``num`` frames, the first at
        ``off`` in ``buf`` (the ring's mmap; any buffer whose slices are bytes).

        Fast path: a frame whose bytes 26..38 (IPv4 addresses and ports) name
        a flow in the fast table, and that is an IPv4 packet without options
        or fragmentation, complete, with a valid header checksum, a TTL above
        1, a length within the entry's MTU, a sane UDP length / TCP data
        offset, and, for TCP, only ACK among SYN/FIN/RST/ACK on an entry still
        ESTABLISHED, is forwarded here: TTL and checksum patched, the prepared
        Ethernet header (DR) or Ethernet + outer IPIP header (TUN) put in
        front, one send.  For such packets ``Director.process_in`` would only
        count them, keep the state (ACK on ES stays ES in the INPUT_ONLY table
        DR/TUN entries use, as in every other table), set the timeout and
        re-arm the timer: that is done by ``Director.account_in``, batched per
        entry, before any other frame reaches the core and at the end of the
        wake-up (``now`` is the same for all of them).  Everything else (new
        flows, SYN/FIN/RST, fragments, options, IPv6, GUE/GRE, TTL 1, too big,
        checksum offload pending, malformed frames) takes the slow path,
        :meth:`handle_frame`, exactly as before; the slow path (re)installs
        or removes the flow's entry after each of its decisions.
        """
        if view is None:
            view = buf
        fget = self._fast.get
        unpack_pkt = PKT3.unpack_from
        unpack_ifx = _IFINDEX.unpack_from
        ttl_csum = _TTL_CSUM.pack
        outer4 = _OUTER4.pack
        ids = T._ids
        pmtu = bool(self.ipvs.sysctl.pmtu_disc)
        touched = self._touched
        from_bytes = int.from_bytes
        handle = self.handle_frame
        fast = 0
        errors = 0
        for _ in range(num):
            nxt, snap, wire, st, mac = unpack_pkt(buf, off)
            s = off + mac
            e = fget(buf[s + 26 : s + 38])
            if e is not None and snap == wire and snap >= e.minsnap and not st & TP_STATUS_CSUMNOTREADY:
                etype, vihl, tos, tot, frag, ttl, proto, csum, x = e.unpack(buf, s + 12)
                if (
                    etype == 0x0800
                    and vihl == 0x45
                    and proto == e.proto
                    and not frag & 0x3FFF
                    and ttl > 1
                    and tot <= e.maxlen
                    and tot + 14 <= snap
                    and e.cp.hashed
                    and e.dest.flags & DEST_F_AVAILABLE
                    and (
                        8 <= x <= tot - 20
                        if proto == 17
                        else x & _TCP_ES_ACK_MASK == P.TCP_ACK
                        and 20 <= (x >> 12) << 2 <= tot - 20
                        and e.cp.state == TCP_S_ESTABLISHED
                    )
                ):
                    hs = from_bytes(buf[s + 14 : s + 34], "big")
                    if hs and not hs % 0xFFFF:
                        # decrement_ttl: TTL - 1, checksum word + 0x0100
                        ttl -= 1
                        c = csum + 0x100
                        c = (c + (c >> 16)) & 0xFFFF
                        inner = buf[s + 14 : s + 22] + ttl_csum(ttl, proto, c) + buf[s + 26 : s + 14 + tot]
                        if e.tun:
                            # ip_vs_tunnel_xmit, IPv4 in IPv4 (tun.encapsulate)
                            ds = tos if tos & 3 != 3 else (tos & 0xFC) | 2
                            oid = next(ids) & 0xFFFF
                            df = frag & 0x4000 if pmtu else 0
                            r = (0x4504 + ds + tot + 20 + oid + df + (ttl << 8) + e.addrsum) % 0xFFFF
                            out = e.l2 + outer4(0x45, ds, tot + 20, oid, df, ttl, 4, 0xFFFF - r if r else 0,
                                                e.addrs) + inner  # fmt: skip
                        else:
                            out = e.l2 + inner
                        try:
                            e.send(out)
                        except OSError:
                            errors += 1
                        else:
                            fast += 1
                        if not e.n:
                            touched.append(e)
                        e.n += 1
                        e.b += tot
                        off += nxt
                        continue
            # the slow path; the fast path's pending counts go to the core first
            if touched:
                self._flush()
            try:
                handle(view, s, s + snap, unpack_ifx(buf, off + SLL_IFINDEX_OFF)[0], st, wire)
            except Exception:
                self.stats.errors += 1
                log.exception("DR/TUN: frame handling failed")
            off += nxt
        if fast or errors:
            # counted as the slow path counts them: forwarded once decided,
            # whether the send succeeded or not (TxSockets counts the errors)
            st_ = self.stats
            st_.frames += fast + errors
            st_.forwarded += fast + errors
            st_.fast += fast + errors
            if self._tx_count is not None:
                self._tx_count(fast, errors)

    def _flush(self) -> None:
        """Hand the fast path's batched packets to the core (account_in)."""
        touched = self._touched
        if not touched:
            return
        account = self.director.account_in
        t = self._t
        for e in touched:
            account(e.cp, t, e.n, e.b)
            e.n = e.b = 0
        touched.clear()

    def fast_clear(self) -> None:
        """Forget every fast-path entry (services, real servers or next hops
        changed: the slow path decides again and reinstalls)."""
        self._flush()
        self._fast.clear()

    def _fast_install(self, cp: Any, nh: NextHop, dest: Dest | None, p: P.Parsed, method: int) -> None:
        """After the slow path forwarded ``p`` for ``cp``: make the flow's
        later packets take the fast path when they can (see process_block)."""
        if (
            not self.fast_path
            or p[0] != P.AF_INET
            or p[8] - p[7] != 20
            or p[10] != P.FRAG_NONE
            or not cp.hashed
            or cp.flags & CONN_F_ONE_PACKET
            or cp.af != P.AF_INET
        ):
            return
        proto = p[1]
        if proto == IPPROTO_TCP:
            if cp.state != TCP_S_ESTABLISHED:
                return
            unpack = _FAST_TCP.unpack_from
            minsnap = _FAST_TCP.size + 12
        elif proto == IPPROTO_UDP:
            unpack = _FAST_UDP.unpack_from
            minsnap = _FAST_UDP.size + 12
        else:
            return
        d = cp.dest
        if d is None or not d.flags & DEST_F_AVAILABLE:
            return
        e = _Fast()
        e.proto = proto
        e.cp = cp
        e.dest = d
        e.unpack = unpack
        e.minsnap = minsnap
        e.l2 = nh.l2
        if method == CONN_F_TUNNEL:
            if dest is None or dest.tun_type != TUN_TYPE_IPIP or cp.daf != P.AF_INET or len(nh.l2) != 14:
                return
            e.maxlen = T.inner_mtu(nh.mtu, P.AF_INET, TUN_TYPE_IPIP, 0)
            if e.maxlen < T.min_inner_mtu(P.AF_INET):
                return
            e.tun = True
            e.addrs = _FAST_KEY.pack(nh.src, cp.daddr, 0, 0)[:8]
            e.addrsum = nh.src + cp.daddr
        else:
            e.maxlen = nh.mtu
            e.tun = False
            e.addrs = b""
            e.addrsum = 0
        sender = getattr(self.tx, "sender", None)
        if sender is not None:
            try:
                e.send = sender(nh.ifindex)
            except OSError:
                return
        else:
            e.send = functools.partial(self.tx.send, nh.ifindex)
        fast = self._fast
        if len(fast) >= FAST_MAX:
            self._flush()
            fast.clear()
        fast[_FAST_KEY.pack(p[2], p[4], p[3], p[5])] = e

    def handle_frame(self, buf: Any, start: int, end: int, ifindex: int, status: int, wire_len: int) -> None:
        """One captured frame (``buf[start:end]``); never raises on bad input."""
        st = self.stats
        st.frames += 1
        if end - start < wire_len:
            st.truncated += 1
            return
        p = P.parse_frame(buf, start, end)
        if p is None:
            st.malformed += 1
            return
        af = p[0]
        proto = p[1]
        daddr = p[4]
        if proto == P.IPPROTO_ICMP or proto == P.IPPROTO_ICMPV6:
            self._related_icmp(buf, start, p, ifindex, status)
            return
        if (
            (af, proto, daddr, p[5]) not in self._match
            and (af, proto, daddr) not in self._match_any
            and (p[10] != P.FRAG_LATER or not self._addr_served(af, proto, daddr))
        ):
            st.not_ours += 1
            return
        if p[10] != P.FRAG_NONE:
            self._fragment(buf, start, end, p, ifindex, status)
            return
        self._decide(buf, start, p, ifindex, status)

    def _addr_served(self, af: int, proto: int, daddr: int) -> bool:
        return any(t.af == af and t.protocol == proto and t.addr == daddr for t in self._targets)

    def _related_icmp(self, buf: Any, start: int, p: P.Parsed, ifindex: int, status: int) -> None:
        """An ICMP packet to a served address: ``ip_vs_in_icmp`` for DR/TUN
        (rules in :mod:`forwarding.icmp_related`).  An error about an existing
        DR/TUN connection (the quote looked up reversed, client -> VIP) with a
        valid checksum is counted for it (``ip_vs_in_stats``, ``in_pkts``)
        and sent to its real server by the connection's own transmitter
        (``ip_vs_icmp_xmit``: DR or TUN, packet unchanged but for the TTL);
        everything else is left to the local stack (counted as not ours)."""
        st = self.stats
        rel = IR.related(buf, p)
        if rel is None:
            st.not_ours += 1
            return
        v = self.director.in_icmp(
            rel.protocol, p[P.P_AF], rel.caddr, rel.cport, rel.vaddr, rel.vport, p[P.P_IPLEN], rel.csum_ok,
            _DIRECT_METHODS,
        )  # fmt: skip
        if v.action == ACCEPT:
            st.not_ours += 1
            return
        if v.action != FORWARD:
            # a bad checksum: the kernel drops it; here it is just not forwarded
            st.extra["icmp_bad_csum"] = st.extra.get("icmp_bad_csum", 0) + 1
            return
        st.extra["icmp_related"] = st.extra.get("icmp_related", 0) + 1
        cp = v.conn
        self._forward(cp, buf, start, p, ifindex, status)

    def _decide(self, buf: Any, start: int, p: P.Parsed, ifindex: int, status: int, fwmark: int = 0) -> Any:
        if p[0] == P.AF_INET and self._fast:
            # this decision replaces whatever the fast path knew of the flow
            self._fast.pop(_FAST_KEY.pack(p[2], p[4], p[3], p[5]), None)
        flow = Flow(p[0], p[1], p[2], p[3], p[4], p[5], fwmark)
        if p[1] == IPPROTO_UDP and self._pe_payload:
            # the UDP payload, for --pe sip (lvs.pe_sip: the Call-ID decides a
            # new flow's template); for the first fragment of a datagram, the
            # part it carries (the kernel reassembles first).  Only while
            # some service has a PE: others never read it.
            l4 = p[8]
            v = self.director.process_in(flow, self._t, p[6], p[9], buf[l4 + 8 : p[7] + p[9]], l4 - p[7])
        else:
            v = self.director.process_in(flow, self._t, p[6], p[9])
        action = v.action
        if action == FORWARD:
            self._forward(v.conn, buf, start, p, ifindex, status)
        elif action == REJECT:
            self.stats.rejected += 1
            self._icmp_error(buf, start, p, ifindex, "unreach")
        elif v.action == "drop":
            self.stats.dropped += 1
        else:
            self.stats.accepted += 1
        return v

    # -- transmit ---------------------------------------------------------------------
    def _dest_of(self, cp: Any) -> Dest | None:
        dest = cp.dest
        if dest is None and cp.svc is not None:
            dest = cp.svc.find_dest(cp.daf, cp.daddr, cp.dport) or cp.svc.find_dest(cp.daf, cp.daddr, 0)
        return dest

    def _forward(self, cp: Any, buf: Any, start: int, p: P.Parsed, ifindex: int, status: int) -> None:
        method = cp.flags & CONN_F_FWD_MASK
        if method != CONN_F_DROUTE and method != CONN_F_TUNNEL:
            self.stats.other_method += 1
            return
        assert self.resolver is not None
        nh = self.resolver.lookup(cp.daf, cp.daddr, self._t)
        if nh is None:
            # wait for the neighbour; keep a copy of the frame
            frame = bytes(buf[start : p[7] + p[9]])
            self.stats.waiting += 1
            self.resolver.wait((cp.daf, cp.daddr), lambda: self._retry(cp, frame, ifindex, status))
            return
        if not nh.ok:
            self.stats.no_route += 1
            return
        l3 = p[7]
        iplen = p[9]
        pkt = bytearray(buf[l3 : l3 + iplen])
        if status & TP_STATUS_CSUMNOTREADY and p[10] == P.FRAG_NONE:
            P.finish_l4_checksum(pkt, p[8] - l3, iplen, p[1])
        if not P.decrement_ttl(pkt, 0):
            self.stats.ttl_exceeded += 1
            self._icmp_error(buf, start, p, ifindex, "ttl")
            return
        if method == CONN_F_DROUTE:
            if iplen <= nh.mtu:
                self.tx.send(nh.ifindex, nh.l2 + pkt)
                self.stats.forwarded += 1
                if p[10] == P.FRAG_NONE and not status & (TP_STATUS_CSUMNOTREADY | STATUS_QUEUED):
                    self._fast_install(cp, nh, None, p, method)
                return
            self._too_big(cp, nh, pkt, buf, start, p, ifindex, nh.mtu, None)
            return
        dest = self._dest_of(cp)
        if dest is None:
            self.stats.dropped += 1
            return
        mtu = T.inner_mtu(nh.mtu, cp.daf, dest.tun_type, dest.tun_flags)
        if mtu < T.min_inner_mtu(cp.daf):
            self.stats.dropped += 1
            return
        if iplen > mtu:
            self._too_big(cp, nh, pkt, buf, start, p, ifindex, mtu, dest)
            return
        self._send_tun(cp, nh, dest, pkt, p)
        if p[10] == P.FRAG_NONE and not status & (TP_STATUS_CSUMNOTREADY | STATUS_QUEUED):
            self._fast_install(cp, nh, dest, p, method)

    def _send_tun(self, cp: Any, nh: NextHop, dest: Dest, inner: bytearray, p: P.Parsed) -> None:
        outer = T.encapsulate(
            inner,
            p[0],
            cp.daf,
            nh.src,
            cp.daddr,
            dest.tun_type,
            dest.tun_port,
            dest.tun_flags,
            P.flow_hash(p),
            bool(self.ipvs.sysctl.pmtu_disc),
            self._port_range,
        )
        if len(outer) > nh.mtu and cp.daf == P.AF_INET:
            # ignore_df: the outer packet is fragmented
            for frag in P.fragment_ipv4(outer, nh.mtu):
                self.tx.send(nh.ifindex, nh.l2 + frag)
        else:
            self.tx.send(nh.ifindex, nh.l2 + outer)
        self.stats.forwarded += 1

    def _too_big(
        self,
        cp: Any,
        nh: NextHop,
        pkt: bytearray,
        buf: Any,
        start: int,
        p: P.Parsed,
        ifindex: int,
        mtu: int,
        dest: Dest | None,
    ) -> None:
        """The slow path of ``ensure_mtu_is_adequate``."""
        assert self.resolver is not None
        link = self.resolver.links.get(ifindex)
        ingress_mtu = link.mtu if link is not None else 1500
        af = p[0]
        if p[1] == IPPROTO_TCP and p[9] > ingress_mtu and p[10] == P.FRAG_NONE:
            # a receive-offload aggregate: cut it back to segments that fit
            sp = P.parse_ip(pkt)
            if sp is not None:
                tcp_hlen = (pkt[sp[8] + 12] >> 4) << 2
                mss = mtu - sp[8] - tcp_hlen
                self.stats.resegmented += 1
                for seg in P.segment_tcp(pkt, sp, mss):
                    if dest is None:
                        self.tx.send(nh.ifindex, nh.l2 + seg)
                    else:
                        self._send_tun(cp, nh, dest, seg, P.parse_ip(seg) or p)
                return
        if (
            af == P.AF_INET
            and not pkt[6] & 0x40
            and not (dest is not None and not self.ipvs.sysctl.pmtu_disc)
        ):
            # no DF: fragment (DR); for TUN the outer packet is fragmented
            if dest is None:
                for frag in P.fragment_ipv4(pkt, mtu):
                    self.tx.send(nh.ifindex, nh.l2 + frag)
            else:
                self._send_tun(cp, nh, dest, pkt, p)
            self.stats.forwarded += 1
            return
        if af == P.AF_INET and dest is not None and not self.ipvs.sysctl.pmtu_disc:
            self._send_tun(cp, nh, dest, pkt, p)
            return
        self.stats.frag_needed += 1
        if p[10] != P.FRAG_LATER:
            self._icmp_error(buf, start, p, ifindex, "toobig", mtu)

    def _retry(self, cp: Any, frame: bytes, ifindex: int, status: int) -> None:
        p = P.parse_frame(frame)
        if p is None:
            return
        self._forward(cp, frame, 0, p, ifindex, status)

    # -- fragments --------------------------------------------------------------------
    def _fragment(
        self, buf: Any, start: int, end: int, p: P.Parsed, ifindex: int, status: int, fwmark: int = 0
    ) -> None:
        st = self.stats
        st.fragments += 1
        key = (p[0], p[1], p[2], p[4], p[11])
        fs = self._frags.get(key)
        if fs is None:
            if len(self._frags) >= FRAG_MAX_KEYS:
                self._frags.popitem(last=False)
            fs = self._frags[key] = _FragState(self._t + FRAG_TIMEOUT)
        if p[10] == P.FRAG_FIRST:
            if fs.decided:
                return  # duplicate first fragment
            fs.decided = True
            v = self._decide(buf, start, p, ifindex, status, fwmark)
            fs.conn = v.conn if v.action == FORWARD else None
            held, fs.held = fs.held, []
            for frame, fifx, fst in held:
                self._frag_out(fs, frame, fifx, fst)
            return
        if not fs.decided:
            if len(fs.held) < FRAG_MAX_HELD:
                fs.held.append((bytes(buf[start:end]), ifindex, status))
            return
        self._frag_out(fs, bytes(buf[start:end]), ifindex, status)

    def _frag_out(self, fs: _FragState, frame: bytes, ifindex: int, status: int) -> None:
        if fs.conn is None:
            return
        p = P.parse_frame(frame)
        if p is None:
            return
        self._forward(fs.conn, frame, 0, p, ifindex, status)

    def _expire_frags(self, now: float) -> None:
        while self._frags:
            key, fs = next(iter(self._frags.items()))
            if fs.expires > now:
                break
            del self._frags[key]

    # -- ICMP errors (scapy: slow path) --------------------------------------------------
    def _icmp_allowed(self, client: int) -> bool:
        """The per-client rate limit (:func:`forwarding.dr_icmp.icmp_allowed`)."""
        return icmp_allowed(self._icmp_tokens, client, self._t)

    def _icmp_error(self, buf: Any, start: int, p: P.Parsed, ifindex: int, kind: str, mtu: int = 0) -> None:
        """Answer the client as ``icmp_send``/``icmpv6_send`` would: from the
        address it used, quoting its packet, out of the interface it came in
        on, back to the MAC it came from.  Never about an ICMP packet (only
        ICMP errors are forwarded, and ``icmp_send`` never answers those)."""
        if p[1] == P.IPPROTO_ICMP or p[1] == P.IPPROTO_ICMPV6:
            return
        if not self._icmp_allowed(p[2]):
            return
        assert self.resolver is not None
        link = self.resolver.link(ifindex)
        if link is None:
            return
        try:
            frame = build_icmp_error(bytes(buf[start : p[7] + p[9]]), p, link.mac, kind, mtu)
        except Exception as exc:
            log.debug("icmp build failed: %s", exc)
            return
        if frame and self.tx.send(ifindex, frame):
            self.stats.icmp_sent += 1


@dataclass(slots=True)
class _FragState:
    expires: float
    decided: bool = False
    conn: Any = None
    held: list[tuple[bytes, int, int]] = field(default_factory=list)


# DirectPlane's own public names, and those of forwarding.neighbours,
# forwarding.dr_fast and forwarding.dr_icmp that lived here before the split
__all__ = [
    "ARP_TIMEOUT",
    "FAST_MAX",
    "ICMP_BURST",
    "ICMP_INTERVAL",
    "NEG_TTL",
    "NEIGH_TTL",
    "NTF_USE",
    "NUD_FAILED",
    "NUD_INCOMPLETE",
    "NUD_USABLE",
    "QUEUE_BASE",
    "RTN_LOCAL",
    "RTN_UNICAST",
    "UNRES_QLEN",
    "DirectPlane",
    "LinkInfo",
    "NetInfo",
    "NextHop",
    "PlaneStats",
    "Resolver",
    "build_icmp_error",
    "solicit",
]
