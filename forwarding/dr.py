"""The DR/TUN data plane: frames from AF_PACKET, decisions from the core,
frames out to the real servers.

For every virtual service whose real servers are all direct-routing (``-g``)
or tunnel (``-i``) destinations, :class:`DirectPlane` captures the client's
frames (:mod:`forwarding.capture`), keeps the director's own stack from
answering them (:mod:`forwarding.netfilter`), asks the core (same connection
table, persistence, schedulers; DR/TUN entries carry NOOUTPUT, so TCP moves
through the INPUT_ONLY table since replies bypass the director) and
transmits.  The plane's parts follow the kernel's files:

* this module: setup (which services are ours, the nftables table, the
  capture ring, the NFQUEUE queue for firewall-mark services);
* :mod:`forwarding.dr_receive`: receive and decide (``ip_vs_in_hook``,
  ``ip_vs_in_icmp``), ring and queue;
* :mod:`forwarding.dr_fast`: the fast path of established IPv4 flows;
* :mod:`forwarding.dr_xmit`: transmit (``ip_vs_dr_xmit``,
  ``ip_vs_tunnel_xmit``, MTU, TTL, ICMP errors to clients);
* :mod:`forwarding.dr_frag`: fragments (the first one decides).

Firewall-mark services (``-f MARK``): with the first one, lvsd binds a free
queue (from :data:`QUEUE_BASE` up) and its nftables table gets, per served
(family, mark), a rule queueing marked packets at ``input`` priority 99,
where the kernel's ``ip_vs_in_hook`` sits; the user marks packets as for the
kernel, and the VIP must be local so that routing delivers them to
``input``.  If a fwmark service and an address/port DR/TUN service cover the
same packets, the address/port service serves them (AF_PACKET and the
raw-priority drop take them before any mark is set).

ICMP errors about DR/TUN connections (an error to a VIP quoting a reply of an
existing connection) are counted for it and forwarded to its real server
like its packets; errors matching no connection are the local stack's.

Not handled here: local clients of the VIP (traffic on lo).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import subprocess
from collections.abc import Callable
from typing import Any

from lvs.constants import CONN_F_DROUTE, CONN_F_FWD_MASK, CONN_F_TUNNEL
from lvs.core import Director
from lvs.model import Service

from . import tun
from .capture import FilterTooLarge, RxRing, Target, TxSockets, compile_addr_filter, compile_filter
from .dr_fast import FastEntry, FastPath
from .dr_frag import Fragments, FragState
from .dr_receive import Receive
from .dr_xmit import PlaneStats, Transmit
from .icmp import RateLimit
from .neighbours import Resolver
from .netfilter import NftError, NftGuard, delete_table, nft_available
from .nfqueue import NfQueue, bind_free_queue

log = logging.getLogger("lvsd.dr")

#: the first NFQUEUE number lvsd tries for firewall-mark services ("LV")
QUEUE_BASE = 0x4C56


class DirectPlane(FastPath, Receive, Fragments, Transmit):
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
        self._frags: collections.OrderedDict[tuple[int, int, int, int, int], FragState] = (
            collections.OrderedDict()
        )
        self.icmp_limit = RateLimit()
        self._port_range = tun.local_port_range()
        self._t = 0.0
        self.filter_kind = "none"
        self._started = False
        self.ring_drops = 0
        #: the fast path (forwarding.dr_fast): raw key bytes -> entry
        self.fast_path = fast_path
        self._fast: dict[bytes, FastEntry] = {}
        self._touched: list[FastEntry] = []
        #: some service has a persistence engine (--pe sip): the slow path
        #: hands the core UDP payloads (set by refresh; True until then)
        self._pe_payload = True
        # a transmitter with sender() (TxSockets) hands the fast path its
        # sockets' own send and is told the counts afterwards; others get
        # send(ifindex, frame) calls, which count themselves
        self._tx_count: Callable[..., None] | None = (
            getattr(self.tx, "count", None) if getattr(self.tx, "sender", None) is not None else None
        )

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
            self._stop_reading(self.ring.fileno())
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
            self._stop_reading(self.queue.fileno())
            self.queue.close()
            self.queue = None
        self._marks = frozenset()
        self.tx.close()
        if self.resolver is not None:
            self.resolver.close()

    def _stop_reading(self, fd: int) -> None:
        if self.loop is not None and not self.loop.is_closed():
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(fd)

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

    def _problem(self, text: str) -> None:
        """A failure the operator sees in the warnings and the log."""
        self._warnings.append(text)
        log.error("%s", text)

    def warnings(self) -> list[str]:
        return list(self._warnings)

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
                self._problem(f"DR/TUN capture not started: {exc}")
                return
        if self.guard is not None:
            try:
                self.guard.update(new)
            except Exception as exc:
                self._problem(f"nftables update failed: {exc}")
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
                self._problem(f"firewall-mark DR/TUN services not served: {exc}")
                return
        if self.guard is None or self.queue is None:
            return
        try:
            self.guard.update_fwmarks(marks, self.queue.queue_num)
            self._marks = marks
        except Exception as exc:
            self._problem(f"firewall-mark queue rules not updated: {exc}")


__all__ = ["QUEUE_BASE", "DirectPlane"]
