"""sh — source hashing (ip_vs_sh.c).

The rule, in plain words:

* A table of 256 buckets (``CONFIG_IP_VS_SH_TAB_BITS`` = 8) maps a hash of
  the **client** (source) address to a real server.  The bucket is
  ``hash_32(port + addr, 8)``: ``addr`` is the source address in host order
  (IPv6 folded to 32 bits by xor of its words), ``port`` is 0 unless the
  service has the ``sh-port`` flag (SCHED2), in which case it is the client's
  source port in host order (the kernel applies ``ntohs``) — only for TCP,
  UDP and SCTP packets, 0 for anything else.  The sum wraps at 32 bits.
* The table is filled by walking the destination list (newest first) round
  and round: each server takes ``weight`` consecutive buckets before the walk
  moves on, and a server of weight 0 still takes **one** bucket.  Rebuilt on
  add, delete **and** edit (weights shape the layout).
* The bucket's server is used unless it is "unavailable": weight 0 or less, or
  OVERLOAD set.  (Unlike dh, sh does not look at the AVAILABLE flag; a deleted
  server has already left the table by then.)  Then:

  - without ``sh-fallback`` (SCHED1): no destination (None);
  - with ``sh-fallback``: probe other buckets for ``offset`` = 0, 1, … 255
    at ``(offset + ihash) + ihash`` modulo 256 — the kernel adds the
    original bucket ``ihash`` twice, so the probe sequence starts at
    ``2·ihash`` rather than next to the original bucket (a quirk kept here);
    the first probed server that is not unavailable wins, an empty bucket
    ends the search with None.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lvs.addr import fold, format_ip
from lvs.constants import (
    AF_INET,
    DEST_F_OVERLOAD,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
)
from lvs.model import SchedContext, Scheduler

from .account import Account, new_account, unusable_reason
from .hashing import GOLDEN_RATIO_32

if TYPE_CHECKING:
    from lvs.model import Dest, Flow, Service

TAB_BITS = 8
TAB_SIZE = 1 << TAB_BITS
TAB_MASK = TAB_SIZE - 1
_SHIFT = 32 - TAB_BITS

#: sh-fallback and sh-port (ip_vs_sh.c: IP_VS_SVC_F_SCHED_SH_FALLBACK/_PORT)
SH_FALLBACK = SVC_F_SCHED1
SH_PORT = SVC_F_SCHED2

#: protocols whose first two header words are the ports
PORT_PROTOCOLS = frozenset((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP))


def _unavailable(dest: Dest) -> bool:
    return dest.weight <= 0 or bool(dest.flags & DEST_F_OVERLOAD)


class SHScheduler(Scheduler):
    """Source hashing: a client (or client:port with sh-port) keeps its server
    while the table is unchanged."""

    name = "sh"
    watches_counts = False

    def __init__(self, svc: Service, ctx: SchedContext) -> None:
        super().__init__(svc, ctx)
        self._v4 = svc.af == AF_INET
        self._af = svc.af
        self.table: list[Dest | None] = [None] * TAB_SIZE
        self._reassign()

    def _reassign(self) -> None:
        """Walk the list cyclically; each server fills ``max(weight, 1)`` buckets in a row."""
        dests = self.svc.destinations
        if not dests:
            self.table = [None] * TAB_SIZE
            return
        table: list[Dest | None] = []
        n = len(dests)
        i = 0
        while len(table) < TAB_SIZE:
            dest = dests[i % n]
            table.extend([dest] * max(1, min(dest.weight, TAB_SIZE - len(table))))
            i += 1
        self.table = table

    def add_dest(self, dest: Dest) -> None:
        self._reassign()

    def del_dest(self, dest: Dest, index: int) -> None:
        self._reassign()

    def upd_dest(self, dest: Dest) -> None:
        self._reassign()

    def bucket_of(self, addr: int, port: int = 0) -> int:
        """The initial bucket of a source address (and port, when sh-port is used)."""
        if not self._v4:
            addr = fold(self._af, addr)
        return ((((port + addr) & 0xFFFFFFFF) * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> _SHIFT

    def schedule(self, flow: Flow, now: float) -> Dest | None:
        flags = self.svc.flags
        addr = flow.caddr
        if not self._v4:
            addr = fold(self._af, addr)
        if flags & SH_PORT and flow.protocol in PORT_PROTOCOLS:
            addr = (addr + flow.cport) & 0xFFFFFFFF
        ihash = ((addr * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> _SHIFT
        table = self.table
        dest = table[ihash]
        if dest is None:
            return None
        if dest.weight > 0 and not dest.flags & DEST_F_OVERLOAD:
            return dest
        if not flags & SH_FALLBACK:
            return None
        # Fallback: the kernel re-adds ihash to an offset that already
        # starts at ihash, so probe k is bucket (2*ihash + k) mod 256.
        start = ihash << 1
        for offset in range(TAB_SIZE):
            dest = table[(start + offset) & TAB_MASK]
            if dest is None:
                return None
            if not _unavailable(dest):
                return dest
        return None

    def done(self) -> None:
        self.table = [None] * TAB_SIZE

    def account(self, flow: Flow, now: float) -> Account:
        """The client's bucket, its owner and the fallback probes, as data."""
        flags = self.svc.flags
        addr = flow.caddr if self._v4 else fold(self._af, flow.caddr)
        port = flow.cport if flags & SH_PORT and flow.protocol in PORT_PROTOCOLS else 0
        value = (addr + port) & 0xFFFFFFFF
        ihash = ((value * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> _SHIFT
        table = self.table
        dest = table[ihash]
        acc = new_account(
            self,
            address=format_ip(flow.af, flow.caddr),
            port=port,
            hash_input=value,
            bucket=ihash,
            table_size=TAB_SIZE,
            owner=None if dest is None else dest.endpoint(),
            fallback=bool(flags & SH_FALLBACK),
            probes=[],
        )
        if dest is None:
            acc["refused"] = "the table is empty"
            return acc
        reason = unusable_reason(dest)
        if reason is None:
            acc["chosen"] = dest.endpoint()
            return acc
        if not flags & SH_FALLBACK:
            acc["refused"] = f"{dest.endpoint()} is {reason}; no sh-fallback"
            return acc
        start_bucket = ihash << 1
        for offset in range(TAB_SIZE):
            bucket = (start_bucket + offset) & TAB_MASK
            probe = table[bucket]
            why = "empty bucket" if probe is None else unusable_reason(probe)
            acc["probes"].append(
                {"offset": offset, "bucket": bucket, "owner": probe and probe.endpoint(), "reason": why}
            )
            if probe is None:
                acc["refused"] = "a probe met an empty bucket"
                return acc
            if why is None:
                acc["chosen"] = probe.endpoint()
                return acc
        acc["refused"] = "every bucket's server is unavailable"
        return acc

    def explain(self) -> str:
        counts: dict[str, int] = {}
        for dest in self.table:
            if dest is not None:
                key = dest.endpoint()
                counts[key] = counts.get(key, 0) + 1
        layout = ", ".join(f"{k}×{v}" for k, v in counts.items()) or "empty"
        return f"sh: {TAB_SIZE} buckets: {layout}"


SCHEDULER = SHScheduler
