"""The kernel's schedulers, one module each, found by name like ``ip_vs_sched.c``
finds ``ip_vs_<name>.ko``."""

from __future__ import annotations

import importlib

from .base import SchedContext, Scheduler

#: every scheduler the kernel ships, in ipvsadm's help order
SCHEDULER_NAMES = (
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos",
)

_cache: dict[str, type[Scheduler]] = {}


def get_scheduler(name: str) -> type[Scheduler] | None:
    """The scheduler class registered under ``name``, or None (the kernel's ENOENT)."""
    cls = _cache.get(name)
    if cls is not None:
        return cls
    if name not in SCHEDULER_NAMES:
        return None
    module = importlib.import_module(f"schedulers.{name}")
    cls = module.SCHEDULER
    _cache[name] = cls
    return cls


__all__ = ["SCHEDULER_NAMES", "SchedContext", "Scheduler", "get_scheduler"]
