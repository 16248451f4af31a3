"""The one narrow interface every scheduler implements (``struct ip_vs_scheduler``).

The kernel registers each ``ip_vs_<name>.c`` with a set of hooks; pylvs does
the same with a class per module.  The table calls:

* ``Scheduler(svc, ctx)`` when a service gets the scheduler (``init_service``),
  with ``svc.destinations`` already holding its real servers in kernel order;
* ``add_dest(dest)`` after a real server was linked at the head of the list;
* ``del_dest(dest, index)`` after it was unlinked (``index`` is where it was);
* ``upd_dest(dest)`` after a real server was edited (weight, thresholds...);
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
from typing import TYPE_CHECKING, ClassVar

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
    lblc_expiration: float = 24 * 60 * 60
    lblcr_expiration: float = 24 * 60 * 60


class Scheduler:
    """Base class: a scheduler bound to one service."""

    name: ClassVar[str] = ""

    def __init__(self, svc: Service, ctx: SchedContext) -> None:
        self.svc = svc
        self.ctx = ctx

    def add_dest(self, dest: Dest) -> None:  # noqa: B027 - optional hook
        """A real server was linked at the head of the list."""

    def del_dest(self, dest: Dest, index: int) -> None:  # noqa: B027
        """A real server was unlinked from position ``index``."""

    def upd_dest(self, dest: Dest) -> None:  # noqa: B027
        """A real server's weight, thresholds or flags were edited."""

    def schedule(self, flow: Flow, now: float) -> Dest | None:
        raise NotImplementedError

    def done(self) -> None:  # noqa: B027
        """The service drops this scheduler."""

    def tick(self, now: float) -> None:  # noqa: B027
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
