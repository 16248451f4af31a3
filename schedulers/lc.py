"""lc: least-connection scheduling (``ip_vs_lc.c``).

Rule: skip real servers that are OVERLOADed or have weight 0; among the rest
pick the one with the smallest connection overhead
(:func:`~lvs.sched.conn_overhead`: ``activeconns·256 + totalconns`` on
recent kernels, ``activeconns·256 + inactconns`` on classic ones).  Weights
play no other part.

Tie-break: the kernel replaces its candidate only on a strictly smaller
overhead, so the first minimum in list order wins, i.e. the most recently
added of the tied servers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lvs.sched import conn_overhead, is_overloaded

from .account import Account, compare, new_account, overhead_form, skip, start, unusable_reason
from .keyindex import Key, KeyIndexScheduler

if TYPE_CHECKING:
    from lvs.model import Dest, Flow


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

    def account(self, flow: Flow, now: float) -> Account:
        """:func:`lc_pick` as data: the challenger wins when ``overhead_cand > overhead_d``."""
        classic = self.ctx.classic
        acc = new_account(self, overhead_form=overhead_form(classic))
        least = None
        loh = 0
        for dest in self.svc.destinations:
            reason = unusable_reason(dest)
            if reason:
                skip(acc, dest, reason)
                continue
            doh = conn_overhead(dest, classic)
            if least is None:
                start(acc, dest, "first server that is not overloaded and has weight > 0")
            else:
                compare(acc, least, dest, [loh], [doh], loh > doh)
            if least is None or doh < loh:
                least = dest
                loh = doh
        acc["chosen"] = None if least is None else least.endpoint()
        return acc


SCHEDULER = LeastConnection
