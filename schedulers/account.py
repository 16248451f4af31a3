"""Decision accounts: what a scheduler computes for one flow, as data.

Every scheduler has ``account(flow, now) -> dict``: the decision
``schedule(flow, now)`` would take now, with the numbers that decide it, and
without changing any state (cursors, caches and the random source are left
as they were).  ``lvs.explain`` renders an account as plain text; the tests
recompute its numbers from the server rows it carries.

An account holds ``scheduler``, ``servers`` (one row per real server in the
kernel's list order, newest first: weight, active, inactive, overloaded,
available, overhead), ``steps`` (what the walk did, in order) and ``chosen``
(the server's ``addr:port`` or None), plus the scheduler's own fields.  A
step is one of:

* ``{"kind": "skip", "server", "reason"}``: not considered, and why;
* ``{"kind": "start", "server", "why"}``: the first candidate;
* ``{"kind": "compare", "candidate", "challenger", "left", "right", "op",
  "replaced"}``: the kernel's test ``prod(left) op prod(right)``; true means
  the challenger replaces the candidate;
* ``{"kind": "pick", "server", "why"}``: taken at once;
* ``{"kind": "pass", "cw"}``: wrr starts a pass at current weight ``cw``;
* ``{"kind": "note", "text"}``: a new phase of the walk (nq, lblcr);
* ``{"kind": "overload", "check"}``: lblcr's locality overload test on
  the set's least loaded member (:func:`locality_overload`);
* ``{"kind": "shrink", "unchanged_for", "expiration", "removed"}``: lblcr
  drops the most loaded member of a set stable for longer than its expiration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lvs.constants import DEST_F_AVAILABLE, DEST_F_OVERLOAD
from lvs.sched import conn_overhead

if TYPE_CHECKING:
    from lvs.model import Dest, Scheduler

#: an account keeps at most this many steps (wrr over many servers and
#: passes can try thousands); ``truncated`` says how many were left out
MAX_STEPS = 400

Account = dict[str, Any]


def overhead_form(classic: bool) -> str:
    """The overhead formula in words (``ip_vs_dest_conn_overhead``)."""
    if classic:
        return "active*256 + inactive"
    return "active*256 + active + inactive (active*256 + total)"


def server_row(dest: Dest, classic: bool) -> dict[str, Any]:
    return {
        "server": dest.endpoint(),
        "weight": dest.weight,
        "active": dest.activeconns,
        "inactive": dest.inactconns,
        "overhead": conn_overhead(dest, classic),
        "overloaded": bool(dest.flags & DEST_F_OVERLOAD),
        "available": bool(dest.flags & DEST_F_AVAILABLE),
    }


def new_account(sched: Scheduler, **fields: Any) -> Account:
    classic = sched.ctx.classic
    acc: Account = {
        "scheduler": sched.name,
        "classic": classic,
        "servers": [server_row(d, classic) for d in sched.svc.destinations],
        "steps": [],
        "chosen": None,
    }
    acc.update(fields)
    return acc


def add_step(acc: Account, step: dict[str, Any]) -> None:
    steps = acc["steps"]
    if len(steps) < MAX_STEPS:
        steps.append(step)
    else:
        acc["truncated"] = acc.get("truncated", 0) + 1


def skip(acc: Account, dest: Dest, reason: str) -> None:
    add_step(acc, {"kind": "skip", "server": dest.endpoint(), "reason": reason})


def start(acc: Account, dest: Dest, why: str) -> None:
    add_step(acc, {"kind": "start", "server": dest.endpoint(), "why": why})


def pick(acc: Account, dest: Dest, why: str) -> None:
    add_step(acc, {"kind": "pick", "server": dest.endpoint(), "why": why})


def compare(
    acc: Account, candidate: Dest, challenger: Dest, left: list[int], right: list[int], replaced: bool
) -> None:
    """The kernel's ``prod(left) > prod(right)``: the challenger replaces the candidate when true."""
    add_step(
        acc,
        {
            "kind": "compare",
            "candidate": candidate.endpoint(),
            "challenger": challenger.endpoint(),
            "left": left,
            "right": right,
            "op": ">",
            "replaced": replaced,
        },
    )


def unusable_reason(dest: Dest, *, weight_zero: bool = True, available: bool = False) -> str | None:
    """Why a real server may not take the flow: OVERLOAD, weight 0 (when the
    rule looks at it), no longer AVAILABLE (when the rule looks at it)."""
    if available and not dest.flags & DEST_F_AVAILABLE:
        return "unavailable (deleted)"
    if weight_zero and dest.weight <= 0:
        return "weight 0"
    if dest.flags & DEST_F_OVERLOAD:
        return "overloaded (above its upper threshold)"
    return None


def locality_overload(dest: Dest, dests: list[Dest]) -> dict[str, Any]:
    """lblc/lblcr's "overloaded" test with its numbers: more active
    connections than weight, while some server of the service has
    ``active*2 < weight`` (the first such server is named)."""
    out: dict[str, Any] = {
        "server": dest.endpoint(),
        "active": dest.activeconns,
        "weight": dest.weight,
        "overloaded": False,
        "below_half": None,
    }
    if dest.activeconns > dest.weight:
        for d in dests:
            if d.activeconns * 2 < d.weight:
                out["overloaded"] = True
                out["below_half"] = {"server": d.endpoint(), "active": d.activeconns, "weight": d.weight}
                break
    return out


def least_walk(acc: Account, dests: list[Dest], load: Any, *, skip_zero: bool = False) -> Dest | None:
    """The walk of wlc/sed (``skip_zero`` False) and nq's busy part
    (``skip_zero`` True: weight-0 servers are skipped, not compared): the first
    usable server starts, each later one replaces the candidate when
    ``load_cand * weight_d > load_d * weight_cand``."""
    least = None
    loh = 0
    for d in dests:
        if d.flags & DEST_F_OVERLOAD:
            skip(acc, d, "overloaded (above its upper threshold)")
            continue
        if (least is None or skip_zero) and d.weight <= 0:
            skip(acc, d, "weight 0")
            continue
        doh = load(d)
        if least is None:
            least = d
            loh = doh
            start(acc, d, "first server that is not overloaded and has weight > 0")
            continue
        left, right = loh * d.weight, doh * least.weight
        compare(acc, least, d, [loh, d.weight], [doh, least.weight], left > right)
        if left > right:
            least = d
            loh = doh
    return least
