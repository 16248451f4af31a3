"""The scheduler lab's state: one simulated director driven by the page.

Every action of the page becomes scenario lines (``ipvsadm ...``, ``udp``,
``tcp``, ``flows``, ``close``, ``sleep``; the format of tests/data/README.md)
run through :class:`lvs.simulate.Simulation`, the same interpreter
``lvsadm simulate`` uses, and recorded.  So the export is exactly what
happened: ``lvsadm simulate`` replays it to the same decisions.  No
scheduler runs anywhere else (the page only draws what this returns).

Pure: no sockets, no clock (time moves only by ``advance``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lvs.constants import SVC_F_PERSISTENT
from lvs.sched import SCHEDULER_NAMES
from lvs.simulate import ScenarioError, Simulation

#: the lab's virtual service and the clients' first port
DEFAULT_VIP = "10.0.0.1:80"
FIRST_PORT = 20000
#: scheduler flags ipvsadm's -b accepts, by scheduler
SCHED_FLAGS = {
    "sh": ("sh-fallback", "sh-port"),
    "mh": ("mh-fallback", "mh-port"),
}
MAX_BURST = 10000
#: decisions kept for the page (the export keeps everything)
MAX_DECISIONS = 500
DECISION_FIELDS = ("i", "proto", "flow", "vip", "real_server", "state", "error", "explain", "rule")


class LabError(ValueError):
    """An action the lab refuses, with a message for the page."""


def _ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise LabError(f"{what}: {text!r} is not an IP address") from None


def _endpoint(text: str, what: str, default_port: int | None = None) -> str:
    text = text.strip()
    host, sep, port = text.partition(":")
    if not sep:
        if default_port is None:
            raise LabError(f"{what}: {text!r} is not ADDRESS:PORT")
        port = str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise LabError(f"{what}: bad port in {text!r}")
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise LabError(f"{what}: {text!r} is not an IPv4 ADDRESS:PORT (the lab uses IPv4)") from None
    return f"{ip}:{int(port)}"


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise LabError(f"{what}: {value!r} is not a whole number") from None
    if not lo <= n <= hi:
        raise LabError(f"{what}: {n} is not between {lo} and {hi}")
    return n


@dataclass
class LabSession:
    """A lab session: the simulation, the recorded scenario, the decisions."""

    seed: int = 0
    classic: bool = False
    sim: Simulation = field(init=False)
    lines: list[str] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    proto: str = "udp"
    vip: str = DEFAULT_VIP
    scheduler: str = ""
    next_port: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sim = Simulation(seed=self.seed, classic=self.classic, explain=True)
        self._run(["local 10.1.0.0/16"])

    # -- running lines ------------------------------------------------------------
    def _emit(self, ev: dict[str, Any]) -> None:
        if "i" in ev:
            rs = ev.get("real_server")
            if rs is None:
                self.dropped += 1
            else:
                self.counts[rs] = self.counts.get(rs, 0) + 1
            self.decisions.append({k: ev[k] for k in DECISION_FIELDS if k in ev})
            if len(self.decisions) > MAX_DECISIONS:
                del self.decisions[: len(self.decisions) - MAX_DECISIONS]
        elif ev.get("step") in ("ipvsadm",) and ev["rc"] != 0:
            raise LabError(f"ipvsadm {ev['args']}: {ev['output'] or 'exit ' + str(ev['rc'])}")

    def _run(self, lines: Iterable[str]) -> None:
        lines = list(lines)
        for line in lines:
            try:
                self.sim.run([line], self._emit)
            except ScenarioError as exc:
                raise LabError(str(exc).removeprefix("line 1: ")) from None
            self.lines.append(line)

    def _ipvsadm(self, args: str) -> None:
        self._run([f"ipvsadm {args}"])

    def _flag(self) -> str:
        return "-t" if self.proto == "tcp" else "-u"

    # -- actions ----------------------------------------------------------------------
    def service(
        self,
        scheduler: str,
        flags: Iterable[str] = (),
        proto: str = "udp",
        vip: str = DEFAULT_VIP,
        persistent: int = 0,
        one_packet: bool = False,
    ) -> None:
        """Create the virtual service, or change its scheduler and flags (-E)."""
        if scheduler not in SCHEDULER_NAMES:
            raise LabError(f"unknown scheduler {scheduler!r}")
        if proto not in ("tcp", "udp"):
            raise LabError("protocol must be tcp or udp")
        flags = [f for f in flags if f]
        allowed = SCHED_FLAGS.get(scheduler, ())
        for f in flags:
            if f not in allowed:
                raise LabError(f"flag {f!r} is not a flag of {scheduler}")
        vip = _endpoint(vip, "virtual service")
        persistent = _int(persistent, "persistence timeout", 0, 86400 * 31)
        if self.scheduler and (proto != self.proto or vip != self.vip):
            raise LabError("the lab has one service: reset to change its protocol or address")
        args = f"{'-E' if self.scheduler else '-A'} {'-t' if proto == 'tcp' else '-u'} {vip} -s {scheduler}"
        if flags:
            args += " -b " + ",".join(flags)
        if persistent:
            args += f" -p {persistent}"
        if one_packet:
            args += " -o"
        self.proto, self.vip = proto, vip
        self._ipvsadm(args)
        self.scheduler = scheduler

    def _need_service(self) -> None:
        if not self.scheduler:
            raise LabError("create the virtual service first")

    def add_server(self, server: str, weight: int = 1, upper: int = 0, lower: int = 0) -> None:
        self._need_service()
        server = _endpoint(server, "real server", default_port=int(self.vip.rsplit(":", 1)[1]))
        weight = _int(weight, "weight", 0, 65535)
        upper = _int(upper, "upper threshold", 0, 65535)
        lower = _int(lower, "lower threshold", 0, 65535)
        self._ipvsadm(f"-a {self._flag()} {self.vip} -r {server} -m -w {weight} -x {upper} -y {lower}")
        if self.proto == "tcp":
            self._run([f"listen {server}"])

    def edit_server(self, server: str, weight: int, upper: int = 0, lower: int = 0) -> None:
        self._need_service()
        server = _endpoint(server, "real server")
        weight = _int(weight, "weight", 0, 65535)
        upper = _int(upper, "upper threshold", 0, 65535)
        lower = _int(lower, "lower threshold", 0, 65535)
        self._ipvsadm(f"-e {self._flag()} {self.vip} -r {server} -m -w {weight} -x {upper} -y {lower}")

    def remove_server(self, server: str) -> None:
        self._need_service()
        server = _endpoint(server, "real server")
        self._ipvsadm(f"-d {self._flag()} {self.vip} -r {server}")

    def send(self, client: str = "10.2.0.1", count: int = 1, many: bool = False, hold: bool = True) -> None:
        """``count`` new flows from ``client`` (one address, new source ports), or
        with ``many`` from ``count`` consecutive addresses starting there."""
        self._need_service()
        client = _ip(client, "client")
        count = _int(count, "flows", 1, MAX_BURST)
        port = self.next_port.get(client, FIRST_PORT)
        if many:
            # one flow from each of count addresses, all on the same port
            line = f"flows {self.proto} {count} src={client}:{port} dst={self.vip} srcstep=1 sportstep=0"
            self.next_port[client] = port + 1
        elif count == 1:
            line = f"{self.proto} {client}:{port} {self.vip}"
            self.next_port[client] = port + 1
        else:
            line = f"flows {self.proto} {count} src={client}:{port} dst={self.vip} srcstep=0 sportstep=1"
            self.next_port[client] = port + count
        if self.proto == "tcp" and not hold:
            line += " hold=0"
        self._run([line])

    def close(self, client: str = "all") -> None:
        """Close the held TCP connections of ``client`` (an address), or all."""
        if client == "all":
            if self.sim.held:
                self._run(["close all"])
            return
        client = _ip(client, "client")
        names = [n for n in self.sim.held if n.rpartition(":")[0] == client]
        if names:
            self._run(["close " + " ".join(names)])

    def advance(self, seconds: float) -> None:
        try:
            s = float(seconds)
        except (TypeError, ValueError):
            raise LabError(f"time: {seconds!r} is not a number") from None
        if not 0 < s <= 7 * 86400:
            raise LabError("time: advance by more than 0 and at most a week of seconds")
        self._run([f"sleep {s:g}"])

    # -- views ------------------------------------------------------------------------
    def scenario(self) -> str:
        """The session as a scenario file ``lvsadm simulate`` replays."""
        head = [
            "# exported from the pylvs scheduler lab (lvsadm lab)",
            f"# replay: lvsadm simulate --report --explain{' --seed ' + str(self.seed) if self.seed else ''}"
            " THIS_FILE",
        ]
        return "\n".join(head + self.lines) + "\n"

    def state(self) -> dict[str, Any]:
        servers = []
        svc = next(iter(self.sim.ipvs), None)
        if svc is not None:
            for d in reversed(svc.destinations):  # oldest first, as added
                ep = d.endpoint()
                servers.append({
                    "server": ep,
                    "weight": d.weight,
                    "upper": d.u_threshold,
                    "lower": d.l_threshold,
                    "active": d.activeconns,
                    "inactive": d.inactconns,
                    "flows": self.counts.get(ep, 0),
                })
        routed = sum(self.counts.values())
        listed = {s["server"] for s in servers}
        gone = [{"server": k, "flows": v, "removed": True} for k, v in self.counts.items() if k not in listed]
        return {
            "service": None if svc is None else {
                "describe": svc.describe(),
                "scheduler": svc.sched_name,
                "proto": self.proto,
                "vip": self.vip,
                "flags": svc.flags,
                "persistent": svc.timeout if svc.flags & SVC_F_PERSISTENT else 0,
            },
            "servers": servers,
            "removed": gone,
            "flows": routed + self.dropped,
            "routed": routed,
            "dropped": self.dropped,
            "clock": self.sim.now,
            "held": len(self.sim.held),
            "decisions": self.decisions[-100:],
            "lines": len(self.lines),
            "schedulers": list(SCHEDULER_NAMES),
            "sched_flags": {k: list(v) for k, v in SCHED_FLAGS.items()},
        }
