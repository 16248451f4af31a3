"""wlc: weighted least-connection scheduling (``ip_vs_wlc.c``), the default.

Rule: the load of a real server is its connection overhead
(:func:`~lvs.sched.conn_overhead`) divided by its weight.  The kernel
takes the first server that is not OVERLOADed and has weight > 0 as the
candidate, then looks at every later server that is not OVERLOADed and
replaces the candidate when ``overhead_candidate · weight_d >
overhead_d · weight_candidate`` (64-bit cross-multiplication, no rounding).
A weight-0 server makes the left side 0 and so never wins.

Tie-break: strict ``>``, so among equal loads the earlier server in list
order (the newer one) wins.

The index keys are ``(overhead / weight, position)``; they order exactly like
the cross-multiplication while ``max weight · max overhead < 2**51``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lvs.sched import conn_overhead, is_overloaded

from .account import Account, least_walk, new_account, overhead_form
from .keyindex import RatioKeyScheduler

if TYPE_CHECKING:
    from lvs.model import Dest, Flow


def wlc_pick(dests: list[Dest], classic: bool) -> Dest | None:
    """The kernel's wlc walk over ``dests`` (kernel order); lblc/lblcr use it too."""
    least = None
    loh = 0
    for dest in dests:
        if is_overloaded(dest):
            continue
        if least is None:
            if dest.weight > 0:
                least = dest
                loh = conn_overhead(dest, classic)
            continue
        doh = conn_overhead(dest, classic)
        if loh * dest.weight > doh * least.weight:
            least = dest
            loh = doh
    return least


class WeightedLeastConnection(RatioKeyScheduler):
    """Weighted least connections; key = (overhead / weight, position)."""

    name = "wlc"

    def _walk(self) -> Dest | None:
        return wlc_pick(self.svc.destinations, self.ctx.classic)

    def _load(self, dest: Dest) -> int:
        return conn_overhead(dest, self.ctx.classic)

    def account(self, flow: Flow, now: float) -> Account:
        """:func:`wlc_pick` as data: ``overhead_cand * weight_d > overhead_d * weight_cand``."""
        classic = self.ctx.classic
        acc = new_account(self, overhead_form=overhead_form(classic))
        least = least_walk(acc, self.svc.destinations, lambda d: conn_overhead(d, classic))
        acc["chosen"] = None if least is None else least.endpoint()
        return acc


SCHEDULER = WeightedLeastConnection
