"""lvsd's state file: what a crashed or restarted lvsd must find again.

The kernel's table outlives any userspace process; lvsd's table lives in a
process, so lvsd writes it down after every change and a new lvsd reads it
back.  Pure: this module renders and parses the text; lvsd writes it
atomically (write, fsync, rename) and reads it.

The file is JSON with the table as ``ipvsadm -S -n`` text (so an operator can
read it and ``ipvsadm -R`` it elsewhere), the three ``--set`` timeouts, every
sysctl (and sync_threshold's period), the running sync daemons (kernel state
too: a successor starts them again), the VIPs lvsd itself added to ``lo`` (a
successor removes those a dead lvsd left), and whether the writer stopped
cleanly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .ctl import IPVS, SyncDaemon
from .errors import IPVSError
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
    #: the running sync daemons (``--start-daemon``), as SyncDaemon fields
    daemons: list[dict[str, Any]] = field(default_factory=list)
    #: sync_threshold's second number (the sysctl is a vector)
    sync_period: int = 50


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
        daemons=[asdict(d) for d in ipvs.daemons.values()],
        sync_period=ipvs.sysctl.sync_period,
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
        "daemons": state.daemons,
        "sync_period": state.sync_period,
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
        daemons = [_daemon_fields(d) for d in obj.get("daemons", [])]
        return State(
            rules=rules,
            timeouts=(timeouts[0], timeouts[1], timeouts[2]),
            sysctl=sysctl,
            vips=vips,
            pid=int(obj.get("pid", 0)),
            clean=bool(obj.get("clean", False)),
            services=int(obj.get("services", 0)),
            dests=int(obj.get("dests", 0)),
            daemons=daemons,
            sync_period=int(obj.get("sync_period", 50)),
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


_TEXT_FIELDS = ("state", "mcast_ifn", "mcast_group")
_DAEMON_TYPES = {f.name: (str if f.name in _TEXT_FIELDS else int) for f in fields(SyncDaemon)}


def _daemon_fields(obj: Any) -> dict[str, Any]:
    """A saved sync daemon, checked field by field (ValueError if damaged)."""
    if not isinstance(obj, dict) or obj.get("state") not in ("master", "backup"):
        raise ValueError("a sync daemon needs state master or backup")
    out: dict[str, Any] = {}
    for name, kind in _DAEMON_TYPES.items():
        if name in obj:
            value = obj[name]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"sync daemon field {name} must be {kind.__name__}")
            out[name] = value
    return out


def restore_sync(ipvs: IPVS, state: State) -> list[str]:
    """sync_threshold's period, then the saved sync daemons, started again
    through ``ipvs.start_daemon`` (lvsd's hook opens their sockets); returns
    the problems (a daemon whose interface is gone, ...)."""
    problems = []
    try:
        ipvs.sysctl.set("sync_threshold", f"{ipvs.sysctl.sync_threshold} {state.sync_period}")
    except (KeyError, ValueError) as exc:
        problems.append(f"sync_threshold period {state.sync_period}: {exc}")
    for saved in state.daemons:
        daemon = SyncDaemon(**saved)
        try:
            ipvs.start_daemon(daemon)
        except IPVSError as exc:
            what = f"--start-daemon {daemon.state} --mcast-interface {daemon.mcast_ifn}"
            problems.append(f"{what}: {exc.message}")
    return problems
