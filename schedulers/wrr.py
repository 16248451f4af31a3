"""wrr: weighted round-robin scheduling (``ip_vs_wrr.c``).

State: a cursor ``cl`` (a list position, initially the head), the current
weight ``cw``, the step ``di`` = gcd of the positive weights (1 if there are
none) and ``mw`` = largest weight − (di − 1), so that the last pass runs at
weight 1 and still catches a server whose weight fell below ``di``.

Rule: a decision scans the servers after the cursor and takes the first one
that is not OVERLOADed and has ``weight >= cw``; the cursor moves to it.
Each time the scan runs off the end of the list, ``cw`` drops by ``di`` and
the scan restarts at the head; when ``cw`` drops to 0 or below it is reset
to ``mw`` (a new round).  Tie-break: list order within a pass.  So with the
kernel list [A(4), B(3), C(2)] the picks are A A B A B C A B C, and since new
servers go to the head, *adding* A4, B3, C2 in that order gives the list
[C, B, A] and the picks A B A C B A C B A.

Giving up (no destination): when ``mw`` is 0 (every weight is 0); or when a
scan has tested every server at weight >= 1 in vain.  The kernel tracks the
latter with two flags: ``restarted`` (cw already wrapped to mw during this
decision) and ``last_pass`` (the pass just begun runs at cw <= di).  If the
round wraps a second time after a last pass, or wraps at all when the
decision started at the head, it gives up with the cursor at the head.  If
it started at a server and wrapped, the final low-weight pass stops at that
starting server (``stop``), and on failure the cursor stays on it.

Add, delete and edit (``dest_changed``) all reset the cursor to the head and
recompute ``di`` and ``mw``; ``cw`` becomes ``mw`` if it is above the new
``mw`` or 0, else (when di > 1) is rounded to ``(cw // di) * di + 1`` so the
round continues at the same pass.  OVERLOAD changes do not call it.

pylvs answers "the first server after position p with weight >= cw" from a
sorted list of the positions of the servers eligible at the current ``cw``
(grown incrementally as ``cw`` falls), and jumps over passes that cannot
find anything (cw above every eligible weight) in one step when that cannot
change the flags.  :meth:`WeightedRoundRobin.schedule_walk` is the kernel's
loop, kept for tests.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from math import gcd
from typing import TYPE_CHECKING

from lvs.constants import DEST_F_OVERLOAD
from lvs.model import Scheduler
from lvs.sched import is_overloaded

from .account import Account, add_step, new_account, pick, skip

if TYPE_CHECKING:
    from lvs.model import Dest, Flow, SchedContext, Service


def gcd_weight(dests: list[Dest]) -> int:
    """gcd of the positive weights, 1 if there is none."""
    g = 0
    for dest in dests:
        if dest.weight > 0:
            g = gcd(g, dest.weight)
    return g or 1


def max_weight(dests: list[Dest]) -> int:
    return max((d.weight for d in dests), default=0)


class WeightedRoundRobin(Scheduler):
    """Weighted round robin with the kernel's interleaving passes."""

    name = "wrr"
    watches_counts = False

    def __init__(self, svc: Service, ctx: SchedContext) -> None:
        super().__init__(svc, ctx)
        dests = svc.destinations
        #: the server of the last decision, or None for the list head
        self.cl: Dest | None = None
        self.di = gcd_weight(dests)
        self.mw = max_weight(dests) - (self.di - 1)
        self.cw = self.mw
        self._dirty = True
        #: effective weight per position: weight, or 0 if OVERLOADed
        self._ew: list[int] = []
        #: (-ew, pos) of servers with ew > 0, sorted (heaviest first), and -ew alone
        self._byw: list[tuple[int, int]] = []
        self._negw: list[int] = []
        #: the pass cache: positions (sorted) of the servers with ew >= _pcw,
        #: which are the first _pcount entries of _byw; _pcw 0 = no cache
        self._pcw = 0
        self._pcount = 0
        self._plist: list[int] = []

    # -- hooks --------------------------------------------------------------
    def _dest_changed(self) -> None:
        dests = self.svc.destinations
        self.cl = None
        self.di = gcd_weight(dests)
        self.mw = max_weight(dests) - (self.di - 1)
        if self.cw > self.mw or self.cw == 0:
            self.cw = self.mw
        elif self.di > 1:
            self.cw = (self.cw // self.di) * self.di + 1
        self._dirty = True

    def add_dest(self, dest: Dest) -> None:
        self._dest_changed()

    def del_dest(self, dest: Dest, index: int) -> None:
        self._dest_changed()

    def upd_dest(self, dest: Dest) -> None:
        self._dest_changed()

    def counts_changed(self, dest: Dest) -> None:
        """Only the OVERLOAD flag matters; no dest_changed, as in the kernel."""
        if self._dirty:
            return
        pos = dest.pos
        ew_list = self._ew
        ew = 0 if dest.flags & DEST_F_OVERLOAD or dest.weight < 0 else dest.weight
        if not 0 <= pos < len(ew_list) or ew == ew_list[pos] or self.svc.destinations[pos] is not dest:
            return
        old = ew_list[pos]
        ew_list[pos] = ew
        pcw = self._pcw
        if old:
            i = bisect_left(self._byw, (-old, pos))
            del self._byw[i]
            del self._negw[i]
            if pcw and old >= pcw:
                del self._plist[bisect_left(self._plist, pos)]
                self._pcount -= 1
        if ew:
            i = bisect_left(self._byw, (-ew, pos))
            self._byw.insert(i, (-ew, pos))
            self._negw.insert(i, -ew)
            if pcw and ew >= pcw:
                insort(self._plist, pos)
                self._pcount += 1

    # -- the index ----------------------------------------------------------
    def _rebuild(self) -> None:
        dests = self.svc.destinations
        self._ew = [0 if is_overloaded(d) else max(d.weight, 0) for d in dests]
        self._byw = sorted((-ew, pos) for pos, ew in enumerate(self._ew) if ew)
        self._negw = [nw for nw, _ in self._byw]
        self._pcw = 0
        self._pcount = 0
        self._plist = []
        self._dirty = False

    def _set_pass(self, cw: int) -> None:
        count = bisect_right(self._negw, -cw)
        byw = self._byw
        if self._pcw and cw < self._pcw and (count - self._pcount) * 8 <= count:
            plist = self._plist
            for _, pos in byw[self._pcount : count]:
                insort(plist, pos)
        else:
            self._plist = sorted(pos for _, pos in byw[:count])
        self._pcw = cw
        self._pcount = count

    def _next_at(self, after: int, cw: int) -> int:
        """Position of the first server after ``after`` (-1 = head) that is
        not OVERLOADed and has weight >= cw, or -1 at the end of the list."""
        if cw != self._pcw:
            self._set_pass(cw)
        plist = self._plist
        i = bisect_right(plist, after)
        return plist[i] if i < len(plist) else -1

    # -- decisions ------------------------------------------------------------
    def schedule(self, flow: Flow, now: float) -> Dest | None:
        if self._dirty:
            self._rebuild()
        mw = self.mw
        if mw == 0:
            return None
        di = self.di
        dests = self.svc.destinations
        cw = self.cw
        last = -1 if self.cl is None else self.cl.pos
        after = last
        stop = -1
        last_pass = restarted = False
        while True:
            pos = self._next_at(after, cw)
            if stop >= 0 and (pos < 0 or pos > stop):
                # the final pass reached the starting server in vain
                self.cw = cw
                self.cl = dests[stop]
                return None
            if pos >= 0:
                self.cw = cw
                self.cl = dests[pos]
                return self.cl
            after = -1
            cw -= di
            if cw <= 0:
                cw = mw
                if last_pass or last < 0:
                    self.cw = cw
                    self.cl = None
                    return None
                restarted = True
            last_pass = cw <= di
            if last_pass and restarted and last >= 0:
                stop = last
            elif not last_pass:
                cw = self._skip_empty(cw, di)

    def _skip_empty(self, cw: int, di: int) -> int:
        """Jump over full passes that find nothing because cw is above every
        eligible weight, as long as the kernel's flags cannot change on the
        way (cw stays above di, so no last pass, no wrap, no stop)."""
        top = -self._negw[0] if self._negw else 0
        if cw <= top:
            return cw
        empty = (cw - top + di - 1) // di  # passes with cw > top
        safe = (cw + di - 1) // di - 2  # passes after which cw stays > di
        k = min(empty, safe)
        return cw - k * di if k > 0 else cw

    def schedule_walk(self, flow: Flow | None = None, now: float = 0.0) -> Dest | None:
        """The kernel's loop over the list, step by step (reference for the index)."""
        dests = self.svc.destinations
        n = len(dests)
        if self.mw == 0:
            return None
        last = -1 if self.cl is None else self.cl.pos
        i = last
        stop = -1
        last_pass = restarted = False
        while True:
            i += 1
            while i < n:
                dest = dests[i]
                if not is_overloaded(dest) and dest.weight >= self.cw:
                    self.cl = dest
                    return dest
                if i == stop:
                    self.cl = dest
                    return None
                i += 1
            i = -1
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                if last_pass or last < 0:
                    self.cl = None
                    return None
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last >= 0:
                stop = last

    def explain(self) -> str:
        where = "head" if self.cl is None else self.cl.endpoint()
        return f"wrr: cursor at {where}, cw={self.cw} mw={self.mw} di={self.di}"

    def account(self, flow: Flow, now: float) -> Account:
        """The kernel's loop (:meth:`schedule_walk`) on copies of the cursor and
        cw, recording each pass and each server tried."""
        dests = self.svc.destinations
        acc = new_account(
            self,
            cursor=None if self.cl is None else self.cl.endpoint(),
            cw=self.cw,
            mw=self.mw,
            di=self.di,
            max_weight=max_weight(dests),
        )
        acc["cw_after"] = self.cw
        if self.mw == 0:
            acc["gave_up"] = "every weight is 0"
            return acc
        n = len(dests)
        cw = self.cw
        last = -1 if self.cl is None else self.cl.pos
        i = last
        stop = -1
        last_pass = restarted = False
        add_step(acc, {"kind": "pass", "cw": cw})
        while True:
            i += 1
            while i < n:
                dest = dests[i]
                if is_overloaded(dest):
                    skip(acc, dest, "overloaded (above its upper threshold)")
                elif dest.weight >= cw:
                    pick(acc, dest, f"weight {dest.weight} >= current weight {cw}")
                    acc["chosen"] = dest.endpoint()
                    acc["cw_after"] = cw
                    return acc
                else:
                    skip(acc, dest, f"weight {dest.weight} < current weight {cw}")
                if i == stop:
                    acc["gave_up"] = "the last pass came back to the starting server"
                    acc["cw_after"] = cw
                    return acc
                i += 1
            i = -1
            cw -= self.di
            if cw <= 0:
                cw = self.mw
                if last_pass or last < 0:
                    acc["gave_up"] = "a whole round found no server"
                    acc["cw_after"] = cw
                    return acc
                restarted = True
            add_step(acc, {"kind": "pass", "cw": cw})
            last_pass = cw <= self.di
            if last_pass and restarted and last >= 0:
                stop = last


SCHEDULER = WeightedRoundRobin
