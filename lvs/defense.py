"""The kernel's defence against memory exhaustion (ip_vs_ctl.c
update_defense_level, run once a second by defense_work_handler; ip_vs.h
ip_vs_todrop; ip_vs_conn.c ip_vs_random_dropentry/todrop_entry).

Once a second the available memory (free + buffers, in pages) is compared
with ``amemthresh``; ``nomem`` is "below it".  Each of ``drop_entry``,
``drop_packet`` and ``secure_tcp`` is a mode: 0 never, 1 automatic (off
now; becomes 2 when memory runs short), 2 automatic (on now; back to 1
when memory is enough), 3 always.  Then:

* drop_packet: drop 1 of every ``drop_rate`` new connections, where
  ``drop_rate = amemthresh / (amemthresh - availmem)`` while short of
  memory (mode 1/2), ``am_droprate`` in mode 3;
* drop_entry: each second, look at 1/32 of the connection table and drop
  half-open TCP entries, established ones older than 60 s with fewer than
  9 incoming packets (at rates 1/1 .. 1/8 by packet count), and such UDP
  entries;
* secure_tcp: the stricter TCP state table while the value is above 1.

Pure: memory and randomness come in; lvsd reads /proc/meminfo (userspace
has no si_meminfo: MemFree + Buffers, as the kernel counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .sysctl import Sysctls

#: todrop_entry's rates by incoming packet count 0..8 (1: every one)
TODROP_RATE = (0, 1, 2, 3, 4, 5, 6, 7, 8)


@dataclass
class Defense:
    """The defence state of one namespace."""

    dropentry: bool = False
    drop_rate: int = 0
    drop_counter: int = 0
    nomem: bool = False
    _todrop_counter: list[int] = field(default_factory=lambda: [0] * 9)

    def update(self, sysctl: Sysctls, availmem: int) -> list[str]:
        """update_defense_level: returns what changed, for the log."""
        changes: list[str] = []
        nomem = availmem < sysctl.amemthresh
        if nomem != self.nomem:
            changes.append(f"available memory {availmem} pages is {'below' if nomem else 'above'} "
                           f"amemthresh {sysctl.amemthresh}")  # fmt: skip
        self.nomem = nomem
        mode = sysctl.drop_entry
        if mode == 0:
            self.dropentry = False
        elif mode in (1, 2):
            self.dropentry = nomem
            sysctl.drop_entry = 2 if nomem else 1
        else:
            self.dropentry = True
        mode = sysctl.drop_packet
        if mode == 0:
            self.drop_rate = 0
        elif mode in (1, 2):
            if nomem:
                self.drop_rate = self.drop_counter = sysctl.amemthresh // max(1, sysctl.amemthresh - availmem)
                sysctl.drop_packet = 2
            else:
                self.drop_rate = 0
                sysctl.drop_packet = 1
        else:
            self.drop_rate = sysctl.am_droprate
        mode = sysctl.secure_tcp
        if mode in (1, 2):
            sysctl.secure_tcp = 2 if nomem else 1
        return changes

    def todrop(self) -> bool:
        """ip_vs_todrop: drop this new connection?"""
        if not self.drop_rate:
            return False
        self.drop_counter -= 1
        if self.drop_counter > 0:
            return False
        self.drop_counter = self.drop_rate
        return True

    def todrop_entry(self, in_pkts: int, age_beyond_60s: bool) -> bool:
        """todrop_entry: drop an established (or UDP) entry seen this many
        incoming packets, which has lasted 60 s or more?"""
        if not age_beyond_60s or not 0 <= in_pkts <= 8:
            return False
        rate = TODROP_RATE[in_pkts]
        if not rate:
            return False
        self._todrop_counter[in_pkts] -= 1
        if self._todrop_counter[in_pkts] > 0:
            return False
        self._todrop_counter[in_pkts] = rate
        return True
