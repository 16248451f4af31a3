"""The DR/TUN fast path's entry type and frame layouts (used by
:meth:`forwarding.dr.DirectPlane.process_block`, which stays in
:mod:`forwarding.dr` so that the per-packet loop reads these as its own
module globals).

Once the core has decided a flow, an established IPv4 flow's later packets
(UDP; TCP segments with ACK and without SYN/FIN/RST on an ESTABLISHED entry)
are forwarded from a table keyed by the raw address and port bytes of the
frame (:data:`_FAST_KEY`): header checks as ``ip_rcv`` makes them, TTL and
checksum patched, the prepared Ethernet header (DR) or Ethernet + outer IPIP
header (TUN) in front, one ``send``.  Their counters, timeout and timer go
to the core in batches (``account_in``).  New flows, TCP flag changes, ICMP
answers, fragments, IP options, IPv6, GUE and GRE all stay on the slow path.
"""

from __future__ import annotations

import struct

from . import packet as P


class _Fast:
    """A fast-path entry: one established flow (IPv4, no IP options, TCP or
    UDP), the connection entry it belongs to and its prepared output (see
    :meth:`forwarding.dr.DirectPlane.process_block`).  ``n``/``b`` are the packets and
    bytes forwarded since the last flush into the core's counters."""

    __slots__ = ("addrs", "addrsum", "b", "cp", "dest", "l2", "maxlen", "minsnap", "n", "proto", "send",
                 "tun", "unpack")  # fmt: skip

    def __init__(self) -> None:
        self.n = 0
        self.b = 0


#: the fast path's view of a frame, from the ethertype (offset 12) to the IPv4
#: header checksum (the identification skipped), then the UDP length (offset
#: 38) or the TCP data offset and flags (offset 46)
_FAST_UDP = struct.Struct("!HBBH2xHBBH12xH")
_FAST_TCP = struct.Struct("!HBBH2xHBBH20xH")
#: sockaddr_ll's ifindex (at SLL_IFINDEX_OFF in a ring frame)
_IFINDEX = struct.Struct("<i")
#: TTL, protocol, header checksum (IPv4 offsets 8..12)
_TTL_CSUM = struct.Struct("!BBH")
#: an outer IPv4 header (IPIP) with its 8 address bytes
_OUTER4 = struct.Struct("!BBHHHBBH8s")
#: the fast-path key: the frame's bytes 26..38 (addresses and ports)
_FAST_KEY = struct.Struct("!IIHH")
_TCP_ES_ACK_MASK = P.TCP_SYN | P.TCP_FIN | P.TCP_RST | P.TCP_ACK
FAST_MAX = 1 << 16


__all__ = ["FAST_MAX"]
