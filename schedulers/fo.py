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

from .keyindex import Key, KeyIndexScheduler

if TYPE_CHECKING:
    from lvs.model import Dest


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


SCHEDULER = WeightedFailover
