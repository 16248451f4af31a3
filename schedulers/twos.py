"""twos: power-of-two-choices scheduling (``ip_vs_twos.c``, Linux 6.1+).

Rule: ``total`` is the sum of the weights of the real servers that are not
OVERLOADed and have weight > 0 (none: no destination).  Two numbers are drawn
uniformly from ``0..total`` inclusive, first ``r1`` then ``r2`` (the kernel's
``get_random_u32_below(total + 1)``; pylvs uses ``ctx.rng.randrange``).  Then
the eligible servers are walked in list order, each one's weight is
subtracted from both numbers, and choice 1 (choice 2) is the first server at
which ``r1`` (``r2``) has dropped to 0 or below.  So the first eligible server
is chosen with probability (w + 1) / (total + 1), every other one with
w / (total + 1).  The result is choice 2 if
``weight2 · overhead1 > weight1 · overhead2`` (overhead =
:func:`~lvs.sched.conn_overhead`), else choice 1.

Tie-break: choice 1 (the first draw) wins ties.

Kernel arithmetic kept: the sums, draws and products are C ``int`` (32-bit,
wrapping), so absurd weights wrap the same way here.  When the walk never
reaches a draw (possible only after such wrapping) the kernel keeps the last
eligible server as choice 1 with weight -1 and overhead 0, or has no choice
2; so does this module.

pylvs caches the eligible servers and their running weight sums (rebuilt
after add/del/edit and when a server's OVERLOAD flag flips), so the walk to
``r1``/``r2`` is a binary search; :meth:`PowerOfTwoChoices.schedule_walk` is
the kernel's loop, used when the sum would overflow a C int and as the
reference in tests.  Both consume the same two draws.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate
from typing import TYPE_CHECKING

from lvs.model import Scheduler
from lvs.sched import conn_overhead, is_overloaded

from .account import Account, compare, new_account, overhead_form, skip, start, unusable_reason

if TYPE_CHECKING:
    from lvs.model import Dest, Flow, SchedContext, Service


def s32(x: int) -> int:
    """``x`` as a wrapped signed 32-bit C int."""
    x &= 0xFFFFFFFF
    return x - 0x100000000 if x & 0x80000000 else x


def _eligible(dest: Dest) -> bool:
    return dest.weight > 0 and not is_overloaded(dest)


class PowerOfTwoChoices(Scheduler):
    """Two weighted random candidates, the less loaded (by overhead/weight) wins."""

    name = "twos"

    def _below(self, ceil: int) -> int:
        """``get_random_u32_below(ceil)`` for the u32 value of ``ceil``."""
        ceil &= 0xFFFFFFFF
        return self.ctx.rng.randrange(ceil) if ceil else 0

    def __init__(self, svc: Service, ctx: SchedContext) -> None:
        super().__init__(svc, ctx)
        self._dirty = True
        #: eligible servers in list order, their weights and running sums
        self._eligible: list[Dest] = []
        self._members: set[Dest] = set()
        self._weights: list[int] = []
        self._running: list[int] = []

    # -- hooks: the kernel has none; they keep the cached running sums ------
    def add_dest(self, dest: Dest) -> None:
        self._dirty = True

    def del_dest(self, dest: Dest, index: int) -> None:
        self._dirty = True

    def upd_dest(self, dest: Dest) -> None:
        self._dirty = True

    def counts_changed(self, dest: Dest) -> None:
        if (dest in self._members) != _eligible(dest) and self._listed(dest):
            self._dirty = True

    def _listed(self, dest: Dest) -> bool:
        dests = self.svc.destinations
        return 0 <= dest.pos < len(dests) and dests[dest.pos] is dest

    def _rebuild(self) -> None:
        self._eligible = [d for d in self.svc.destinations if _eligible(d)]
        self._members = set(self._eligible)
        self._weights = [d.weight for d in self._eligible]
        self._running = list(accumulate(self._weights))
        self._dirty = False

    def schedule(self, flow: Flow, now: float) -> Dest | None:
        if self._dirty:
            self._rebuild()
        running = self._running
        if not running:
            return None
        total = running[-1]
        if total >= 0x7FFFFFFF:
            # the kernel's int sum would wrap: take the literal walk
            return self.schedule_walk(flow, now)
        rng = self.ctx.rng
        r1 = rng.randrange(total + 1)
        r2 = rng.randrange(total + 1)
        # choice k = the first server whose running weight sum reaches r_k
        i1 = bisect_left(running, r1)
        i2 = bisect_left(running, r2)
        weights = self._weights
        return self._pick(self._eligible[i1], weights[i1], self._eligible[i2], weights[i2])

    def _pick(self, choice1: Dest, weight1: int, choice2: Dest, weight2: int) -> Dest:
        classic = self.ctx.classic
        overhead1 = s32(conn_overhead(choice1, classic))
        overhead2 = s32(conn_overhead(choice2, classic))
        if s32(weight2 * overhead1) > s32(weight1 * overhead2):
            return choice2
        return choice1

    def account(self, flow: Flow, now: float) -> Account:
        """The two draws, the servers they land on and the comparison, as data;
        the random source is put back as it was, so ``schedule`` draws the same."""
        acc = new_account(self, overhead_form=overhead_form(self.ctx.classic))
        eligible = [d for d in self.svc.destinations if _eligible(d)]
        for d in self.svc.destinations:
            if not _eligible(d):
                skip(acc, d, unusable_reason(d) or "not eligible")
        running = list(accumulate(d.weight for d in eligible))
        acc["running"] = [[d.endpoint(), d.weight, r] for d, r in zip(eligible, running)]
        if not running:
            return acc
        total = running[-1]
        rng = self.ctx.rng
        state = rng.getstate()
        r1 = rng.randrange(total + 1)
        r2 = rng.randrange(total + 1)
        rng.setstate(state)
        i1 = bisect_left(running, r1)
        i2 = bisect_left(running, r2)
        c1, c2 = eligible[i1], eligible[i2]
        classic = self.ctx.classic
        oh1, oh2 = conn_overhead(c1, classic), conn_overhead(c2, classic)
        acc.update(total=total, draws=[r1, r2], choice1=c1.endpoint(), choice2=c2.endpoint())
        left, right = c2.weight * oh1, c1.weight * oh2
        start(acc, c1, f"choice 1, drawn by r1={r1}")
        compare(acc, c1, c2, [oh1, c2.weight], [oh2, c1.weight], left > right)
        acc["chosen"] = (c2 if left > right else c1).endpoint()
        return acc

    def schedule_walk(self, flow: Flow | None = None, now: float = 0.0) -> Dest | None:
        """The kernel's loop with 32-bit int arithmetic (reference, and the path
        taken when the weight sum does not fit a C int)."""
        dests = self.svc.destinations
        total = 0
        choice1 = None
        for dest in dests:
            if not is_overloaded(dest) and dest.weight > 0:
                total = s32(total + dest.weight)
                choice1 = dest
        if choice1 is None:
            return None
        total = s32(total + 1)
        r1 = s32(self._below(total))
        r2 = s32(self._below(total))

        classic = self.ctx.classic
        choice2 = None
        weight1 = weight2 = -1
        overhead1 = overhead2 = 0
        for dest in dests:
            weight = dest.weight
            if is_overloaded(dest) or weight <= 0:
                continue
            r1 = s32(r1 - weight)
            r2 = s32(r2 - weight)
            if r1 <= 0 and weight1 == -1:
                choice1 = dest
                weight1 = weight
                overhead1 = s32(conn_overhead(dest, classic))
            if r2 <= 0 and weight2 == -1:
                choice2 = dest
                weight2 = weight
                overhead2 = s32(conn_overhead(dest, classic))
            if weight1 != -1 and weight2 != -1:
                break
        if choice2 is not None and s32(weight2 * overhead1) > s32(weight1 * overhead2):
            return choice2
        return choice1


SCHEDULER = PowerOfTwoChoices
