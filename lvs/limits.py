"""Limits that keep lvsd answering under pressure: the descriptor budget of
the NAT relays and rate-limited warnings.  Pure: counts and the time come in.

The kernel's IPVS needs no descriptor per connection; a userspace relay
needs two per TCP connection and one per UDP flow socket.  HAProxy sizes its
maxconn to its descriptor limit and keeps room for its stats socket; lvsd
keeps ``reserve`` descriptors for its control socket, log, state file and
listeners, refuses new TCP connections (counted, logged) when a relay would
eat into them, and closes the least recently used idle UDP flow sockets
before a new flow would (:meth:`FdBudget.udp_to_reclaim`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: descriptors never used by relays: control connections, the state file,
#: log files, listeners of services added later, health checks
DEFAULT_RESERVE = 64


@dataclass
class FdBudget:
    """``limit``: RLIMIT_NOFILE; ``other``: descriptors open besides relays
    (measured now and then); ``max_conns``: an explicit cap on TCP relays
    (0: only the descriptor limit)."""

    limit: int
    reserve: int = DEFAULT_RESERVE
    other: int = 0
    max_conns: int = 0

    def room(self, tcp_relays: int, udp_sockets: int) -> int:
        """Descriptors relays may still take."""
        return self.limit - self.reserve - self.other - 2 * tcp_relays - udp_sockets

    def tcp_allowed(self, tcp_relays: int, udp_sockets: int) -> bool:
        """May one more TCP relay (two descriptors) be opened?"""
        if self.max_conns and tcp_relays >= self.max_conns:
            return False
        return self.room(tcp_relays, udp_sockets) >= 2

    def udp_to_reclaim(self, tcp_relays: int, udp_sockets: int) -> int:
        """How many idle UDP flow sockets to close before opening one more
        (0: there is room): a batch, so the scan is paid rarely."""
        if self.room(tcp_relays, udp_sockets) >= 1:
            return 0
        return max(64, udp_sockets // 10)


@dataclass
class RateLimitedLog:
    """At most one line per ``interval`` seconds per kind; the lines held
    back are counted and reported with the next one."""

    interval: float = 10.0
    _last: dict[str, float] = field(default_factory=dict)
    _held: dict[str, int] = field(default_factory=dict)

    def admit(self, kind: str, now: float) -> tuple[bool, int]:
        """(log it now?, how many lines of this kind were held back)."""
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False, 0
        self._last[kind] = now
        return True, self._held.pop(kind, 0)
