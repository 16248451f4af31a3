"""lvsd's state file: what a crashed or restarted lvsd must find again.

The kernel's table outlives any userspace process; lvsd's table lives in a
process, so lvsd writes it down after every change and a new lvsd reads it
back.  Pure: this module renders and parses the text; lvsd writes it
atomically (write, fsync, rename) and reads it.

The file is JSON with the table as ``ipvsadm -S -n`` text (so an operator can
read it and ``ipvsadm -R`` it elsewhere), the three ``--set`` timeouts, every
sysctl, the VIPs lvsd itself added to ``lo`` (a successor removes those a
dead lvsd left), and whether the writer stopped cleanly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .ctl import IPVS
from .sysctl import SysctlError, Sysctls

FORMAT = "pylvs-state"
VERSION = 1


class StateError(ValueError):
    """A state file that cannot be read back."""


@dataclass
class State:
    """One snapshot of lvsd's durable state."""

    rules: str = ""
    timeouts: tuple[int, int, int] = (0, 0, 0)
    sysctl: dict[str, int] = field(default_factory=dict)
    #: (family, address) pairs lvsd added to ``lo``
    vips: list[tuple[int, str]] = field(default_factory=list)
    pid: int = 0
    clean: bool = False
    #: services and real servers in ``rules``, for the log
    services: int = 0
    dests: int = 0


def snapshot(ipvs: IPVS, vips: list[tuple[int, str]], pid: int, clean: bool = False) -> State:
    """The state of ``ipvs`` now."""
    from .ipvsadm.listing import save_rules

    return State(
        rules=save_rules(ipvs, numeric=True),
        timeouts=ipvs.get_timeouts(),
        sysctl={name: ipvs.sysctl.get(name) for name in ipvs.sysctl.names()},
        vips=sorted(vips),
        pid=pid,
        clean=clean,
        services=len(ipvs.services),
        dests=sum(len(svc.destinations) for svc in ipvs.services.values()),
    )


def render(state: State) -> str:
    obj: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "pid": state.pid,
        "clean": state.clean,
        "services": state.services,
        "dests": state.dests,
        "timeouts": list(state.timeouts),
        "sysctl": state.sysctl,
        "vips": [list(v) for v in state.vips],
        "rules": state.rules,
    }
    return json.dumps(obj, indent=1) + "\n"


def parse(text: str) -> State:
    """Read a rendered state; StateError says what is wrong."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise StateError(f"not a pylvs state file: {exc}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise StateError("not a pylvs state file")
    if obj.get("version") != VERSION:
        raise StateError(f"state format version {obj.get('version')!r} is not {VERSION}")
    try:
        timeouts = tuple(int(v) for v in obj.get("timeouts", (0, 0, 0)))
        if len(timeouts) != 3:
            raise ValueError("three timeouts")
        sysctl = {str(k): int(v) for k, v in dict(obj.get("sysctl", {})).items()}
        vips = [(int(af), str(host)) for af, host in obj.get("vips", [])]
        rules = obj.get("rules", "")
        if not isinstance(rules, str):
            raise ValueError("rules must be text")
        return State(
            rules=rules,
            timeouts=(timeouts[0], timeouts[1], timeouts[2]),
            sysctl=sysctl,
            vips=vips,
            pid=int(obj.get("pid", 0)),
            clean=bool(obj.get("clean", False)),
            services=int(obj.get("services", 0)),
            dests=int(obj.get("dests", 0)),
        )
    except (TypeError, ValueError) as exc:
        raise StateError(f"damaged state file: {exc}") from None


def apply_sysctls(sysctls: Sysctls, values: dict[str, int]) -> list[str]:
    """Set the saved sysctls; returns the problems (unknown names, bad values)."""
    problems = []
    for name, value in values.items():
        try:
            sysctls.set(name, str(value))
        except KeyError:
            problems.append(f"unknown sysctl {name}")
        except SysctlError as exc:
            problems.append(str(exc))
    return problems
