"""dh — destination hashing (ip_vs_dh.c).

The rule, in plain words:

* A table of 256 buckets (``CONFIG_IP_VS_DH_TAB_BITS`` = 8) maps the hash of
  a packet's **destination** address to a real server.  The hash is
  ``hash_32(addr, 8)`` of the address in host order; an IPv6 address is first
  folded to 32 bits by xor of its four words.  The destination address is
  what the client sent to (``flow.vaddr``) — for a firewall-mark service that
  is the packet's real destination, which is what makes dh useful in front of
  caches.
* The table is filled by walking the destination list (kernel order, newest
  first) round and round, one bucket per server: bucket ``i`` holds server
  ``i mod n``.  **Weights play no part in the layout.**
* It is rebuilt when a server is added or removed.  dh has no ``upd_dest``
  hook, so editing a server changes nothing in the table (it would not change
  the layout anyway, since weights are ignored).
* The bucket's server is refused — the packet gets "no destination
  available" (None), there is **no fallback** — when the bucket is empty (no
  servers), the server is no longer available, its weight is 0 or below, or
  its OVERLOAD flag (upper threshold) is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lvs.addr import fold, format_ip
from lvs.constants import AF_INET, DEST_F_AVAILABLE, DEST_F_OVERLOAD
from lvs.model import SchedContext, Scheduler

from .account import Account, new_account, unusable_reason
from .hashing import GOLDEN_RATIO_32

if TYPE_CHECKING:
    from lvs.model import Dest, Flow, Service

TAB_BITS = 8
TAB_SIZE = 1 << TAB_BITS
_SHIFT = 32 - TAB_BITS


class DHScheduler(Scheduler):
    """Destination hashing: the same destination address always maps to the
    same bucket, and the bucket to a fixed server while the list is unchanged."""

    name = "dh"
    watches_counts = False

    def __init__(self, svc: Service, ctx: SchedContext) -> None:
        super().__init__(svc, ctx)
        self._v4 = svc.af == AF_INET
        self._af = svc.af
        self.table: list[Dest | None] = [None] * TAB_SIZE
        self._reassign()

    def _reassign(self) -> None:
        """Fill every bucket cyclically from the list, one server per bucket."""
        dests = self.svc.destinations
        n = len(dests)
        if n == 0:
            self.table = [None] * TAB_SIZE
        else:
            self.table = [dests[i % n] for i in range(TAB_SIZE)]

    def add_dest(self, dest: Dest) -> None:
        self._reassign()

    def del_dest(self, dest: Dest, index: int) -> None:
        self._reassign()

    # No upd_dest: the kernel registers none for dh, so a weight edit leaves
    # the table as it is (the base class hook does nothing).

    def bucket_of(self, addr: int) -> int:
        """The bucket a destination address hashes to."""
        if not self._v4:
            addr = fold(self._af, addr)
        return ((addr * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> _SHIFT

    def schedule(self, flow: Flow, now: float) -> Dest | None:
        addr = flow.vaddr
        if not self._v4:
            addr = fold(self._af, addr)
        dest = self.table[((addr * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> _SHIFT]
        if (
            dest is None
            or not dest.flags & DEST_F_AVAILABLE
            or dest.weight <= 0
            or dest.flags & DEST_F_OVERLOAD
        ):
            return None
        return dest

    def done(self) -> None:
        self.table = [None] * TAB_SIZE

    def explain(self) -> str:
        n = len(self.svc.destinations)
        return f"dh: {TAB_SIZE} buckets over {n} servers (cyclic, weights ignored)"

    def account(self, flow: Flow, now: float) -> Account:
        """The bucket of the destination address and its owner, as data."""
        addr = flow.vaddr if self._v4 else fold(self._af, flow.vaddr)
        bucket = self.bucket_of(flow.vaddr)
        dest = self.table[bucket]
        acc = new_account(
            self,
            address=format_ip(flow.af, flow.vaddr),
            hash_input=addr,
            bucket=bucket,
            table_size=TAB_SIZE,
            owner=None if dest is None else dest.endpoint(),
        )
        if dest is None:
            acc["refused"] = "the table is empty"
            return acc
        reason = unusable_reason(dest, available=True)
        if reason:
            acc["refused"] = f"{dest.endpoint()} is {reason}; dh has no fallback"
            return acc
        acc["chosen"] = dest.endpoint()
        return acc


SCHEDULER = DHScheduler
