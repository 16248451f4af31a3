"""sed: shortest expected delay scheduling (``ip_vs_sed.c``).

Rule: the expected delay of a real server is ``(activeconns + 1) / weight``
(inactive connections are ignored, so over UDP, where nothing ever becomes
active, sed always picks the highest weight).  The kernel takes the first
server that is not OVERLOADed and has weight > 0 as the candidate, then
replaces it by any later non-OVERLOADed server ``d`` with
``(active_cand + 1) · weight_d > (active_d + 1) · weight_cand``.  A weight-0
server never wins.

Tie-break: strict ``>``, so among equal delays the earlier server in list
order (the newer one) wins.

The products are 64-bit in the kernel (``(__s64)`` casts since Linux 3.x;
kernels before that multiplied in unsigned 32 bits), so they are exact here.
The index keys are ``((active + 1) / weight, position)``; they order exactly
like the cross-multiplication while ``max weight · max (active + 1) < 2**51``,
otherwise the walk decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lvs.sched import is_overloaded

from .account import Account, least_walk, new_account
from .keyindex import RatioKeyScheduler

if TYPE_CHECKING:
    from lvs.model import Dest, Flow


def sed_pick(dests: list[Dest]) -> Dest | None:
    """The kernel's sed walk over ``dests`` (kernel order)."""
    least = None
    loh = 0
    for dest in dests:
        if is_overloaded(dest):
            continue
        if least is None:
            if dest.weight > 0:
                least = dest
                loh = dest.activeconns + 1
            continue
        doh = dest.activeconns + 1
        if loh * dest.weight > doh * least.weight:
            least = dest
            loh = doh
    return least


class ShortestExpectedDelay(RatioKeyScheduler):
    """Shortest expected delay; key = ((active + 1) / weight, position)."""

    name = "sed"

    def _walk(self) -> Dest | None:
        return sed_pick(self.svc.destinations)

    def _load(self, dest: Dest) -> int:
        return dest.activeconns + 1

    def account(self, flow: Flow, now: float) -> Account:
        """:func:`sed_pick` as data: ``(active_cand+1) * weight_d > (active_d+1) * weight_cand``."""
        acc = new_account(self, load_form="active + 1")
        least = least_walk(acc, self.svc.destinations, lambda d: d.activeconns + 1)
        acc["chosen"] = None if least is None else least.endpoint()
        return acc


SCHEDULER = ShortestExpectedDelay
