"""Why a flow went where it went, with the arithmetic: ``lvsadm simulate
--explain`` (JSON lines gain ``explain``, text lines, and ``account``, the
data) and ``--report --explain`` (the lines under each flow).

The numbers come from the scheduler itself: just before a decision the
director asks the service's scheduler for its *account* of the flow
(``account(flow, now)``, see :mod:`schedulers.account`), which runs the
kernel's rule on the current state without changing it.  This module adds
what the director decides before any scheduler is asked (an existing entry,
a persistence template, the one-packet flag) and renders the whole as plain
words, ASCII only.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from .addr import format_ip
from .constants import AF_INET, AF_INET6, DEST_F_AVAILABLE, IPPROTO_UDP, SVC_F_ONEPACKET, SVC_F_PERSISTENT
from .core import Director
from .model import Flow, Service

Account = dict[str, Any]

_ROLE = re.compile(r":\w+:`~?([^`]+)`")
_ASCII = str.maketrans({"×": "x", "·": "*", "—": "-", "–": "-", "…": "...", "→": "->", "≥": ">=", "≤": "<="})


def plain(text: str) -> str:
    """reST docstring text as plain words: roles and literals unwrapped, ASCII only."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    text = text.replace("``", "").translate(_ASCII)
    return " ".join(text.split()).encode("ascii", "replace").decode("ascii")


def scheduler_rule(svc: Service) -> str:
    """The first paragraph of the scheduler module's docstring, in plain words."""
    sched = svc.scheduler
    if sched is None:
        return "no scheduler"
    doc = (importlib.import_module(type(sched).__module__).__doc__ or type(sched).__doc__ or "").strip()
    return plain(doc.split("\n\n", 1)[0])


def _mask_text(svc: Service) -> str:
    if svc.key.af == AF_INET6:
        return f"/{svc.netmask}"
    return format_ip(AF_INET, svc.netmask)


def before_decision(director: Director, flow: Flow, now: float = 0.0) -> Account | None:
    """The account of what the director is about to do with ``flow`` (None: no
    virtual service takes it)."""
    ipvs = director.ipvs
    svc = ipvs.find_service(flow.af, flow.protocol, flow.vaddr, flow.vport, flow.fwmark)
    if svc is None:
        return None
    existing = director.conns.lookup_in(
        flow.protocol, flow.af, flow.caddr, flow.cport, flow.vaddr, flow.vport
    )
    if existing is not None:
        return {
            "kind": "existing",
            "service": svc.describe(),
            "server": existing.real(),
            "state": existing.state_name(),
        }
    acc: Account = {"kind": "schedule", "service": svc.describe()}
    if svc.flags & SVC_F_PERSISTENT:
        protocol, snet, vaddr, vport = director.template_key(svc, flow)
        ct = director.conns.lookup_template(protocol, flow.af, snet, vaddr, vport)
        persist = {
            "client_net": format_ip(flow.af, snet),
            "mask": _mask_text(svc),
            "timeout": svc.timeout,
            "template": None,
        }
        acc["persistence"] = persist
        if ct is not None:
            dest = ct.dest
            valid = (
                dest is not None
                and dest.flags & DEST_F_AVAILABLE
                and not (ipvs.sysctl.expire_quiescent_template and dest.weight == 0)
            )
            persist["template"] = ct.real()
            if valid:
                acc["kind"] = "template"
                acc["server"] = ct.real()
                return acc
            persist["invalid"] = True
    if svc.flags & SVC_F_ONEPACKET and flow.protocol == IPPROTO_UDP:
        acc["one_packet"] = True
    sched = svc.scheduler
    if sched is None:
        acc["scheduler"] = None
        return acc
    account = getattr(sched, "account", None)
    if account is None:  # pragma: no cover - every kernel scheduler has one
        acc["scheduler"] = {"scheduler": sched.name, "steps": [], "chosen": None, "servers": []}
    else:
        acc["scheduler"] = account(flow, now)
    return acc


# -- rendering -----------------------------------------------------------------


def _prod(nums: list[int]) -> int:
    out = 1
    for n in nums:
        out *= n
    return out


def _factors(nums: list[int]) -> str:
    return "*".join(str(n) for n in nums)


_TESTS = {
    "lc": "the challenger wins when candidate's overhead > challenger's overhead",
    "wlc": "the challenger wins when candidate's overhead * challenger's weight > "
    "challenger's overhead * candidate's weight (load per weight, cross-multiplied)",
    "lblc": "the challenger wins when candidate's overhead * challenger's weight > "
    "challenger's overhead * candidate's weight",
    "lblcr": "the challenger wins when candidate's overhead * challenger's weight > "
    "challenger's overhead * candidate's weight",
    "sed": "the challenger wins when (candidate's active+1) * challenger's weight > "
    "(challenger's active+1) * candidate's weight (expected delay, cross-multiplied)",
    "nq": "the challenger wins when (candidate's active+1) * challenger's weight > "
    "(challenger's active+1) * candidate's weight",
    "fo": "the challenger wins when its weight > the best weight so far",
    "ovf": "the challenger wins when its weight > the best weight so far",
    "twos": "choice 2 wins when overhead1 * weight2 > overhead2 * weight1, else choice 1",
}


def _server_line(acc: Account) -> str:
    name = acc["scheduler"]
    parts = []
    for s in acc["servers"]:
        text = f"{s['server']} w={s['weight']}"
        if name not in ("rr", "wrr", "fo", "dh", "sh", "mh"):
            text += f" a={s['active']} i={s['inactive']}"
        if name in ("lc", "wlc", "lblc", "lblcr", "twos"):
            text += f" overhead={s['overhead']}"
        if s["overloaded"]:
            text += " OVERLOADED"
        if not s["available"]:
            text += " unavailable"
        parts.append(text)
    return "servers (list order, newest first): " + ("; ".join(parts) or "none")


def _step_lines(acc: Account) -> list[str]:
    out = []
    for st in acc["steps"]:
        kind = st["kind"]
        if kind == "skip":
            out.append(f"skip {st['server']}: {st['reason']}")
        elif kind == "start":
            out.append(f"start with {st['server']}: {st['why']}")
        elif kind == "pick":
            out.append(f"take {st['server']}: {st['why']}")
        elif kind == "note":
            out.append(st["text"] + ":")
        elif kind == "overload":
            out.append(_overload_line(st["check"]))
        elif kind == "shrink":
            out.append(
                f"set unchanged for {st['unchanged_for']:.0f}s > {st['expiration']:.0f}s:"
                f" its most loaded member {st['removed']} leaves the set (after the pick, as in the kernel)"
            )
        elif kind == "pass":
            out.append(f"pass at current weight cw={st['cw']}:")
        elif kind == "compare":
            lhs, rhs = _prod(st["left"]), _prod(st["right"])
            lf, rf = _factors(st["left"]), _factors(st["right"])
            a = f"{lf} = {lhs}" if len(st["left"]) > 1 else lf
            b = f"{rf} = {rhs}" if len(st["right"]) > 1 else rf
            if st["replaced"]:
                verdict = f"{a} > {b}, so {st['challenger']} replaces {st['candidate']}"
            else:
                verdict = f"{a} <= {b}, so {st['candidate']} stays"
            out.append(f"{st['challenger']} against {st['candidate']}: {verdict}")
    if acc.get("truncated"):
        out.append(f"... {acc['truncated']} more steps left out")
    return out


def _hash_lines(acc: Account) -> list[str]:
    name = acc["scheduler"]
    out = []
    if name == "dh":
        out.append(
            f"destination {acc['address']} = {acc['hash_input']}; bucket = ({acc['hash_input']} * 0x61C88647"
            f" mod 2^32) >> 24 = {acc['bucket']} of {acc['table_size']}"
        )
        out.append(
            f"bucket {acc['bucket']} belongs to {acc['owner']} (bucket i goes to the server at list position"
            f" i mod {len(acc['servers'])}; weights play no part)"
        )
    elif name == "sh":
        port = f" + port {acc['port']}" if acc["port"] else ""
        out.append(
            f"client {acc['address']}{port} = {acc['hash_input']}; bucket = ({acc['hash_input']} * 0x61C88647"
            f" mod 2^32) >> 24 = {acc['bucket']} of {acc['table_size']}"
        )
        out.append(
            f"bucket {acc['bucket']} belongs to {acc['owner']} (the list is dealt round, each server taking"
            " max(weight, 1) buckets in a row)"
        )
        for p in acc["probes"]:
            out.append(
                f"fallback probe {p['offset']}: bucket (2*{acc['bucket']} + {p['offset']}) mod 256"
                f" = {p['bucket']} -> {p['owner']}" + (f": {p['reason']}" if p["reason"] else ": usable")
            )
    elif name == "mh":
        port = f" + port {acc['port']}" if acc["port"] else ""
        owned = acc["slots_owned"].get(acc["owner"], 0) if acc["owner"] else 0
        out.append(
            f"client {acc['address']}{port} = {acc['hash_input']}; slot = hsiphash1({acc['hash_input']})"
            f" mod {acc['table_size']} = {acc['slot']}"
        )
        out.append(
            f"slot {acc['slot']} belongs to {acc['owner']} in the Maglev table ({owned} of"
            f" {acc['table_size']} slots; gcd of weights {acc['gcd']}, shift {acc['rshift']})"
        )
        for p in acc["probes"]:
            out.append(
                f"fallback probe {p['offset']}: slot = hsiphash1({acc['hash_input']} + {p['roffset']})"
                f" mod {acc['table_size']} = {p['slot']} -> {p['owner']}"
                + (f": {p['reason']}" if p["reason"] else ": usable")
            )
    if acc.get("refused"):
        out.append(f"no server: {acc['refused']}")
    return out


def _locality_lines(acc: Account) -> list[str]:
    out = [f"destination {acc['address']} (cache bucket {acc['bucket']}): cache {acc['cache']}"]
    if acc["scheduler"] == "lblcr" and acc["cache"] == "hit":
        out[0] += f", set {{{', '.join(acc['set'])}}}"
    elif acc.get("cached"):
        out[0] += f" -> {acc['cached']}"
    return out


def _overload_line(check: dict[str, Any]) -> str:
    s, a, w = check["server"], check["active"], check["weight"]
    if not check["overloaded"]:
        if a > w:
            return f"{s}: {a} active > weight {w}, but no server is below half its weight: not overloaded"
        return f"{s}: {a} active <= weight {w}, not overloaded"
    b = check["below_half"]
    return (
        f"{s}: {a} active > weight {w} while {b['server']} has {b['active']}*2 = {b['active'] * 2} < weight"
        f" {b['weight']}, so {s} counts as overloaded"
    )


def render_scheduler(acc: Account) -> list[str]:
    """An account from :mod:`schedulers.account` as text lines."""
    name = acc["scheduler"]
    out: list[str] = []
    if name == "rr":
        out.append(f"rr: cursor at {acc['cursor'] or 'the head of the list'}; walk on from the next server")
    elif name == "wrr":
        cursor = acc["cursor"] or "the head of the list"
        out.append(
            f"wrr: cursor at {cursor}, current weight cw={acc['cw']}, max weight {acc['max_weight']},"
            f" gcd {acc['di']} (each pass lowers cw by the gcd; a new round starts at"
            f" mw = {acc['max_weight']} - ({acc['di']} - 1) = {acc['mw']})"
        )
    elif name in ("dh", "sh", "mh"):
        out.append(f"{name}:")
    elif name in ("lblc", "lblcr"):
        out.append(f"{name}: overhead = {acc['overhead_form']}")
        out += _locality_lines(acc)
    elif "overhead_form" in acc:
        out.append(f"{name}: overhead = {acc['overhead_form']}")
    elif "load_form" in acc:
        out.append(f"{name}: expected delay = ({acc['load_form']}) / weight")
    else:
        out.append(f"{name}:")
    out.append(_server_line(acc))
    if name in _TESTS and any(s["kind"] == "compare" for s in acc["steps"]):
        out.append("test: " + _TESTS[name])
    if name == "twos" and "total" in acc:
        sums = ", ".join(f"{s} {r}" for s, _, r in acc["running"])
        r1, r2 = acc["draws"]
        out.append(f"total weight {acc['total']}; running sums: {sums}")
        out.append(f"draws r1={r1}, r2={r2} from 0..{acc['total']}")
        out.append(
            f"choice 1 = first running sum >= {r1}: {acc['choice1']};"
            f" choice 2 = first >= {r2}: {acc['choice2']}"
        )
    if name in ("dh", "sh", "mh"):
        out += _hash_lines(acc)
    if name == "lblc" and acc.get("overload_check"):
        out.append(_overload_line(acc["overload_check"]))
        if acc.get("cache_used"):
            out.append(f"the cached server {acc['cached']} takes it")
        else:
            out.append(f"cache not used ({acc['cache_refused']}): weighted least-connection over the service")
    out += _step_lines(acc)
    if acc.get("cache_write"):
        out.append(acc["cache_write"])
    if name == "wrr":
        if acc["chosen"]:
            out.append(f"cursor moves to {acc['chosen']}, cw is now {acc['cw_after']}")
        else:
            out.append(f"no server: {acc.get('gave_up', 'none eligible')}")
    out.append(f"chosen: {acc['chosen']}" if acc["chosen"] else "chosen: none (no destination available)")
    return out


def render(acc: Account | None) -> list[str]:
    """The whole account of one flow as plain text lines."""
    if acc is None:
        return ["no virtual service for this flow"]
    if acc["kind"] == "existing":
        return [f"not new: the existing connection entry to {acc['server']} ({acc['state']}) carries it"]
    out: list[str] = []
    persist = acc.get("persistence")
    if acc["kind"] == "template":
        return [
            f"persistent service: the template for client net {persist['client_net']}"
            f" (mask {persist['mask']}) pins it to {acc['server']}; the scheduler is not asked"
        ]
    if persist is not None:
        if persist.get("invalid"):
            out.append(f"the persistence template to {persist['template']} is no longer valid")
        else:
            out.append(f"persistent service: no template yet for client net {persist['client_net']}")
    sched = acc.get("scheduler")
    if sched is None:
        out.append("no scheduler")
        return out
    out += render_scheduler(sched)
    if persist is not None and sched["chosen"]:
        out.append(
            f"a template now pins client net {persist['client_net']} (mask {persist['mask']}) to"
            f" {sched['chosen']} for {persist['timeout']}s after its last connection"
        )
    if acc.get("one_packet"):
        out.append("one-packet (-o): the entry is removed right after this datagram")
    return out


def chosen(acc: Account | None) -> str | None:
    """The real server the account says the flow goes to."""
    if acc is None:
        return None
    if acc["kind"] in ("existing", "template"):
        return acc["server"]
    sched = acc.get("scheduler")
    return None if sched is None else sched["chosen"]


def render_lines(event: dict[str, Any]) -> list[str]:
    """The explanation of one flow line, for ``--report --explain``."""
    lines = event.get("explain")
    if lines is None:
        return []
    out = [f"rule: {event['rule']}"] if event.get("rule") else []
    return out + list(lines)
