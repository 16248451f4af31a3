"""Which virtual services the NAT data plane serves, and their VIPs.

Every TCP and UDP virtual service with a non-zero port and no firewall mark
that has at least one masquerading real server (or no real server yet: then
clients are refused at once, as the kernel does) is served.  Port-0
(persistent) services, fwmark services and SCTP services with masquerading
real servers stay valid in the table but are not served: the plane's
warnings say so while they exist, and a warning is logged when they are
added.  Services whose real servers all use -g/-i belong to the DR/TUN plane
(:mod:`forwarding.dr`); in a mixed service the NAT plane relays to every real
server, -g/-i ones included.  A VIP that is not local is added to ``lo`` as
a /32 (/128) and removed with the service (:mod:`forwarding.vip`).

:class:`NatServices` follows the table for both forms of the plane: one
process (:class:`forwarding.nat.NatPlane`) or worker processes
(:class:`forwarding.nat_pool.NatWorkerPlane`); they say what serving means.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from lvs.constants import CONN_F_FWD_MASK, CONN_F_MASQ, IPPROTO_TCP, IPPROTO_UDP, SVC_F_PERSISTENT
from lvs.core import Director
from lvs.model import Service, ServiceKey

from .nat_common import ServedAddress, log
from .vip import VipManager


def unserved_reason(svc: Service) -> str | None:
    """Why the NAT plane does not serve ``svc``: None if it does, ``""`` if
    the service belongs to the DR/TUN plane (every real server is -g/-i:
    that plane reports on it), else the warning text."""
    key = svc.key
    if svc.destinations and not any(d.conn_flags & CONN_F_FWD_MASK == CONN_F_MASQ for d in svc.destinations):
        return ""
    if key.fwmark:
        return "firewall-mark services are kept in the table but the NAT data plane does not serve them"
    if key.protocol not in (IPPROTO_TCP, IPPROTO_UDP):
        return "only TCP and UDP services are served by the NAT data plane"
    if key.port == 0:
        kind = "persistent port-0" if svc.flags & SVC_F_PERSISTENT else "port-0"
        return f"{kind} services are kept in the table but the NAT data plane does not serve them"
    return None


#: what a plane keeps per served service (a listener, or just the address)
S = TypeVar("S", bound=ServedAddress)


class NatServices(Generic[S]):
    """The served services of a NAT plane: follows the table's changes,
    holds the VIPs and the warnings.  Subclasses serve: :meth:`open_service`
    (raise OSError if it cannot be served), :meth:`service_changed`,
    :meth:`close_service`, :meth:`table_changed`."""

    def __init__(self, director: Director, now_fn: Callable[[], float], *, manage_vips: bool = True) -> None:
        self.director = director
        self.now = now_fn
        self.vips = VipManager(manage_vips)
        self.served: dict[ServiceKey, S] = {}
        #: warnings by key (a service key, ("vip", key), "icmp" or the text)
        self.problems: dict[Any, str] = {}
        self._unserved: dict[ServiceKey, str] = {}

    # -- what subclasses do -----------------------------------------------------------
    def open_service(self, svc: Service, address: ServedAddress) -> S:
        """Serve ``svc`` at ``address``: returns what :meth:`close_service`
        gets back (``address`` or an object that extends it)."""
        raise NotImplementedError

    def service_changed(self, svc: Service, served: S) -> None:
        """A served service was changed (or just opened)."""

    def close_service(self, served: S) -> None:
        raise NotImplementedError

    def table_changed(self) -> None:
        """After any change of a service (served or not)."""

    # -- following the table ------------------------------------------------------------
    def follow(self) -> None:
        """Serve the current table and follow its changes."""
        self.director.ipvs.listeners.append(self.on_change)
        for svc in list(self.director.ipvs.services.values()):
            self.on_change("add", svc)

    def unfollow(self) -> None:
        """Stop following; close every served service."""
        with contextlib.suppress(ValueError):
            self.director.ipvs.listeners.remove(self.on_change)
        for key in list(self.served):
            self._unserve(key)

    def warnings(self) -> list[str]:
        out = [f"{key.describe()}: {why}" for key, why in self._unserved.items()]
        out.extend(self.problems.values())
        return out

    def problem(self, text: str, key: Any = None) -> None:
        """A warning shown until ``key`` (default: the text) is cleared."""
        log.warning("%s", text)
        self.problems[key if key is not None else text] = text

    def on_change(self, what: str, svc: Service) -> None:
        key = svc.key
        if what == "del":
            self._unserved.pop(key, None)
            self.problems.pop(key, None)
            self._unserve(key)
        else:
            why = unserved_reason(svc)
            if why == "":
                self._unserved.pop(key, None)
                self._unserve(key)
            elif why is not None:
                if self._unserved.get(key) != why:
                    log.warning("%s is not served: %s", key.describe(), why)
                self._unserved[key] = why
                self._unserve(key)
            else:
                self._unserved.pop(key, None)
                if key not in self.served:
                    self._serve(svc)
                served = self.served.get(key)
                if served is not None:
                    self.service_changed(svc, served)
        self.table_changed()

    def _serve(self, svc: Service) -> None:
        key = svc.key
        address = ServedAddress(key)
        if address.host not in ("0.0.0.0", "::"):
            address.vip = True
            warning = self.vips.acquire(address.af, address.host)
            if warning:
                self.problem(f"{address.describe()}: {warning}", ("vip", key))
        try:
            served = self.open_service(svc, address)
        except OSError as exc:
            if address.vip:
                self.vips.release(address.af, address.host)
            self.problem(f"cannot serve {address.describe()}: {exc.strerror or exc}", key)
            return
        self.problems.pop(key, None)
        self.served[key] = served
        log.info("serving %s", served.describe())

    def _unserve(self, key: ServiceKey) -> None:
        served = self.served.pop(key, None)
        if served is None:
            return
        self.close_service(served)
        self.problems.pop(("vip", key), None)
        if served.vip:
            self.vips.release(served.af, served.host)
        log.info("stopped serving %s", served.describe())


__all__ = ["NatServices", "unserved_reason"]
