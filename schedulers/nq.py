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

from .account import Account, add_step, least_walk, new_account, pick, skip, unusable_reason
from .keyindex import Key, RatioKeyScheduler

if TYPE_CHECKING:
    from lvs.model import Dest, Flow


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

    def account(self, flow: Flow, now: float) -> Account:
        """:func:`nq_pick` as data: the first idle server, else sed's comparison."""
        acc = new_account(self, load_form="active + 1")
        dests = self.svc.destinations
        for dest in dests:
            if unusable_reason(dest) is None and dest.activeconns == 0:
                for before in dests[: dest.pos]:
                    skip(acc, before, unusable_reason(before) or f"busy ({before.activeconns} active)")
                pick(acc, dest, "first server with no active connection (never queue)")
                acc["chosen"] = dest.endpoint()
                return acc
        add_step(acc, {"kind": "note", "text": "every usable server is busy: shortest expected delay"})
        least = least_walk(acc, dests, lambda d: d.activeconns + 1, skip_zero=True)
        acc["chosen"] = None if least is None else least.endpoint()
        return acc


SCHEDULER = NeverQueue
