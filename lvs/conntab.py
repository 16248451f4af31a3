"""The connection table (ip_vs_conn.c): one hash of entries keyed by the
client endpoint, found from both directions, with a timer wheel for expiry.

As in the kernel, inbound packets (client to virtual service) and outbound
ones (real server to client, NAT) hash the same thing, the client's
(protocol, address, port), and then compare the rest: the virtual address
and port inbound, the real server's address and port outbound.  Persistence
templates live in the same table under their masked client address and
port 0.  Entries sharing a client endpoint are chained through ``hnext``.

The hash is :class:`lvs._intmap.IntMap` (C, built at install): keys below
2**64, every IPv4 client key, sit inline beside the entry pointer, so a
look-up among 10^6 entries costs one cache miss for the slot and one for the
entry, where a dict costs four (index, entry slot, key object, entry).  Its
slot index is seeded, as the kernel seeds its jhash, so clients cannot aim
their addresses and ports at one probe cluster.  The two per-packet
look-ups, :meth:`ConnTable.lookup_in` and :meth:`ConnTable.lookup_out`, then
run as one C call each (IntMap's ChainFinder: key, chain head, compares)
instead of a Python frame.  Without a C compiler at install time the table
is a dict and the look-ups are the Python functions below, with the same
results (tests/test_conntable.py runs both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .conn import Conn, client_key
from .constants import AF_INET6, CONN_F_TEMPLATE
from .timerwheel import TimerWheel

#: port numbers of an invalidated template (``ip_vs_check_template``)
INVALID_PORT = 0xFFFF

try:
    from ._intmap import IntMap
except ImportError:  # built without a C compiler: a dict does the same job
    IntMap = None  # type: ignore[assignment,misc]


class ConnTable:
    """Hash of connection entries plus their timers."""

    __slots__ = ("_find_out", "_tab", "count", "lookup_in", "templates", "wheel")

    def __init__(self, seed: int = 0, native: bool = True) -> None:
        """``seed``: the hash's secret (lvsd draws one at start; replays and
        tests keep 0, which changes nothing but the order of listings).
        ``native=False``: a dict and the Python look-ups even where the C
        extension is built (the fallback, for tests and benchmarks)."""
        native = native and IntMap is not None
        #: client key -> newest entry of its chain
        self._tab: Any = IntMap(seed=seed & 0xFFFFFFFFFFFFFFFF) if native else {}
        #: ``lookup_in(protocol, af, caddr, cport, vaddr, vport)``, see :meth:`_lookup_in`
        self.lookup_in: Callable[[int, int, int, int, int, int], Conn | None] = (
            self._tab.finder(Conn, "vaddr", "vport", "flags", CONN_F_TEMPLATE, "hnext")
            if native
            else self._lookup_in
        )
        self._find_out: Callable[[int, int, int, int, int, int], Conn | None] | None = (
            self._tab.finder(Conn, "daddr", "dport", "flags", CONN_F_TEMPLATE, "hnext") if native else None
        )
        self.wheel = TimerWheel()
        #: hashed entries (connections and templates)
        self.count = 0
        #: hashed templates
        self.templates = 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Conn]:
        """Every hashed entry, templates included."""
        for head in list(self._tab.values()):
            c: Conn | None = head
            while c is not None:
                nxt = c.hnext
                yield c
                c = nxt

    # -- hashing ----------------------------------------------------------------
    def hash(self, cp: Conn) -> None:
        """Link ``cp`` at the head of its chain (``ip_vs_conn_hash``)."""
        key = cp.key
        tab = self._tab
        cp.hnext = tab.get(key)
        tab[key] = cp
        cp.hashed = True
        self.count += 1
        if cp.flags & CONN_F_TEMPLATE:
            self.templates += 1

    def unhash(self, cp: Conn) -> bool:
        """Unlink ``cp``; False if it was not hashed."""
        if not cp.hashed:
            return False
        key = cp.key
        tab = self._tab
        head = tab.get(key)
        if head is cp:
            if cp.hnext is None:
                del tab[key]
            else:
                tab[key] = cp.hnext
        else:
            prev = head
            while prev is not None and prev.hnext is not cp:
                prev = prev.hnext
            if prev is None:
                return False
            prev.hnext = cp.hnext
        cp.hnext = None
        cp.hashed = False
        self.count -= 1
        if cp.flags & CONN_F_TEMPLATE:
            self.templates -= 1
        return True

    # -- lookups ---------------------------------------------------------------
    def _lookup_in(
        self, protocol: int, af: int, caddr: int, cport: int, vaddr: int, vport: int
    ) -> Conn | None:
        """``ip_vs_conn_in_get``: the connection a client packet belongs to, the
        newest non-template entry of the client's chain for this virtual
        address and port.  ``self.lookup_in`` is this, or the same in C."""
        c = self._tab.get((((caddr << 16) | cport) << 9) | (protocol << 1) | (af == AF_INET6))
        while c is not None:
            if c.vport == vport and c.vaddr == vaddr and not c.flags & CONN_F_TEMPLATE:
                return c
            c = c.hnext
        return None

    def lookup_out(
        self, protocol: int, af: int, daddr: int, dport: int, caddr: int, cport: int
    ) -> Conn | None:
        """``ip_vs_conn_out_get``: the connection a real server's reply belongs to
        (source = real server ``daddr:dport``, destination = client)."""
        if self._find_out is not None:
            return self._find_out(protocol, af, caddr, cport, daddr, dport)
        c = self._tab.get(client_key(protocol, af, caddr, cport))
        while c is not None:
            if c.dport == dport and c.daddr == daddr and not c.flags & CONN_F_TEMPLATE:
                return c
            c = c.hnext
        return None

    def lookup_template(self, protocol: int, af: int, caddr: int, vaddr: int, vport: int) -> Conn | None:
        """``ip_vs_ct_in_get``: a valid persistence template for the masked client."""
        c = self._tab.get(client_key(protocol, af, caddr, 0))
        while c is not None:
            if (
                c.flags & CONN_F_TEMPLATE
                and c.vport == vport
                and c.vaddr == vaddr
                and c.dport != INVALID_PORT
            ):
                return c
            c = c.hnext
        return None

    def chain(self, key: int) -> Conn | None:
        """The newest entry hashed under ``key`` (the rest follow through
        ``hnext``): for look-ups that compare more than the key, such as a
        persistence engine's templates, hashed by the engine's own key."""
        return self._tab.get(key)

    # -- timers ---------------------------------------------------------------
    def arm(self, cp: Conn) -> None:
        self.wheel.arm(cp)

    def expire_due(self, now: float, on_due: Callable[[Conn], None], budget: int = -1) -> bool:
        return self.wheel.advance(now, on_due, budget)
