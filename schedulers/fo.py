"""fo: weighted failover (``ip_vs_fo.c``).

Rule: among real servers that are not OVERLOADed and have weight > 0, pick
the highest weight.  Connection counts play no part: all new connections go
to one server until its weight is lowered, it is removed or it becomes
OVERLOADed (upper threshold ``-x``).

Tie-break: the kernel replaces its candidate only on a strictly higher
weight, so among equal top weights the earlier server in list order (the
newer one) wins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lvs.sched import is_overloaded

from .account import Account, compare, new_account, skip, start, unusable_reason
from .keyindex import Key, KeyIndexScheduler

if TYPE_CHECKING:
    from lvs.model import Dest, Flow


def fo_pick(dests: list[Dest]) -> Dest | None:
    """The kernel's fo walk over ``dests`` (kernel order)."""
    best = None
    hw = 0
    for dest in dests:
        if not is_overloaded(dest) and dest.weight > hw:
            best = dest
            hw = dest.weight
    return best


class WeightedFailover(KeyIndexScheduler):
    """Weighted failover; key = (-weight, position)."""

    name = "fo"
    watches_counts = False

    def _walk(self) -> Dest | None:
        return fo_pick(self.svc.destinations)

    def _key(self, dest: Dest) -> Key | None:
        if dest.weight <= 0 or is_overloaded(dest):
            return None
        return (-dest.weight, dest.pos)

    def account(self, flow: Flow, now: float) -> Account:
        """:func:`fo_pick` as data: the challenger wins on ``weight_d > weight_best``."""
        acc = new_account(self)
        best = None
        hw = 0
        for dest in self.svc.destinations:
            reason = unusable_reason(dest)
            if reason:
                skip(acc, dest, reason)
                continue
            if best is None:
                start(acc, dest, "first server that is not overloaded and has weight > 0")
            else:
                compare(acc, best, dest, [dest.weight], [hw], dest.weight > hw)
            if best is None or dest.weight > hw:
                best = dest
                hw = dest.weight
        acc["chosen"] = None if best is None else best.endpoint()
        return acc


SCHEDULER = WeightedFailover
