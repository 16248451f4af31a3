"""lblcr — locality-based least-connection with replication (ip_vs_lblcr.c).

Like lblc, but a destination address maps to a *set* of real servers, which
grows when its members get overloaded and shrinks when it has been stable for
long.

The rule, in plain words:

* The cache maps a packet's **destination** address (``flow.vaddr``) to a
  server set; same table as lblc: 1024 buckets by ``hash_32(addr, 10)``, soft
  maximum 16384 entries, and the same 60 s garbage-collection timer (6 min
  idle timeout for the partial collection past 16384 entries, full sweep
  every 30th run with the ``lblcr_expiration`` sysctl, default 24 h; see
  :mod:`schedulers.lblc`).  A set keeps its members newest-insert first and
  remembers ``lastmod``, the time a member was last added or removed.
* **Hit:** the entry's ``lastuse`` becomes now.

  1. The set's weighted least-loaded member is picked: the first member that
     is not OVERLOAD, has weight > 0 and is AVAILABLE starts; each later
     member that is not OVERLOAD replaces it when
     ``overhead_cand·weight_m > overhead_m·weight_cand`` and it is AVAILABLE
     (earlier wins ties).
  2. Then, if the set has more than one member and has not changed for more
     than ``lblcr_expiration`` (strictly), its weighted *most*-loaded member
     is removed: the first member with weight > 0 starts, a later member with
     weight > 0 replaces it when ``overhead_most·weight_m <
     overhead_m·weight_most``.  This happens after step 1, so the member just
     picked may be the one removed — and is still used (kernel behaviour).
  3. If step 1 found a member and it is not "overloaded" in lblc's sense
     (active connections above its weight while some server of the service
     is below half its weight), it is used.
  4. Otherwise weighted least-connection runs over the whole service (the
     wlc rule of :func:`schedulers.lblc.wlc_pick`); None if nothing is
     eligible.  The winner is added at the head of the set unless already a
     member (an addition updates ``lastmod``), and is used.
* **Miss:** weighted least-connection over the service; None if nothing is
  eligible; otherwise a new entry with a one-member set is created
  (``lastuse`` = ``lastmod`` = now) — on recent kernels only while the table
  holds fewer than 1.5 × 16384 entries (classic kernels: no cap) — and the
  server is used either way.
* OVERLOAD is honoured everywhere except in picking the most-loaded member.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from lvs.addr import format_ip
from lvs.constants import DEST_F_AVAILABLE, DEST_F_OVERLOAD
from lvs.model import Scheduler
from lvs.sched import conn_overhead

from .account import (
    Account,
    add_step,
    least_walk,
    locality_overload,
    new_account,
    overhead_form,
    server_row,
    skip,
)
from .lblc import (
    CHECK_EXPIRE_INTERVAL,
    HARD_CAP,
    CacheGC,
    lblc_overloaded,
    wlc_pick,
)

if TYPE_CHECKING:
    from lvs.model import Dest, Flow


class DestSet:
    """A destination set: members newest-insert first, and the time of the
    last change."""

    __slots__ = ("lastmod", "members")

    def __init__(self, lastmod: float) -> None:
        self.members: list[Dest] = []
        self.lastmod = lastmod

    def insert(self, dest: Dest, now: float, check: bool = True) -> None:
        """Add at the head (unless ``check`` finds it already there)."""
        if check and any(m is dest for m in self.members):
            return
        self.members.insert(0, dest)
        self.lastmod = now

    def erase(self, dest: Dest, now: float) -> None:
        for i, m in enumerate(self.members):
            if m is dest:
                del self.members[i]
                self.lastmod = now
                return

    def least(self, classic: bool) -> Dest | None:
        """Weighted least-loaded member (``ip_vs_dest_set_min``)."""
        members = self.members
        n = len(members)
        i = 0
        least = None
        loh = 0
        while i < n:
            d = members[i]
            i += 1
            if d.flags & DEST_F_OVERLOAD:
                continue
            if d.weight > 0 and d.flags & DEST_F_AVAILABLE:
                least = d
                loh = conn_overhead(d, classic)
                break
        if least is None:
            return None
        while i < n:
            d = members[i]
            i += 1
            if d.flags & DEST_F_OVERLOAD:
                continue
            doh = conn_overhead(d, classic)
            if loh * d.weight > doh * least.weight and d.flags & DEST_F_AVAILABLE:
                least = d
                loh = doh
        return least

    def most(self, classic: bool) -> Dest | None:
        """Weighted most-loaded member with weight > 0 (``ip_vs_dest_set_max``);
        OVERLOAD and availability are not looked at."""
        members = self.members
        n = len(members)
        i = 0
        most = None
        moh = 0
        while i < n:
            d = members[i]
            i += 1
            if d.weight > 0:
                most = d
                moh = conn_overhead(d, classic)
                break
        if most is None:
            return None
        while i < n:
            d = members[i]
            i += 1
            doh = conn_overhead(d, classic)
            if moh * d.weight < doh * most.weight and d.weight > 0:
                most = d
                moh = doh
        return most


class _Entry:
    __slots__ = ("addr", "bucket", "lastuse", "set")

    def __init__(self, addr: int, bucket: int, lastuse: float) -> None:
        self.addr = addr
        self.bucket = bucket
        self.lastuse = lastuse
        self.set = DestSet(lastuse)


class LBLCRScheduler(CacheGC, Scheduler):
    """Locality-based least-connection with replication: destination address →
    a set of servers."""

    name = "lblcr"

    entries: dict[int, _Entry]

    def schedule(self, flow: Flow, now: float) -> Dest | None:
        if self.next_check is None:
            self.next_check = now + CHECK_EXPIRE_INTERVAL
        addr = flow.vaddr
        svc = self.svc
        classic = self.ctx.classic
        en = self.entries.get(addr)
        if en is not None:
            en.lastuse = now
            dset = en.set
            dest = dset.least(classic)
            if len(dset.members) > 1 and now > dset.lastmod + self.ctx.lblcr_expiration:
                m = dset.most(classic)
                if m is not None:
                    dset.erase(m, now)
            if dest is not None and not lblc_overloaded(dest, svc):
                return dest
            dest = wlc_pick(svc, classic)
            if dest is None:
                return None
            if not self.dead:
                dset.insert(dest, now)
            return dest
        dest = wlc_pick(svc, classic)
        if dest is None:
            return None
        if not self.dead and (classic or self.count < HARD_CAP):
            en = _Entry(addr, self.bucket_of(addr), now)
            en.set.insert(dest, now, check=False)
            self.entries[addr] = en
            self.count += 1
        return dest

    # -- garbage collection (same timer rules as lblc) ----------------------------
    def _expiration(self) -> float:
        return self.ctx.lblcr_expiration

    def holds(self) -> Iterable[Dest]:
        """The members of every cached set (each membership holds its dest)."""
        return [m for en in self.entries.values() for m in en.set.members]

    def account(self, flow: Flow, now: float) -> Account:
        """Cache hit or miss, the set's least-loaded member, the shrink rule, the
        overload heuristic and the wlc walk over the service, as data."""
        classic = self.ctx.classic
        svc = self.svc
        en = self.entries.get(flow.vaddr)
        acc = new_account(
            self,
            overhead_form=overhead_form(classic),
            address=format_ip(flow.af, flow.vaddr),
            bucket=self.bucket_of(flow.vaddr),
            cache="hit" if en is not None else "miss",
            set=[] if en is None else [m.endpoint() for m in en.set.members],
        )
        if en is None:
            least = least_walk(acc, svc.destinations, lambda d: conn_overhead(d, classic))
            acc["chosen"] = None if least is None else least.endpoint()
            if least is not None:
                full = not classic and self.count >= HARD_CAP
                acc["cache_write"] = (
                    "no new entry: the cache is full" if full else f"new set {{{least.endpoint()}}}"
                )
            return acc
        dset = en.set
        acc["set_rows"] = [server_row(m, classic) for m in dset.members]
        add_step(acc, {"kind": "note", "text": "least loaded member of the set"})
        usable = [m for m in dset.members if m.flags & DEST_F_AVAILABLE]
        for m in dset.members:
            if not m.flags & DEST_F_AVAILABLE:
                skip(acc, m, "unavailable (deleted)")
        member = least_walk(acc, usable, lambda d: conn_overhead(d, classic), skip_zero=False)
        acc["set_least"] = None if member is None else member.endpoint()
        if len(dset.members) > 1 and now > dset.lastmod + self.ctx.lblcr_expiration:
            most = dset.most(classic)
            acc["shrink"] = {
                "unchanged_for": now - dset.lastmod,
                "expiration": self.ctx.lblcr_expiration,
                "removed": None if most is None else most.endpoint(),
            }
            add_step(acc, {"kind": "shrink", **acc["shrink"]})
        if member is not None:
            check = locality_overload(member, svc.destinations)
            acc["overload_check"] = check
            add_step(acc, {"kind": "overload", "check": check})
            if not check["overloaded"]:
                acc["chosen"] = member.endpoint()
                return acc
        add_step(acc, {"kind": "note", "text": "weighted least-connection over the whole service"})
        least = least_walk(acc, svc.destinations, lambda d: conn_overhead(d, classic))
        acc["chosen"] = None if least is None else least.endpoint()
        if least is not None:
            joined = any(m is least for m in dset.members)
            acc["cache_write"] = "already in the set" if joined else f"{least.endpoint()} joins the set"
        return acc

    def explain(self) -> str:
        sizes = sum(len(e.set.members) for e in self.entries.values())
        return f"lblcr: {len(self.entries)} cached destinations, {sizes} set members"


SCHEDULER = LBLCRScheduler
