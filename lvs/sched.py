"""The scheduler registry (ip_vs_sched.c) and the loads schedulers compare
(ip_vs.h's ``ip_vs_dest_conn_overhead``).

The kernel finds ``ip_vs_<name>.c`` by name, loading the module on first use
(``request_module``); pylvs imports ``schedulers.<name>`` on first use and
takes its ``SCHEDULER`` class, a :class:`lvs.model.Scheduler`.  The scheduler
modules import the core, never the reverse.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .constants import DEST_F_OVERLOAD

if TYPE_CHECKING:
    from .model import Dest, Scheduler

#: every scheduler the kernel ships, in ipvsadm's help order
SCHEDULER_NAMES = (
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos",
)


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


_registered: dict[str, type[Scheduler]] = {}


def get_scheduler(name: str) -> type[Scheduler] | None:
    """``ip_vs_scheduler_get``: the scheduler class called ``name``, loading
    ``schedulers.<name>`` on first use; None for a name the kernel does not
    know (its ENOENT)."""
    cls = _registered.get(name)
    if cls is not None:
        return cls
    if name not in SCHEDULER_NAMES:
        return None
    cls = importlib.import_module(f"schedulers.{name}").SCHEDULER
    _registered[name] = cls
    return cls
