"""rr: round-robin scheduling (``ip_vs_rr.c``).

Rule: the scheduler keeps a cursor, a position in the real-server list that
starts at the list head.  A decision looks at the servers after the cursor
to the end of the list, then (unless the cursor is the head) from the start
of the list up to and including the cursor, and takes the first one that is
not OVERLOADed and has weight > 0; the cursor moves to it.  If none
qualifies the cursor stays put and there is no destination.  Weights other
than "zero or not" are ignored.

Because new servers are linked at the head, the first decision of a fresh
service goes to the newest server, and a server added later is reached when
the cursor wraps.

Hooks: adding a server needs nothing.  Deleting the server under the cursor
moves the cursor to that server's predecessor (or the head), so the next
pick is its old successor.  Edits need nothing in the kernel.

pylvs keeps the positions of the eligible servers in a sorted list, so a
decision is a binary search instead of a walk past ineligible servers.
:meth:`RoundRobin.schedule_walk` is the kernel's walk, kept for tests.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from typing import TYPE_CHECKING

from lvs.constants import DEST_F_OVERLOAD
from lvs.model import Scheduler
from lvs.sched import is_overloaded

from .account import Account, new_account, pick, skip, unusable_reason

if TYPE_CHECKING:
    from lvs.model import Dest, Flow, SchedContext, Service


def _eligible(dest: Dest) -> bool:
    return dest.weight > 0 and not is_overloaded(dest)


class RoundRobin(Scheduler):
    """Round robin over eligible servers in list order."""

    name = "rr"
    watches_counts = False

    def __init__(self, svc: Service, ctx: SchedContext) -> None:
        super().__init__(svc, ctx)
        #: the server of the last decision, or None for the list head
        self.cursor: Dest | None = None
        self._dirty = True
        self._flags: list[bool] = []
        self._order: list[int] = []

    # -- hooks --------------------------------------------------------------
    def add_dest(self, dest: Dest) -> None:
        self._dirty = True

    def del_dest(self, dest: Dest, index: int) -> None:
        if self.cursor is dest:
            self.cursor = self.svc.destinations[index - 1] if index > 0 else None
        self._dirty = True

    def upd_dest(self, dest: Dest) -> None:
        self._refresh(dest)

    def counts_changed(self, dest: Dest) -> None:
        self._refresh(dest)

    # -- index of eligible positions ------------------------------------------
    def _rebuild(self) -> None:
        dests = self.svc.destinations
        self._flags = [_eligible(d) for d in dests]
        self._order = [i for i, ok in enumerate(self._flags) if ok]
        self._dirty = False

    def _refresh(self, dest: Dest) -> None:
        if self._dirty:
            return
        pos = dest.pos
        flags = self._flags
        ok = dest.weight > 0 and not dest.flags & DEST_F_OVERLOAD
        if 0 <= pos < len(flags) and ok != flags[pos] and self.svc.destinations[pos] is dest:
            flags[pos] = ok
            if ok:
                insort(self._order, pos)
            else:
                del self._order[bisect_left(self._order, pos)]

    # -- decisions ------------------------------------------------------------
    def schedule(self, flow: Flow, now: float) -> Dest | None:
        if self._dirty:
            self._rebuild()
        order = self._order
        if not order:
            return None
        cursor = self.cursor
        if cursor is None:
            pos = order[0]
        else:
            i = bisect_right(order, cursor.pos)
            # past the end: wrap to the first eligible, which is <= cursor
            pos = order[i] if i < len(order) else order[0]
        dest = self.svc.destinations[pos]
        self.cursor = dest
        return dest

    def schedule_walk(self, flow: Flow | None = None, now: float = 0.0) -> Dest | None:
        """The kernel's walk, step by step (reference for the index)."""
        dests = self.svc.destinations
        start = -1 if self.cursor is None else self.cursor.pos
        passes = (range(start + 1, len(dests)),)
        if start >= 0:
            passes = (range(start + 1, len(dests)), range(0, start + 1))
        for span in passes:
            for i in span:
                if _eligible(dests[i]):
                    self.cursor = dests[i]
                    return dests[i]
        return None

    def explain(self) -> str:
        where = "head" if self.cursor is None else self.cursor.endpoint()
        return f"rr: cursor at {where}"

    def account(self, flow: Flow, now: float) -> Account:
        """The walk from the cursor, as data (see :mod:`schedulers.account`)."""
        dests = self.svc.destinations
        cursor = self.cursor
        acc = new_account(self, cursor=None if cursor is None else cursor.endpoint())
        first = 0 if cursor is None else cursor.pos + 1
        order = list(range(first, len(dests))) + (list(range(0, first)) if cursor is not None else [])
        for i in order:
            dest = dests[i]
            reason = unusable_reason(dest)
            if reason:
                skip(acc, dest, reason)
                continue
            pick(acc, dest, "next server after the cursor that is not overloaded and has weight > 0")
            acc["chosen"] = dest.endpoint()
            break
        return acc


SCHEDULER = RoundRobin
