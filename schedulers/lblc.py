"""lblc — locality-based least-connection (ip_vs_lblc.c).

Made for cache clusters: requests for the same destination address go to the
same real server while that server is not overloaded.

The rule, in plain words:

* A cache maps a packet's **destination** address (``flow.vaddr``; for a
  firewall-mark service, the real destination) to one real server.  It is a
  hash table of 1024 buckets (``hash_32(addr, 10)``, IPv6 folded by xor of
  its words); entries match on the full address.  The soft maximum is
  16 × 1024 = 16384 entries.
* **Hit:** the entry's ``lastuse`` is set to now.  Its server is used when it
  is still AVAILABLE (not deleted), has weight > 0 and is not "overloaded" in
  lblc's own sense: *its active connections exceed its weight while some
  server of the service has fewer than half its weight in active
  connections* (``activeconns·2 < weight``).  **The OVERLOAD flag of the
  upper threshold (-x) is not looked at on a hit** — a kernel quirk kept here.
* **Miss, or unusable hit:** weighted least-connection over the whole service:
  the first server (list order, newest first) that is not OVERLOAD and has
  weight > 0 is the candidate; each later non-OVERLOAD server replaces it
  when ``overhead_cand·weight_d > overhead_d·weight_cand`` (strict, so the
  earlier server wins ties).  Overhead is ``conn_overhead`` (active×257 +
  inactive on recent kernels, active×256 + inactive on classic ones).  No
  such server: None, and the cache is left as it is.  Otherwise the cache
  entry is written: kept if it already names that server, else replaced by a
  new entry (``lastuse`` = now).  On recent kernels (6.1.192, 6.12.113 and
  later) no new entry is made while the table holds 1.5 × 16384 = 24576
  entries or more (the server is still used).  Classic kernels have no cap
  and, when they replace an entry, forget to decrement the entry counter, so
  the counter that drives garbage collection drifts upwards; both are
  reproduced under ``ctx.classic``.
* **Garbage collection**, a timer every 60 s from the moment the scheduler
  was bound:

  - every 30th run (counter starts at 1, the run that finds it a multiple of
    30 does it and resets it to 1) a full sweep deletes every entry idle for
    ``lblc_expiration`` (sysctl, default 24 h) or more;
  - otherwise, if the table holds no more than 16384 entries, the counter is
    incremented and nothing else happens;
  - otherwise (counter not incremented) it deletes entries idle for 6 min or
    more, bucket by bucket from the one after the *rover*, until it has
    deleted ``min((entries − 16384)·4/3, 8192)`` — it always finishes the
    bucket it is in — or has visited all 1024 buckets; the rover stays at
    the last bucket visited.

Time is the ``now`` passed to ``schedule`` and ``tick`` (seconds).  The timer
is armed when the scheduler is created; since the table code passes no clock
to the constructor, pylvs arms it at the first ``now`` it sees (``tick`` or
``schedule``), or at ``start=`` when given.  ``tick(now)`` runs every timer
expiry due up to ``now``, each at its own due time, so it may be called as
rarely as convenient.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from lvs.addr import fold, format_ip
from lvs.constants import AF_INET, DEST_F_AVAILABLE, DEST_F_OVERLOAD
from lvs.model import SchedContext, Scheduler
from lvs.sched import conn_overhead

from .account import (
    Account,
    least_walk,
    locality_overload,
    new_account,
    overhead_form,
    server_row,
    unusable_reason,
)
from .hashing import GOLDEN_RATIO_32

if TYPE_CHECKING:
    from lvs.model import Dest, Flow, Service

TAB_BITS = 10
TAB_SIZE = 1 << TAB_BITS
TAB_MASK = TAB_SIZE - 1
MAX_SIZE = TAB_SIZE * 16
#: recent kernels refuse new entries from this many on
HARD_CAP = MAX_SIZE * 3 // 2
CHECK_EXPIRE_INTERVAL = 60.0
ENTRY_TIMEOUT = 6 * 60.0
COUNT_FOR_FULL_EXPIRATION = 30


def lblc_overloaded(dest: Dest, svc: Service) -> bool:
    """lblc/lblcr's "overloaded": more active connections than weight, while
    some server of the service is below half of its weight."""
    if dest.activeconns > dest.weight:
        for d in svc.destinations:
            if d.activeconns * 2 < d.weight:
                return True
    return False


def wlc_pick(svc: Service, classic: bool) -> Dest | None:
    """Weighted least-connection over the service, as lblc/lblcr run it.

    First non-OVERLOAD server with weight > 0, then each later non-OVERLOAD
    server replaces it when ``loh·w_d > doh·w_least`` (earlier wins ties).
    The overhead is :func:`lvs.sched.conn_overhead`, written out inline
    here (active×257 + inactive, classic active×256 + inactive) because this
    walk runs over every server on each cache miss.
    """
    mult = 256 if classic else 257
    least = None
    lw = 0
    loh = 0
    for d in svc.destinations:
        if d.flags & DEST_F_OVERLOAD:
            continue
        w = d.weight
        if least is None:
            if w > 0:
                least = d
                lw = w
                loh = d.activeconns * mult + d.inactconns
            continue
        doh = d.activeconns * mult + d.inactconns
        if loh * w > doh * lw:
            least = d
            lw = w
            loh = doh
    return least


class _Entry:
    __slots__ = ("addr", "bucket", "dest", "lastuse")

    def __init__(self, addr: int, bucket: int, dest: Dest, lastuse: float) -> None:
        self.addr = addr
        self.bucket = bucket
        self.dest = dest
        self.lastuse = lastuse


class CacheGC:
    """The cache state, its bucket hash and the garbage collection lblc and
    lblcr share (``ip_vs_lblc_check_expire``, ``ip_vs_lblcr_check_expire``):
    a timer every 60 s; every 30th run deletes the entries idle for the
    sysctl expiration; the others, only while the cache holds more than
    MAX_SIZE entries, delete entries idle for 6 minutes, bucket by bucket
    from a rover, until (count - MAX_SIZE) * 4/3 (at most MAX_SIZE/2) are
    gone."""

    def __init__(self, svc: Service, ctx: SchedContext, *, start: float | None = None) -> None:
        super().__init__(svc, ctx)  # type: ignore[call-arg] - Scheduler comes next in the MRO
        self._v4 = svc.af == AF_INET
        self._af = svc.af
        #: folded destination address -> cache entry
        self.entries: dict[int, Any] = {}
        #: the kernel's entry counter (differs from len(entries) only on classic kernels)
        self.count = 0
        self.rover = 0
        self.counter = 1
        self.dead = False
        self.next_check: float | None = None if start is None else start + CHECK_EXPIRE_INTERVAL

    def bucket_of(self, addr: int) -> int:
        """The cache bucket of a destination address (hash_32, TAB_BITS bits)."""
        if not self._v4:
            addr = fold(self._af, addr)
        return ((addr * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> (32 - TAB_BITS)

    def _expiration(self) -> float:
        raise NotImplementedError

    def tick(self, now: float) -> None:
        if self.dead:
            return
        if self.next_check is None:
            self.next_check = now + CHECK_EXPIRE_INTERVAL
            return
        while self.next_check <= now:
            self._check_expire(self.next_check)
            self.next_check += CHECK_EXPIRE_INTERVAL

    def _delete(self, en: Any) -> None:
        del self.entries[en.addr]
        self.count -= 1

    def _check_expire(self, now: float) -> None:
        """One run of the 60 s timer."""
        if self.counter % COUNT_FOR_FULL_EXPIRATION == 0:
            expire = self._expiration()
            for en in [e for e in self.entries.values() if now >= e.lastuse + expire]:
                self._delete(en)
            self.counter = 1
            return
        if self.count <= MAX_SIZE:
            self.counter += 1
            return
        goal = min((self.count - MAX_SIZE) * 4 // 3, MAX_SIZE // 2)
        stale: dict[int, list[Any]] = {}
        for en in self.entries.values():
            if now >= en.lastuse + ENTRY_TIMEOUT:
                stale.setdefault(en.bucket, []).append(en)
        j = self.rover
        for _ in range(TAB_SIZE):
            j = (j + 1) & TAB_MASK
            for en in stale.get(j, ()):
                self._delete(en)
                goal -= 1
            if goal <= 0:
                break
        self.rover = j

    def holds(self) -> Iterable[Dest]:
        """The dests the cache entries point at (each entry holds its dest)."""
        return [en.dest for en in self.entries.values()]

    def done(self) -> None:
        self.dead = True
        self.entries.clear()
        self.count = 0
        self.next_check = None


class LBLCScheduler(CacheGC, Scheduler):
    """Locality-based least-connection: destination address → cached server."""

    name = "lblc"

    entries: dict[int, _Entry]

    # -- helpers ---------------------------------------------------------------
    def _new(self, addr: int, dest: Dest, now: float) -> None:
        """``ip_vs_lblc_new``: keep an entry that names ``dest``, else replace it."""
        en = self.entries.get(addr)
        if en is not None:
            if en.dest is dest:
                return
            del self.entries[addr]
            if not self.ctx.classic:
                self.count -= 1
        if not self.ctx.classic and self.count >= HARD_CAP:
            return
        self.entries[addr] = _Entry(addr, self.bucket_of(addr), dest, now)
        self.count += 1

    # -- scheduling ----------------------------------------------------------------
    def schedule(self, flow: Flow, now: float) -> Dest | None:
        if self.next_check is None:
            self.next_check = now + CHECK_EXPIRE_INTERVAL
        addr = flow.vaddr
        svc = self.svc
        en = self.entries.get(addr)
        if en is not None:
            en.lastuse = now
            dest = en.dest
            # OVERLOAD is deliberately not checked here (kernel quirk).
            if dest.flags & DEST_F_AVAILABLE and dest.weight > 0 and not lblc_overloaded(dest, svc):
                return dest
        dest = wlc_pick(svc, self.ctx.classic)
        if dest is None:
            return None
        if not self.dead:
            self._new(addr, dest, now)
        return dest

    def _expiration(self) -> float:
        return self.ctx.lblc_expiration

    def explain(self) -> str:
        return f"lblc: {len(self.entries)} cached destinations"

    def account(self, flow: Flow, now: float) -> Account:
        """Cache hit or miss for the destination address, the overload
        heuristic on a hit, and the wlc walk when the cache does not decide."""
        classic = self.ctx.classic
        svc = self.svc
        en = self.entries.get(flow.vaddr)
        acc = new_account(
            self,
            overhead_form=overhead_form(classic),
            address=format_ip(flow.af, flow.vaddr),
            bucket=self.bucket_of(flow.vaddr),
            cache="hit" if en is not None else "miss",
            cached=None if en is None else en.dest.endpoint(),
        )
        if en is not None:
            dest = en.dest
            acc["cached_row"] = server_row(dest, classic)
            check = locality_overload(dest, svc.destinations)
            acc["overload_check"] = check
            reason = unusable_reason(dest, available=True)
            if reason == "overloaded (above its upper threshold)":
                reason = None  # lblc does not look at OVERLOAD on a hit (kernel quirk)
            if reason is None and not check["overloaded"]:
                acc["chosen"] = dest.endpoint()
                acc["cache_used"] = True
                return acc
            acc["cache_refused"] = reason or "overloaded by the locality rule"
        least = least_walk(acc, svc.destinations, lambda d: conn_overhead(d, classic))
        acc["chosen"] = None if least is None else least.endpoint()
        if least is not None:
            if en is not None and en.dest is least:
                acc["cache_write"] = "entry kept"
            elif not classic and self.count - (1 if en is not None else 0) >= HARD_CAP:
                acc["cache_write"] = "no new entry: the cache is full"
            else:
                acc["cache_write"] = f"cache now maps {acc['address']} to {least.endpoint()}"
        return acc


SCHEDULER = LBLCScheduler
