"""The one narrow interface every scheduler implements (``struct ip_vs_scheduler``).

The kernel registers each ``ip_vs_<name>.c`` with a set of hooks; pylvs does
the same with a class per module.  The table calls:

* ``Scheduler(svc, ctx)`` when a service gets the scheduler (``init_service``),
  with ``svc.destinations`` already holding its real servers in kernel order;
* ``add_dest(dest)`` after a real server was linked at the head of the list;
* ``del_dest(dest, index)`` after it was unlinked (``index`` is where it was);
* ``upd_dest(dest)`` after a real server was edited (weight, thresholds...);
* ``counts_changed(dest)`` after the connection table changed a real
  server's counters or its OVERLOAD flag (pylvs only: it keeps the
  incremental indexes of rr/wrr/lc/wlc/sed/nq/fo/ovf/twos exact).  A class
  whose choice ignores the counters sets ``watches_counts = False`` and
  hears only of OVERLOAD flips (two to four calls per connection saved);
* ``schedule(flow, now)`` to pick a real server for a new connection, or None;
* ``done()`` when the service drops the scheduler (``done_service``);
* ``tick(now)`` now and then, for schedulers with timers (lblc, lblcr).

A destination is *eligible* for a new connection when its weight is above 0
and its OVERLOAD flag is clear; the schedulers below spell out their own
variations of that rule where the kernel has them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from lvs.constants import DEST_F_OVERLOAD

if TYPE_CHECKING:
    from lvs.model import Dest, Flow, Service


@dataclass
class SchedContext:
    """What a scheduler may read besides its service: the random source (twos),
    the kernel generation (``classic`` selects pre-2025 behaviour) and the
    sysctls (lblc/lblcr expiration)."""

    rng: random.Random = field(default_factory=lambda: random.Random(0))
    classic: bool = False
    #: the table's sysctls (``lvs.sysctl.Sysctls``); None outside a table
    sysctl: Any = None

    @property
    def lblc_expiration(self) -> float:
        """sysctl net.ipv4.vs.lblc_expiration, seconds (default 24 h)."""
        return float(self.sysctl.lblc_expiration) if self.sysctl is not None else 24 * 60 * 60.0

    @property
    def lblcr_expiration(self) -> float:
        """sysctl net.ipv4.vs.lblcr_expiration, seconds (default 24 h)."""
        return float(self.sysctl.lblcr_expiration) if self.sysctl is not None else 24 * 60 * 60.0


class Scheduler:
    """Base class: a scheduler bound to one service."""

    name: ClassVar[str] = ""
    #: False: the choice reads no connection counter, only OVERLOAD (and
    #: weights), so ``counts_changed`` is called only when OVERLOAD flips
    watches_counts: ClassVar[bool] = True

    def __init__(self, svc: Service, ctx: SchedContext) -> None:
        self.svc = svc
        self.ctx = ctx

    def add_dest(self, dest: Dest) -> None:
        """A real server was linked at the head of the list."""

    def del_dest(self, dest: Dest, index: int) -> None:
        """A real server was unlinked from position ``index``."""

    def upd_dest(self, dest: Dest) -> None:
        """A real server's weight, thresholds or flags were edited."""

    def counts_changed(self, dest: Dest) -> None:
        """``dest``'s connection counters (activeconns, inactconns) or its
        OVERLOAD flag just changed.

        The connection table calls ``svc.scheduler.counts_changed(dest)``
        after every such change (bind, unbind, active/inactive transition,
        threshold flag flip).  Schedulers with an incremental index refresh
        the dest's key here; the kernel has no such hook because it walks
        the list on every decision.
        """

    def schedule(self, flow: Flow, now: float) -> Dest | None:
        raise NotImplementedError

    def done(self) -> None:
        """The service drops this scheduler."""

    def tick(self, now: float) -> None:
        """Periodic work (garbage collection of caches)."""

    def explain(self) -> str:
        """A one-line description of the scheduler's state, for teaching."""
        return self.name


def is_overloaded(dest: Dest) -> bool:
    return bool(dest.flags & DEST_F_OVERLOAD)


def conn_overhead(dest: Dest, classic: bool) -> int:
    """``ip_vs_dest_conn_overhead``: the load lc, wlc, lblc, lblcr and twos compare.

    Recent kernels (6.12.105+/6.1.187+): ``activeconns * 256 + totalconns``,
    i.e. an active connection weighs 257 inactive ones.  Classic kernels:
    ``activeconns * 256 + inactconns``.
    """
    if classic:
        return (dest.activeconns << 8) + dest.inactconns
    return (dest.activeconns << 8) + dest.activeconns + dest.inactconns
