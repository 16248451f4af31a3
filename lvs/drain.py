"""Graceful drain of a real server (Kubernetes' "graceful termination",
kubernetes#57841, done the IPVS way): its weight goes to 0 at once, so the
scheduler sends it no new connections while the ones it has go on; it is
deleted when its active connections reach 0, or when the timeout runs out,
whichever comes first.  Pure: the daemon calls :meth:`Drain.step` with the
time and the server's counters."""

from __future__ import annotations

from dataclasses import dataclass

from .ctl import IPVS, DestSpec
from .errors import OP_EDIT_DEST
from .model import Dest, ServiceKey

DEFAULT_TIMEOUT = 300.0


@dataclass
class Drain:
    key: ServiceKey
    af: int
    addr: int
    port: int
    started: float
    timeout: float = DEFAULT_TIMEOUT
    state: str = "draining"  # draining | deleted | timeout | gone
    active: int = 0
    inactive: int = 0
    finished: float | None = None

    def ident(self) -> tuple[ServiceKey, int, int, int]:
        return (self.key, self.af, self.addr, self.port)

    def progress(self, now: float) -> dict[str, object]:
        return {
            "state": self.state,
            "active": self.active,
            "inactive": self.inactive,
            "elapsed": round(now - self.started, 1),
            "left": max(0.0, round(self.started + self.timeout - now, 1)),
        }

    def step(self, ipvs: IPVS, now: float) -> bool:
        """Look at the server again; delete it when its time has come.
        True once the drain is over."""
        if self.state != "draining":
            return True
        svc = ipvs.get(self.key)
        dest = svc.find_dest(self.af, self.addr, self.port) if svc is not None else None
        if dest is None:
            self.state, self.finished = "gone", now
            return True
        self.active, self.inactive = dest.activeconns, dest.inactconns
        if self.active == 0 or now >= self.started + self.timeout:
            self.state = "deleted" if self.active == 0 else "timeout"
            ipvs.del_dest(self.key, self.af, self.addr, self.port, now)
            self.finished = now
            return True
        return False


def start_drain(
    ipvs: IPVS, key: ServiceKey, af: int, addr: int, port: int, now: float, timeout: float
) -> Drain:
    """Set the real server's weight to 0 (IPVSError if the service or the
    server does not exist, in ipvsadm's words) and return its drain."""
    svc = ipvs.get_service(key, OP_EDIT_DEST)
    dest = svc.find_dest(af, addr, port)
    ipvs.edit_dest(key, zero_weight_spec(dest, af, addr, port), now)
    drain = Drain(key, af, addr, port, now, timeout)
    if dest is not None:
        drain.active, drain.inactive = dest.activeconns, dest.inactconns
    return drain


def zero_weight_spec(dest: Dest | None, af: int, addr: int, port: int) -> DestSpec:
    """The edit that keeps everything of ``dest`` but its weight (a missing
    dest gets a plain spec, so the table answers with its own error)."""
    if dest is None:
        return DestSpec(af, addr, port, weight=0)
    return DestSpec(
        dest.af, dest.addr, dest.port, dest.fwd_method, 0, dest.u_threshold, dest.l_threshold,
        dest.tun_type, dest.tun_port, dest.tun_flags,
    )  # fmt: skip
