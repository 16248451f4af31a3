"""What the NAT relays (:mod:`forwarding.nat_tcp`, :mod:`forwarding.nat_udp`)
need from the plane that runs them: :class:`RelayContext` (the core, the
clock, the options, the counters) and :class:`ServedAddress` (the virtual
address a session was accepted on); the plane's logger; the conversions
between the core's integer addresses and their text; the process tuning
every NAT plane does at start (descriptors, garbage collector)."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from typing import Any

from lvs.addr import format_ip, inet_pton
from lvs.constants import AF_INET6, IPPROTO_UDP
from lvs.core import Director
from lvs.limits import FdBudget, RateLimitedLog
from lvs.model import ServiceKey

log = logging.getLogger("lvsd.nat")

_ipcache: dict[str, int] = {}


def ip_int(af: int, host: str) -> int:
    """An address text as the core's integer (cached: clients repeat)."""
    v = _ipcache.get(host)
    if v is None:
        if len(_ipcache) > 65536:
            _ipcache.clear()
        text = host.split("%", 1)[0]
        value = inet_pton(af, text)
        if value is None:
            raise OSError(f"illegal IP address string passed to inet_pton: {text!r}")
        v = _ipcache[host] = value
    return v


#: the core's integer address as text
ip_text = format_ip


def endpoint(af: int, host: str, port: int) -> str:
    """``host:port`` (``[host]:port`` for IPv6)."""
    return f"[{host}]:{port}" if af == AF_INET6 else f"{host}:{port}"


class RelayContext:
    """The core and the settings every relay of one NAT plane shares, and the
    plane's counters (shown by ``--status``).

    ``proxy_protocol`` maps a real server endpoint ``(host, port)`` to the
    PROXY protocol version (1 or 2) it wants; ``transparent`` connects to
    real servers from the client's address.
    """

    def __init__(
        self,
        director: Director,
        now_fn: Callable[[], float],
        *,
        proxy_protocol: dict[tuple[str, int], int] | None = None,
        transparent: bool = False,
        connect_timeout: float = 5.0,
    ) -> None:
        self.director = director
        self.now = now_fn
        self.proxy_protocol = dict(proxy_protocol or {})
        self.transparent = transparent
        self.connect_timeout = connect_timeout
        self.loop: Any = None
        #: TCP relays alive (a set of :class:`forwarding.nat_tcp.TcpSession`)
        self.sessions: set[Any] = set()
        self._targets: dict[tuple[int, int, int], tuple[str, int]] = {}
        #: warnings by key (a service key, ("vip", key), "icmp" or the text)
        self.problems: dict[Any, str] = {}
        #: ICMP port unreachable sender (:class:`forwarding.icmp.PortUnreachable`), made on first use
        self.icmp: Any = None
        self.accepted = 0
        self.refused = 0
        self.connect_failures = 0
        self.connect_timeouts = 0
        self.resets = 0
        self.expired = 0
        self.nodest = 0
        self.udp_dropped = 0
        self.udp_flows_opened = 0
        #: descriptors: what relays may use (lvs/limits.py); the UDP services
        #: share it, idle flow sockets are reclaimed under pressure
        self.budget = FdBudget(_nofile())
        self.udp_services: list[Any] = []
        self.udp_sockets = 0
        self.udp_reclaimed = 0
        self.udp_fd_drops = 0
        self.udp_rcvbuf_drops = 0
        self.limit_refused = 0
        #: SO_RCVBUF of the VIP sockets of UDP services (bytes)
        self.udp_rcvbuf = DEFAULT_UDP_RCVBUF
        self.limited_log = RateLimitedLog()

    def note(self, kind: str, text: str) -> None:
        """A warning that may repeat thousands of times a second (connect
        failures, limits): logged at most once per 10 s per kind, with the
        count of the lines held back."""
        admit, held = self.limited_log.admit(kind, self.now())
        if admit:
            log.warning("%s%s", text, f" ({held} more like it in the last 10 s)" if held else "")

    def tcp_allowed(self) -> bool:
        return self.budget.tcp_allowed(len(self.sessions), self.udp_sockets)

    def udp_room(self) -> bool:
        """Room for one more UDP flow socket, after closing the least
        recently used idle ones (idle 1 s or more) if needed."""
        n = self.budget.udp_to_reclaim(len(self.sessions), self.udp_sockets)
        if not n:
            return True
        now = self.now()
        idle = [(f.last, f) for svc in self.udp_services for f in svc.flows.values() if f.last < now - 1.0]
        idle += [(f.last, f) for svc in self.udp_services for f in svc.ops.values() if f.last < now - 1.0]
        idle.sort(key=lambda pair: pair[0])
        for _, f in idle[:n]:
            f.front.forget(f)
            self.udp_reclaimed += 1
        return self.budget.room(len(self.sessions), self.udp_sockets) >= 1

    def measure_fds(self) -> None:
        """Recount the descriptors open besides relays (listeners, control
        connections, logs); called every few seconds."""
        try:
            total = len(os.listdir("/proc/self/fd"))
        except OSError:
            return
        self.budget.other = max(0, total - 2 * len(self.sessions) - self.udp_sockets)

    def target(self, cp: Any) -> tuple[str, int]:
        """The real server of an entry as (host, port) text for connect()."""
        key = (cp.daf, cp.daddr, cp.dport)
        t = self._targets.get(key)
        if t is None:
            if len(self._targets) > 4096:
                self._targets.clear()
            t = self._targets[key] = (ip_text(cp.daf, cp.daddr), cp.dport)
        return t

    def proxy_version(self, cp: Any) -> int:
        """The PROXY protocol version the entry's real server wants (0: none)."""
        return self.proxy_protocol.get(self.target(cp), 0) if self.proxy_protocol else 0

    def problem(self, text: str, key: Any = None) -> None:
        """Something the operator should see in the plane's warnings (until
        ``problems`` loses ``key``, the text itself by default)."""
        log.warning("%s", text)
        self.problems[key if key is not None else text] = text

    def port_unreachable(self, sa: ServedAddress, addr: Any, data: bytes) -> None:
        """``ip_vs_leave``: a UDP datagram no real server can take is
        answered with ICMP port unreachable from the VIP, rate-limited per
        client (:mod:`forwarding.icmp`)."""
        if self.icmp is None:
            from .icmp import PortUnreachable

            self.icmp = PortUnreachable()
        if not self.icmp.send(sa.af, addr, sa.host, sa.vport, data, self.now()) and self.icmp.error:
            self.problems["icmp"] = self.icmp.error


class ServedAddress:
    """The virtual address and port of one served service (``vaddr`` 0: the
    wildcard, whose relays read the address each client used)."""

    def __init__(self, key: ServiceKey) -> None:
        self.key = key
        self.af = key.af
        self.vaddr = key.addr
        self.vport = key.port
        self.host = ip_text(self.af, self.vaddr)
        self.udp = key.protocol == IPPROTO_UDP
        #: the plane added the address to ``lo`` for this service
        self.vip = False

    def describe(self) -> str:
        return ("UDP " if self.udp else "TCP ") + endpoint(self.af, self.host, self.vport)


def tune_gc() -> None:
    """Every relayed connection allocates a few container objects and leaves a
    connection entry behind (TIME_WAIT, 2 minutes): with the default
    thresholds the cyclic collector runs every few connections and walks a
    table that only grows.  Collect young objects less often, and move what
    exists at start (modules, the table) out of the collector's sight."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 20, 50)


#: receive buffer of a UDP service's VIP socket: a burst of 2,000 datagrams
#: overflowed the kernel's default (about 200 kB); lvsd --udp-rcvbuf
DEFAULT_UDP_RCVBUF = 8 * 1024 * 1024


def _nofile() -> int:
    try:
        import resource

        return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    except (ImportError, ValueError, OSError):
        return 1024


def raise_nofile() -> None:
    """Use as many descriptors as allowed: every relay costs two."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


__all__ = ["RelayContext", "ServedAddress", "endpoint", "ip_int", "ip_text", "log", "raise_nofile", "tune_gc"]
