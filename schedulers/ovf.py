"""ovf: overflow-connection scheduling (``ip_vs_ovf.c``).

Rule: skip real servers that are OVERLOADed, have weight 0, or have more
active connections than their weight (``activeconns > weight``); among the
rest pick the highest weight.  So the top-weight server takes connections
until its active count exceeds its weight, then the next one overflows.
Inactive connections are not counted, so over UDP ovf behaves like fo.

Tie-break: strict ``>`` on the weight, so among equal weights the earlier
server in list order (the newer one) wins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lvs.sched import is_overloaded

from .keyindex import Key, KeyIndexScheduler

if TYPE_CHECKING:
    from lvs.model import Dest


def ovf_pick(dests: list[Dest]) -> Dest | None:
    """The kernel's ovf walk over ``dests`` (kernel order)."""
    best = None
    hw = 0
    for dest in dests:
        weight = dest.weight
        if is_overloaded(dest) or dest.activeconns > weight or weight == 0:
            continue
        if best is None or weight > hw:
            best = dest
            hw = weight
    return best


class Overflow(KeyIndexScheduler):
    """Overflow; key = (-weight, position) for servers with room."""

    name = "ovf"

    def _walk(self) -> Dest | None:
        return ovf_pick(self.svc.destinations)

    def _key(self, dest: Dest) -> Key | None:
        weight = dest.weight
        if weight <= 0 or is_overloaded(dest) or dest.activeconns > weight:
            return None
        return (-weight, dest.pos)


SCHEDULER = Overflow
