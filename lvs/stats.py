"""Counters and the kernel's rate estimator (ip_vs_est.c).

Every service, real server and the whole table keep five counters: new
connections, packets and bytes in each direction.  Every 2 seconds the
estimator folds the growth of each counter into an exponentially weighted
moving average with weight 1/4: connection and packet rates are kept scaled
by 2^10 per second, byte rates by 2^5, and read back with rounding.
"""

from __future__ import annotations

ESTIMATOR_PERIOD = 2.0  # seconds between two estimator runs


class Stats:
    """Five counters plus their estimator state (``struct ip_vs_stats``)."""

    __slots__ = (
        "_cps",
        "_inbps",
        "_inpps",
        "_last",
        "_outbps",
        "_outpps",
        "conns",
        "inbytes",
        "inpkts",
        "outbytes",
        "outpkts",
    )

    def __init__(self) -> None:
        self.conns = 0
        self.inpkts = 0
        self.outpkts = 0
        self.inbytes = 0
        self.outbytes = 0
        self._last = (0, 0, 0, 0, 0)
        self._cps = self._inpps = self._outpps = 0
        self._inbps = self._outbps = 0

    def add(self, inpkts: int, inbytes: int, outpkts: int, outbytes: int) -> None:
        """Count traffic in both directions."""
        self.inpkts += inpkts
        self.inbytes += inbytes
        self.outpkts += outpkts
        self.outbytes += outbytes

    def zero(self) -> None:
        """``ipvsadm -Z``: counters and rates start again from zero."""
        self.conns = self.inpkts = self.outpkts = self.inbytes = self.outbytes = 0
        self._last = (0, 0, 0, 0, 0)
        self._cps = self._inpps = self._outpps = 0
        self._inbps = self._outbps = 0

    def estimate(self) -> None:
        """One estimator run; call every :data:`ESTIMATOR_PERIOD` seconds."""
        lc, lip, lop, lib, lob = self._last
        rate = (self.conns - lc) << 9
        self._cps += (rate - self._cps) >> 2
        rate = (self.inpkts - lip) << 9
        self._inpps += (rate - self._inpps) >> 2
        rate = (self.outpkts - lop) << 9
        self._outpps += (rate - self._outpps) >> 2
        rate = (self.inbytes - lib) << 4
        self._inbps += (rate - self._inbps) >> 2
        rate = (self.outbytes - lob) << 4
        self._outbps += (rate - self._outbps) >> 2
        self._last = (self.conns, self.inpkts, self.outpkts, self.inbytes, self.outbytes)

    @property
    def cps(self) -> int:
        return (self._cps + 0x1FF) >> 10

    @property
    def inpps(self) -> int:
        return (self._inpps + 0x1FF) >> 10

    @property
    def outpps(self) -> int:
        return (self._outpps + 0x1FF) >> 10

    @property
    def inbps(self) -> int:
        return (self._inbps + 0xF) >> 5

    @property
    def outbps(self) -> int:
        return (self._outbps + 0xF) >> 5

    def counters(self) -> tuple[int, int, int, int, int]:
        return (self.conns, self.inpkts, self.outpkts, self.inbytes, self.outbytes)

    def rates(self) -> tuple[int, int, int, int, int]:
        return (self.cps, self.inpps, self.outpps, self.inbps, self.outbps)
