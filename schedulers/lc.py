"""lc: least-connection scheduling (``ip_vs_lc.c``).

Rule: skip real servers that are OVERLOADed or have weight 0; among the rest
pick the one with the smallest connection overhead
(:func:`~schedulers.base.conn_overhead`: ``activeconns·256 + totalconns`` on
recent kernels, ``activeconns·256 + inactconns`` on classic ones).  Weights
play no other part.

Tie-break: the kernel replaces its candidate only on a strictly smaller
overhead, so the first minimum in list order wins, i.e. the most recently
added of the tied servers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lvs.sched import conn_overhead, is_overloaded

from .keyindex import Key, KeyIndexScheduler

if TYPE_CHECKING:
    from lvs.model import Dest


def lc_pick(dests: list[Dest], classic: bool) -> Dest | None:
    """The kernel's lc walk over ``dests`` (kernel order)."""
    least = None
    loh = 0
    for dest in dests:
        if is_overloaded(dest) or dest.weight == 0:
            continue
        doh = conn_overhead(dest, classic)
        if least is None or doh < loh:
            least = dest
            loh = doh
    return least


class LeastConnection(KeyIndexScheduler):
    """Least connections; key = (overhead, position)."""

    name = "lc"

    def _walk(self) -> Dest | None:
        return lc_pick(self.svc.destinations, self.ctx.classic)

    def _key(self, dest: Dest) -> Key | None:
        if is_overloaded(dest) or dest.weight == 0:
            return None
        return (conn_overhead(dest, self.ctx.classic), dest.pos)


SCHEDULER = LeastConnection
