"""An incremental index for the schedulers that pick "the best real server,
earlier in the list wins": lc, wlc, sed, nq, fo and ovf.

The kernel walks ``svc->destinations`` on every decision.  That is cheap in C
and costs 30-50 µs in Python at 512 real servers, so pylvs keeps, per
service, a min-heap of one key per eligible real server:

    (load key ..., list position)

The load key is chosen so that ordering by it reproduces the kernel's walk:
the kernel keeps the first server it sees and only replaces it by a strictly
better one, so among equal loads the earlier list position (the newer
server) wins, and the position is the last item of the key.

Keys change when a server's counters, weight or OVERLOAD flag change.  The
heap is *lazy*: a changed server gets a fresh key pushed, and ``_live[pos]``
says which key object is current; stale keys are dropped when they reach
the top.  Adding or removing a server shifts list positions, so it only marks
the index dirty; the next decision rebuilds it (O(n), like the kernel's own
O(n) walk, and rare).

Where a key has to be a ratio (wlc, sed, nq divide the load by the weight;
the kernel compares by cross-multiplication), the key holds the float
``load / weight``.  Division is correctly rounded, so equal ratios give equal
floats, and distinct ratios ``a/b < c/d`` give ordered distinct floats as
long as ``b·c < 2**51``; each scheduler states its bound in ``_exact()`` and
falls back to the kernel walk when the bound does not hold (the bound is
checked against high-water marks of weights and loads, refreshed when it
fails).

Contract with the connection table: call ``svc.scheduler.counts_changed(dest)``
after changing ``dest.activeconns``/``dest.inactconns`` or its OVERLOAD flag;
the control plane calls ``upd_dest`` after an edit, ``add_dest``/``del_dest``
after linking/unlinking.  A call for a dest that is not in the list (already
deleted, in the trash) is ignored.

Set ``schedulers.keyindex.CHECK = True`` to have every decision also computed
by the kernel walk and compared (slow; for integration tests).
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from typing import TYPE_CHECKING, ClassVar

from lvs.model import Scheduler
from lvs.sched import is_overloaded

if TYPE_CHECKING:
    from lvs.model import Dest, Flow, SchedContext, Service

#: compare every indexed decision against the kernel walk (tests set it)
CHECK = False

Key = tuple

#: float ratio keys order exactly like the kernel's cross-multiplication
#: while (largest weight) x (largest load) stays below this
FLOAT_EXACT = 1 << 51


class IndexMismatch(AssertionError):
    """The index and the kernel walk disagreed (only with CHECK set)."""


class KeyIndexScheduler(Scheduler):
    """Base class: a kernel walk (``_walk``) plus a lazy min-heap of keys.

    Subclasses define ``_walk()`` (the kernel's rule, literally), ``_key(dest)``
    (the heap key, or None when the dest may not be chosen) and optionally
    ``_exact()`` (whether the keys order exactly like the kernel's integer
    comparisons for the current high-water marks).
    """

    #: below this many real servers the plain walk is as fast as the index,
    #: so no index is kept (tests set the instance's ``index_min`` to 0)
    index_min_dests: ClassVar[int] = 6

    def __init__(self, svc: Service, ctx: SchedContext) -> None:
        super().__init__(svc, ctx)
        self.index_min = self.index_min_dests
        self._dirty = True
        self._indexed = False
        self._heap: list[Key] = []
        self._live: list[Key | None] = []
        #: high-water marks (largest weight, largest load seen since the last
        #: measurement), for ``_exact``
        self.hw_weight = 0
        self.hw_load = 0

    # -- what subclasses define ------------------------------------------
    def _walk(self) -> Dest | None:
        raise NotImplementedError

    def _key(self, dest: Dest) -> Key | None:
        raise NotImplementedError

    def _exact(self) -> bool:
        return True

    # -- hooks --------------------------------------------------------------
    def add_dest(self, dest: Dest) -> None:
        self._dirty = True

    def del_dest(self, dest: Dest, index: int) -> None:
        self._dirty = True

    def upd_dest(self, dest: Dest) -> None:
        self._refresh(dest)

    def counts_changed(self, dest: Dest) -> None:
        self._refresh(dest)

    def _refresh(self, dest: Dest) -> None:
        if self._dirty or not self._indexed:
            return
        pos = dest.pos
        live = self._live
        if pos < 0 or pos >= len(live) or self.svc.destinations[pos] is not dest:
            return
        key = self._key(dest)
        if key != live[pos]:
            live[pos] = key
            if key is not None:
                heap = self._heap
                heappush(heap, key)
                if len(heap) > 4 * len(live) + 64:
                    self._compact()

    # -- the index ----------------------------------------------------------
    def _rebuild(self) -> None:
        dests = self.svc.destinations
        self._dirty = False
        self._indexed = len(dests) >= self.index_min
        if not self._indexed:
            self._heap = []
            self._live = []
            return
        self.hw_weight = 0
        self.hw_load = 0
        self._live = [self._key(d) for d in dests]
        self._compact()

    def _compact(self) -> None:
        heap = [k for k in self._live if k is not None]
        heapify(heap)
        self._heap = heap

    def _measure(self) -> None:
        """Reset the high-water marks to the current maxima (keys unchanged)."""
        self.hw_weight = 0
        self.hw_load = 0
        for d in self.svc.destinations:
            self._key(d)

    def schedule(self, flow: Flow, now: float) -> Dest | None:
        if self._dirty:
            self._rebuild()
        if not self._indexed:
            return self._walk()
        if not self._exact():
            self._measure()
            if not self._exact():
                return self._walk()
        heap = self._heap
        live = self._live
        while heap:
            key = heap[0]
            if live[key[-1]] is key:
                dest = self.svc.destinations[key[-1]]
                if CHECK:
                    self._check(dest)
                return dest
            heappop(heap)
        if CHECK:
            self._check(None)
        return None

    def _check(self, dest: Dest | None) -> None:
        want = self._walk()
        if want is not dest:
            raise IndexMismatch(f"{self.name}: index chose {dest!r}, kernel walk {want!r}")

    def explain(self) -> str:
        return f"{self.name}: {'indexed' if self._indexed else 'walk'} over {self.svc.num_dests} dests"


class RatioKeyScheduler(KeyIndexScheduler):
    """Keys ordered by load / weight (wlc, sed, nq): a float ratio, trusted
    while the largest weight times the largest load stays below 2**51 so
    that different integer cross-products never give equal floats; beyond
    that the kernel walk decides."""

    def _load(self, dest: Dest) -> int:
        raise NotImplementedError

    def _note(self, weight: int, load: int) -> None:
        """Keep the high-water marks ``_exact`` needs."""
        if weight > self.hw_weight:
            self.hw_weight = weight
        if load > self.hw_load:
            self.hw_load = load

    def _key(self, dest: Dest) -> Key | None:
        weight = dest.weight
        load = self._load(dest)
        self._note(weight, load)
        if weight <= 0 or is_overloaded(dest):
            return None
        return (load / weight, dest.pos)

    def _exact(self) -> bool:
        return self.hw_weight * self.hw_load < FLOAT_EXACT
