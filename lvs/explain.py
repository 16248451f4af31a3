"""Why a flow went where it went: a plain-words account of one decision, for
``lvsadm simulate --explain`` and for teaching.

The account is taken just before the decision: the service's real servers in
the kernel's list order (newest first, which is what tie-breaks follow) with
the numbers the scheduler compares, whether a persistence template already
pins the client, and the scheduler's own rule (the first paragraph of its
module docstring).
"""

from __future__ import annotations

import sys
from typing import Any

from .constants import DEST_F_OVERLOAD, SVC_F_PERSISTENT
from .core import Director
from .model import Flow, Service


def scheduler_rule(svc: Service) -> str:
    """The first paragraph of the scheduler module's docstring."""
    sched = svc.scheduler
    if sched is None:
        return "no scheduler"
    doc = (sys.modules[type(sched).__module__].__doc__ or type(sched).__doc__ or "").strip()
    return " ".join(doc.split("\n\n", 1)[0].split())


def before_decision(director: Director, flow: Flow) -> dict[str, Any] | None:
    """What the scheduler is about to look at for ``flow`` (None: not a new flow
    of any service)."""
    ipvs = director.ipvs
    svc = ipvs.find_service(flow.af, flow.protocol, flow.vaddr, flow.vport, flow.fwmark)
    if svc is None:
        return None
    existing = director.conns.lookup_in(
        flow.protocol, flow.af, flow.caddr, flow.cport, flow.vaddr, flow.vport
    )
    account: dict[str, Any] = {
        "service": svc.describe(),
        "scheduler": svc.sched_name,
        "rule": scheduler_rule(svc),
        "servers": [
            {
                "server": d.endpoint(),
                "weight": d.weight,
                "active": d.activeconns,
                "inactive": d.inactconns,
                "overloaded": bool(d.flags & DEST_F_OVERLOAD),
            }
            for d in svc.destinations
        ],
    }
    if existing is not None:
        account["existing_entry"] = f"{existing.real()} ({existing.state_name()})"
    if svc.flags & SVC_F_PERSISTENT:
        protocol, snet, vaddr, vport = director.template_key(svc, flow)
        ct = director.conns.lookup_template(protocol, flow.af, snet, vaddr, vport)
        if ct is not None:
            account["template"] = f"persistence template pins this client to {ct.real()}"
    return account


def summary(account: dict[str, Any] | None, chosen: str | None) -> str:
    """One line: the choice and the numbers behind it."""
    if account is None:
        return "no virtual service for this flow"
    if "existing_entry" in account:
        return f"existing connection entry to {account['existing_entry']}"
    if "template" in account:
        return account["template"]
    servers = ", ".join(
        f"{s['server']} w={s['weight']} a={s['active']} i={s['inactive']}"
        + (" OVERLOAD" if s["overloaded"] else "")
        for s in account["servers"]
    )
    verdict = f"picked {chosen}" if chosen else "no server available"
    return f"{account['scheduler']}: {verdict}; list order (newest first): {servers}"


def render_lines(event: dict[str, Any]) -> list[str]:
    """The explanation of one flow line, as text lines for ``--report``."""
    text = event.get("explain")
    return [text] if text else []
