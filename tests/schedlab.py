"""Building a service and its real servers by hand for the scheduler tests
(in kernel order: a new real server is linked at the head of the list)."""

from __future__ import annotations

from lvs.constants import AF_INET, IPPROTO_TCP
from lvs.model import Dest, SchedContext, Service, ServiceKey
from lvs.sched import get_scheduler


def make_service(sched: str, ctx: SchedContext | None = None, index_min: int | None = None) -> Service:
    svc = Service(ServiceKey(AF_INET, IPPROTO_TCP, 0x0A000001, 80))
    attach(svc, sched, ctx, index_min)
    return svc


def attach(svc: Service, sched: str, ctx: SchedContext | None = None, index_min: int | None = None) -> None:
    cls = get_scheduler(sched)
    assert cls is not None
    if svc.scheduler is not None:
        svc.scheduler.done()
    svc.sched_name = sched
    svc.scheduler = cls(svc, ctx or SchedContext())
    if index_min is not None:
        svc.scheduler.index_min = index_min  # type: ignore[attr-defined]


def add(svc: Service, host: int, weight: int, port: int = 80) -> Dest:
    dest = Dest(AF_INET, 0x0A010000 + host, port)
    dest.svc = svc
    dest.weight = weight
    if weight:
        dest.last_weight = weight
    svc.link_dest(dest)
    svc.scheduler.add_dest(dest)
    return dest
