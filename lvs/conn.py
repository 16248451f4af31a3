"""A connection entry (``struct ip_vs_conn``), for connections and templates alike.

One entry records where a client flow was sent: client (``caddr:cport``),
virtual (``vaddr:vport``) and real server (``daddr:dport``).  Persistence
templates are entries too, flagged TEMPLATE, with client port 0 and the
client address masked.  ``expires`` is the virtual time the entry runs out;
``timeout`` the period its timer is re-armed with on every packet.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .addr import format_endpoint
from .constants import (
    AF_INET,
    AF_INET6,
    CONN_F_FWD_MASK,
    CONN_F_TEMPLATE,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
)
from .pe_sip import pe_key

if TYPE_CHECKING:
    from .model import Dest, Service

# TCP states (IP_VS_TCP_S_*), in the kernel's numbering.
TCP_S_NONE = 0
TCP_S_ESTABLISHED = 1
TCP_S_SYN_SENT = 2
TCP_S_SYN_RECV = 3
TCP_S_FIN_WAIT = 4
TCP_S_TIME_WAIT = 5
TCP_S_CLOSE = 6
TCP_S_CLOSE_WAIT = 7
TCP_S_LAST_ACK = 8
TCP_S_LISTEN = 9
TCP_S_SYNACK = 10
TCP_S_LAST = 11

TCP_STATE_NAMES = (
    "NONE",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "SYNACK",
)

SCTP_STATE_NAMES = (
    "NONE",
    "INIT1",
    "INIT",
    "COOKIE_SENT",
    "COOKIE_REPLIED",
    "COOKIE_WAIT",
    "COOKIE",
    "COOKIE_ECHOED",
    "ESTABLISHED",
    "SHUTDOWN_SENT",
    "SHUTDOWN_RECEIVED",
    "SHUTDOWN_ACK_SENT",
    "REJECTED",
    "CLOSED",
)

# UDP has one state (IP_VS_UDP_S_NORMAL) named "UDP".
UDP_S_NORMAL = 0

# Template states (IP_VS_CTPL_S_*).
CTPL_S_NONE = 0
CTPL_S_ASSURED = 1
CTPL_STATE_NAMES = ("NONE", "ASSURED")


def client_key(protocol: int, af: int, caddr: int, cport: int) -> int:
    """The connection table's key: (client address, client port, protocol,
    family) packed into one integer, which the entry also keeps instead of
    separate fields (a third less memory per entry)."""
    return (((caddr << 16) | cport) << 9) | (protocol << 1) | (af == AF_INET6)


def _untracker() -> Callable[[object], None]:
    """``PyObject_GC_UnTrack`` (public C API) on CPython, else a no-op.

    An entry refers only to other entries (``control``, ``hnext``), its real
    server and service, and immutable values; nothing an entry refers to
    refers back to it, so entries never take part in a reference cycle and
    reference counting alone frees them when the table and the timer wheel
    let go.  The cyclic collector therefore has nothing to find among them,
    yet a full collection used to walk every one: 240-475 ms with 10^6 live
    entries, a stall of the whole daemon (benchmarks/RESULTS.md, Core).
    Untracked, they are skipped (29 ms).  Keep it so: a forwarder that needs
    to find its own state from an entry must keep that mapping itself, never
    in an attribute of the entry (a cycle through an untracked entry would
    never be collected)."""
    if sys.implementation.name != "cpython":
        return lambda obj: None
    try:
        import ctypes

        fn = ctypes.pythonapi.PyObject_GC_UnTrack
    except (ImportError, AttributeError, OSError):  # pragma: no cover - no ctypes
        return lambda obj: None
    fn.argtypes = [ctypes.py_object]
    fn.restype = None
    return fn  # type: ignore[no-any-return]


_gc_untrack = _untracker()


class _LookupFields:
    """The fields a look-up compares (``ConnTable.lookup_in``/``lookup_out``).

    A base class's slots come first in the object, and an entry (184 bytes
    with the GC header) sits in pymalloc's 192-byte blocks, which start 16
    bytes before a cache line: so the object header and these six slots fill
    one line.  The look-up touches that line anyway (returning the entry
    takes a reference) and needs no other.  ~5 % off lookup_in at 10^6."""

    __slots__ = ("daddr", "dport", "flags", "hnext", "vaddr", "vport")


class Conn(_LookupFields):
    """One entry of the connection table.

    The client endpoint, protocol and family live packed in ``key`` (see
    :func:`client_key`) and are read through properties.
    """

    __slots__ = (
        "control",
        "daf",
        "dest",
        "expires",
        "fwmark",
        "hashed",
        "in_pkts",
        "key",
        "n_control",
        "state",
        "svc",
        "sync_mark",
        "timeout",
        "timer_slot",
    )

    def __init__(
        self,
        af: int,
        protocol: int,
        caddr: int,
        cport: int,
        vaddr: int,
        vport: int,
        daf: int,
        daddr: int,
        dport: int,
        flags: int,
        fwmark: int = 0,
    ) -> None:
        self.key = (((caddr << 16) | cport) << 9) | (protocol << 1) | (af == AF_INET6)
        self.vaddr = vaddr
        self.vport = vport
        self.daf = daf
        self.daddr = daddr
        self.dport = dport
        self.fwmark = fwmark
        self.flags = flags
        self.state = 0
        self.timeout = 3.0
        self.expires = 0.0
        self.dest: Dest | None = None
        self.svc: Service | None = None
        #: the persistence template that controls this connection
        self.control: Conn | None = None
        #: how many connections this (template) entry controls
        self.n_control = 0
        self.in_pkts = 0
        #: the sync master's bookkeeping (lvs.sync.SyncMaster): sync_endtime
        #: in jiffies << 4 | old_state
        self.sync_mark = 0
        #: bookkeeping of the timer wheel (see lvs.timerwheel)
        self.timer_slot: object = None
        self.hashed = False
        #: next entry in the same hash chain (entries sharing a client endpoint)
        self.hnext: Conn | None = None
        _gc_untrack(self)

    # -- the client endpoint, unpacked from the key --------------------------
    @property
    def af(self) -> int:
        return AF_INET6 if self.key & 1 else AF_INET

    @property
    def protocol(self) -> int:
        return (self.key >> 1) & 0xFF

    @property
    def cport(self) -> int:
        return (self.key >> 9) & 0xFFFF

    @property
    def caddr(self) -> int:
        return self.key >> 25

    @property
    def pe_name(self) -> str:
        """Persistence-engine name of the entry: "" here; :class:`PeConn`
        (a ``--pe sip`` template) has one."""
        return ""

    @property
    def pe_data(self) -> bytes:
        return b""

    # -- views -------------------------------------------------------------
    @property
    def is_template(self) -> bool:
        return bool(self.flags & CONN_F_TEMPLATE)

    @property
    def fwd_method(self) -> int:
        return self.flags & CONN_F_FWD_MASK

    def state_name(self) -> str:
        """The name /proc/net/ip_vs_conn and ``ipvsadm -L -c`` print."""
        if self.flags & CONN_F_TEMPLATE:
            return CTPL_STATE_NAMES[self.state] if self.state < len(CTPL_STATE_NAMES) else "ERR!"
        if self.protocol == IPPROTO_TCP:
            return TCP_STATE_NAMES[self.state] if self.state < TCP_S_LAST else "ERR!"
        if self.protocol == IPPROTO_UDP:
            return "UDP"
        if self.protocol == IPPROTO_SCTP:
            return SCTP_STATE_NAMES[self.state] if self.state < len(SCTP_STATE_NAMES) else "ERR!"
        return "NONE"

    def client(self) -> str:
        return format_endpoint(self.af, self.caddr, self.cport)

    def virtual(self) -> str:
        return format_endpoint(self.af, self.vaddr, self.vport)

    def real(self) -> str:
        return format_endpoint(self.daf, self.daddr, self.dport)

    def __repr__(self) -> str:
        kind = "Tpl" if self.is_template else "Conn"
        return f"{kind}({self.client()} -> {self.virtual()} -> {self.real()} {self.state_name()})"


class PeConn(Conn):
    """An entry keyed by a persistence engine (``--pe sip``, see
    :mod:`lvs.pe_sip`): it carries the engine's name and data (the SIP
    Call-ID), which ``-L -c --persistent-conn`` and /proc/net/ip_vs_conn
    show.  Plain entries do not pay for the extra fields.

    With PE data, the entry is hashed as the kernel's ``ip_vs_conn_hash``
    hashes it (``pe->hashkey_raw``: by the data alone): ``key`` is then
    :func:`lvs.pe_sip.pe_key` of the data, and the client endpoint is kept
    packed in ``ckey`` for the properties below.  Without data it is keyed
    like any entry."""

    __slots__ = ("_pe_data", "_pe_name", "ckey")

    def __init__(self, *args: Any, pe_name: str = "", pe_data: bytes = b"", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pe_name = pe_name
        self._pe_data = pe_data
        #: the client endpoint packed as :func:`client_key` does
        self.ckey = self.key
        if pe_data:
            self.key = pe_key(pe_data)

    @property
    def pe_name(self) -> str:
        return self._pe_name

    @property
    def pe_data(self) -> bytes:
        return self._pe_data

    @property
    def af(self) -> int:
        return AF_INET6 if self.ckey & 1 else AF_INET

    @property
    def protocol(self) -> int:
        return (self.ckey >> 1) & 0xFF

    @property
    def cport(self) -> int:
        return (self.ckey >> 9) & 0xFFFF

    @property
    def caddr(self) -> int:
        return self.ckey >> 25


class ConnView:
    """A copy of an entry held in another table: a ``lvsd --workers`` process
    keeps its own connection table, and the main process lists the workers'
    entries beside its own, as one director's ``/proc/net/ip_vs_conn`` would
    show them all.  It has what the listings read (the endpoints, state name,
    flags, timer), nothing the packet path needs.  Build it with
    :meth:`from_row` from :func:`conn_row`'s list."""

    __slots__ = (
        "af",
        "caddr",
        "cport",
        "daddr",
        "daf",
        "dport",
        "expires",
        "flags",
        "fwmark",
        "pe_data",
        "pe_name",
        "protocol",
        "state",
        "timeout",
        "vaddr",
        "vport",
    )

    def __init__(self, row: list[Any], now: float) -> None:
        (
            self.af,
            self.protocol,
            self.caddr,
            self.cport,
            self.vaddr,
            self.vport,
            self.daf,
            self.daddr,
            self.dport,
            self.state,
            left,
            self.timeout,
            self.flags,
            self.fwmark,
            self.pe_name,
            pe_data,
        ) = row
        for name in ("af", "protocol", "caddr", "cport", "vaddr", "vport", "daf", "daddr", "dport", "flags"):
            if not isinstance(getattr(self, name), int):
                raise TypeError(f"{name} must be an integer")
        if not all(isinstance(v, str) for v in (self.state, self.pe_name, pe_data)):
            raise TypeError("state, pe_name and pe_data must be strings")
        #: the remaining time is carried, not the other table's clock
        self.expires = now + float(left)
        self.pe_data = pe_data.encode("latin-1")

    @classmethod
    def from_row(cls, row: list[Any], now: float) -> ConnView:
        """Raises TypeError/ValueError for a row that is not :func:`conn_row`'s."""
        if not isinstance(row, list) or len(row) != 16:
            raise ValueError("a connection row has 16 fields")
        return cls(row, now)

    def state_name(self) -> str:
        return self.state


def conn_row(cp: Conn, now: float) -> list[Any]:
    """An entry as plain data for another process (JSON-safe): the remaining
    time on its timer rather than its expiry time, since each process has
    its own clock."""
    return [
        cp.af,
        cp.protocol,
        cp.caddr,
        cp.cport,
        cp.vaddr,
        cp.vport,
        cp.daf,
        cp.daddr,
        cp.dport,
        cp.state_name(),
        round(cp.expires - now, 3),
        cp.timeout,
        cp.flags,
        cp.fwmark,
        cp.pe_name,
        cp.pe_data.decode("latin-1"),
    ]
