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

from .account import Account, compare, new_account, skip, start, unusable_reason
from .keyindex import Key, KeyIndexScheduler

if TYPE_CHECKING:
    from lvs.model import Dest, Flow


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

    def account(self, flow: Flow, now: float) -> Account:
        """:func:`ovf_pick` as data: skip full servers, the challenger wins on ``weight_d > weight_best``."""
        acc = new_account(self)
        best = None
        hw = 0
        for dest in self.svc.destinations:
            reason = unusable_reason(dest)
            if reason is None and dest.activeconns > dest.weight:
                reason = f"full: {dest.activeconns} active > weight {dest.weight}"
            if reason:
                skip(acc, dest, reason)
                continue
            if best is None:
                start(acc, dest, "first server with room (active <= weight)")
            else:
                compare(acc, best, dest, [dest.weight], [hw], dest.weight > hw)
            if best is None or dest.weight > hw:
                best = dest
                hw = dest.weight
        acc["chosen"] = None if best is None else best.endpoint()
        return acc


SCHEDULER = Overflow
