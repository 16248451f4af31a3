"""IP fragments on the DR/TUN plane.  The kernel reassembles before IPVS;
here the first fragment (which has the ports) takes the decision and every
fragment of the datagram is forwarded the same way, on its own.  Later
fragments that arrive first wait (bounded, ``FRAG_TIMEOUT`` like
``ipfrag_time``)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from lvs.core import FORWARD

from . import packet
from .dr_xmit import PlaneStats
from .packet import (
    P_AF,
    P_DADDR,
    P_FRAG,
    P_FRAGID,
    P_PROTO,
    P_SADDR,
)

FRAG_TIMEOUT = 30.0
FRAG_MAX_KEYS = 1024
FRAG_MAX_HELD = 64


@dataclass(slots=True)
class FragState:
    """One datagram's fragments: the decision of its first one, and later
    ones that came before it."""

    expires: float
    decided: bool = False
    conn: Any = None
    held: list[tuple[bytes, int, int]] = field(default_factory=list)


class Fragments:
    """The fragment half of :class:`forwarding.dr.DirectPlane`."""

    stats: PlaneStats
    _frags: collections.OrderedDict[tuple[int, int, int, int, int], FragState]
    _t: float

    def _fragment(
        self, buf: Any, start: int, end: int, p: packet.Parsed, ifindex: int, status: int, fwmark: int = 0
    ) -> None:
        st = self.stats
        st.fragments += 1
        key = (p[P_AF], p[P_PROTO], p[P_SADDR], p[P_DADDR], p[P_FRAGID])
        fs = self._frags.get(key)
        if fs is None:
            if len(self._frags) >= FRAG_MAX_KEYS:
                self._frags.popitem(last=False)
            fs = self._frags[key] = FragState(self._t + FRAG_TIMEOUT)
        if p[P_FRAG] == packet.FRAG_FIRST:
            if fs.decided:
                return  # duplicate first fragment
            fs.decided = True
            v = self._decide(buf, start, p, ifindex, status, fwmark)
            fs.conn = v.conn if v.action == FORWARD else None
            held, fs.held = fs.held, []
            for frame, fifx, fst in held:
                self._frag_out(fs, frame, fifx, fst)
            return
        if not fs.decided:
            if len(fs.held) < FRAG_MAX_HELD:
                fs.held.append((bytes(buf[start:end]), ifindex, status))
            return
        self._frag_out(fs, bytes(buf[start:end]), ifindex, status)

    def _frag_out(self, fs: FragState, frame: bytes, ifindex: int, status: int) -> None:
        if fs.conn is None:
            return
        p = packet.parse_frame(frame)
        if p is None:
            return
        self._forward(fs.conn, frame, 0, p, ifindex, status)

    def _expire_frags(self, now: float) -> None:
        while self._frags:
            key, fs = next(iter(self._frags.items()))
            if fs.expires > now:
                break
            del self._frags[key]
