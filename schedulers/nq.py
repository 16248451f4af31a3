"""nq: never-queue scheduling (``ip_vs_nq.c``).

Rule: walk the list skipping OVERLOADed and weight-0 real servers; the first
one with no active connection is returned at once ("an idle server takes the
job").  If every eligible server is busy, pick as sed does: the smallest
``(activeconns + 1) / weight``, compared by cross-multiplication
``(active_cand + 1) · weight_d > (active_d + 1) · weight_cand``.

Tie-break: the first idle server in list order; among busy servers, strict
``>`` so the earlier (newer) server wins.  Over UDP nothing is ever active,
so nq takes the first eligible server in list order every time.

The products are 64-bit in the kernel, so exact here.  The index keys are
``(0, 0.0, pos)`` for idle servers and ``(1, (active + 1) / weight, pos)``
for busy ones; they order exactly like the kernel's comparisons while
``max weight · max (active + 1) < 2**51``, otherwise the walk decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lvs.sched import is_overloaded

from .keyindex import Key, RatioKeyScheduler

if TYPE_CHECKING:
    from lvs.model import Dest


def nq_pick(dests: list[Dest]) -> Dest | None:
    """The kernel's nq walk over ``dests`` (kernel order)."""
    least = None
    loh = 0
    for dest in dests:
        if is_overloaded(dest) or dest.weight == 0:
            continue
        if dest.activeconns == 0:
            return dest
        doh = dest.activeconns + 1
        if least is None or loh * dest.weight > doh * least.weight:
            least = dest
            loh = doh
    return least


class NeverQueue(RatioKeyScheduler):
    """Never queue; idle servers first (earliest), then shortest expected delay."""

    name = "nq"

    def _walk(self) -> Dest | None:
        return nq_pick(self.svc.destinations)

    def _key(self, dest: Dest) -> Key | None:
        weight = dest.weight
        active = dest.activeconns
        self._note(weight, active + 1)
        if weight <= 0 or is_overloaded(dest):
            return None
        if active == 0:
            return (0, 0.0, dest.pos)
        return (1, (active + 1) / weight, dest.pos)


SCHEDULER = NeverQueue
