"""mh — Maglev hashing (ip_vs_mh.c), after Google's Maglev paper, section 3.4.

The rule, in plain words:

* The lookup table has M = 4093 slots (a prime; ``CONFIG_IP_VS_MH_TAB_INDEX``
  12 picks the fifth of 251, 509, 1021, 2039, 4093, ...).
* Hashes are ``hsiphash`` (SipHash-1-3 on 64-bit kernels, see
  :mod:`schedulers.hashing`) of one u32, ``offset + port + addr`` (wrapping
  at 32 bits; addresses in host order, IPv6 folded by xor of its words,
  ports in host order — the kernel applies ``ntohs``).  The keys are
  **fixed**, not random: key 1 has both words 2654435761, key 2 both words
  2654446892, so every director builds the same table.
* Each real server gets a permutation of the slots: it starts at
  ``H1(addr, port) mod M`` and steps by ``H2(addr, port) mod (M-1) + 1``
  (server address and port, offset 0).
* Weights use ``last_weight``, the latest non-zero weight, so a server edited
  to weight 0 keeps its slots.  With g = gcd of the positive last_weights and
  ``rshift = max(0, fls(max_last_weight / g) - 6)``, a server's *turns* are
  ``(last_weight / g) >> rshift``, raised to 1 if that is 0 but last_weight
  is not; a server that never had a non-zero weight gets 0 turns (no slots).
* Populate: pass over the list (newest first) again and again; each server
  with turns claims that many slots in a row, each time the next slot of its
  permutation that is still free; stop as soon as all M slots are taken.
  When no server has a positive last_weight the table is emptied.
* Rebuilt on add, delete and edit.  If the service has more than M servers the
  kernel refuses to rebuild (EINVAL): at ``init_service`` (``-E -s mh`` on such
  a service) the scheduler cannot be bound, and in the add/del/edit hooks —
  whose return value the kernel ignores — the **previous table stays in
  force**.  pylvs does the same: the constructor raises ``IPVSError(
  update_service, EINVAL)``, the hooks keep the old table.
* Lookup: slot ``H1(client addr, client port if mh-port else 0) mod M``.  The
  port is taken only for TCP, UDP and SCTP packets (0 otherwise).  The slot's
  server is unavailable when its weight is 0 or below or OVERLOAD is set:

  - without ``mh-fallback`` (SCHED1): no destination (None) — so clients that
    hash onto a quiesced server are dropped;
  - with ``mh-fallback``: for offset 0 … M-1, hash again with
    ``roffset = (offset + slot) mod M`` added into the hashed value and take
    the first available server found; an empty slot ends the search (None).
"""

from __future__ import annotations

import errno
from math import gcd
from typing import TYPE_CHECKING

from lvs.addr import fold, format_ip
from lvs.constants import (
    AF_INET,
    DEST_F_OVERLOAD,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
)
from lvs.errors import OP_EDIT_SERVICE, IPVSError
from lvs.model import SchedContext, Scheduler

from .account import Account, new_account, unusable_reason
from .hashing import make_hsiphash_u32

if TYPE_CHECKING:
    from lvs.model import Dest, Flow, Service

#: table sizes for CONFIG_IP_VS_MH_TAB_INDEX 8..17
PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
TAB_INDEX = 12
TAB_SIZE = PRIMES[TAB_INDEX - 8]  # 4093
#: IP_VS_MH_TAB_BITS: the weight bits a server may keep after the shift
TAB_BITS = TAB_INDEX // 2  # 6

HASH1_KEY = (2654435761, 2654435761)
HASH2_KEY = (2654446892, 2654446892)

#: mh-fallback and mh-port
MH_FALLBACK = SVC_F_SCHED1
MH_PORT = SVC_F_SCHED2

PORT_PROTOCOLS = frozenset((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP))

_hash1 = make_hsiphash_u32(*HASH1_KEY)
_hash2 = make_hsiphash_u32(*HASH2_KEY)

# The keys are constants, so H1(v) mod M never changes: remember it for the
# client keys seen recently (a bounded memo, emptied when full), which spares
# the ~0.5 µs SipHash call for returning clients.
_SLOT_MEMO_MAX = 1 << 16
_slot_memo: dict[int, int] = {}


def _slot(v: int) -> int:
    """``H1(v) mod M`` for a u32 ``v``, memoised."""
    slot = _slot_memo.get(v)
    if slot is None:
        if len(_slot_memo) >= _SLOT_MEMO_MAX:
            _slot_memo.clear()
        slot = _slot_memo[v] = _hash1(v) % TAB_SIZE
    return slot


def _unavailable(dest: Dest) -> bool:
    return dest.weight <= 0 or bool(dest.flags & DEST_F_OVERLOAD)


class MHScheduler(Scheduler):
    """Maglev hashing: consistent, weighted, identical on every director."""

    name = "mh"
    watches_counts = False

    def __init__(self, svc: Service, ctx: SchedContext) -> None:
        super().__init__(svc, ctx)
        self._v4 = svc.af == AF_INET
        self._af = svc.af
        self._lookup: list[Dest | None] = [None] * TAB_SIZE
        self._gcd = 0
        self._rshift = 0
        self._dirty = False
        if not self._reassign():
            raise IPVSError(OP_EDIT_SERVICE, errno.EINVAL, f"mh: more than {TAB_SIZE} real servers")

    # -- table building ------------------------------------------------------
    def _dest_key(self, dest: Dest) -> int:
        """A server's address folded the way the kernel folds it: by the
        *service's* family.  A mixed-family (tunnelled) server is read through
        the address union: an IPv4 server of an IPv6 service folds to its own
        address (the other words are zero), an IPv6 server of an IPv4 service
        contributes only its first 32-bit word."""
        if dest.af == self._af:
            return dest.addr if self._v4 else fold(self._af, dest.addr)
        if self._v4:
            return (dest.addr >> 96) & 0xFFFFFFFF
        return dest.addr & 0xFFFFFFFF

    def _weights(self) -> None:
        """gcd of the positive last_weights and the shift that keeps turns small."""
        g = 0
        mw = 0
        for dest in self.svc.destinations:
            w = dest.last_weight
            if w > 0:
                g = gcd(w, g) if g > 0 else w
            if w > mw:
                mw = w
        self._gcd = g
        if g < 1:
            self._rshift = 0
        else:
            self._rshift = max(0, (mw // g).bit_length() - TAB_BITS)

    def _reassign(self) -> bool:
        """Recompute gcd/shift and rebuild; False (table untouched) past M servers."""
        self._weights()
        dests = self.svc.destinations
        if len(dests) > TAB_SIZE:
            return False
        if self._gcd < 1:
            self._lookup = [None] * TAB_SIZE
            return True
        m = TAB_SIZE
        g = self._gcd
        rshift = self._rshift
        # Each server's permutation: (next position, skip, turns).
        perm: list[int] = []
        skip: list[int] = []
        turns: list[int] = []
        for dest in dests:
            v = (dest.port + self._dest_key(dest)) & 0xFFFFFFFF
            perm.append(_hash1(v) % m)
            skip.append(_hash2(v) % (m - 1) + 1)
            lw = dest.last_weight
            t = (lw // g) >> rshift
            turns.append(t if t else (1 if lw != 0 else 0))
        lookup: list[Dest | None] = [None] * m
        taken = bytearray(m)
        n = 0
        count = len(dests)
        while n < m:
            for i in range(count):
                t = turns[i]
                if t < 1:
                    continue
                dest = dests[i]
                c = perm[i]
                s = skip[i]
                for _ in range(t):
                    while taken[c]:
                        c += s
                        if c >= m:
                            c -= m
                    taken[c] = 1
                    lookup[c] = dest
                    n += 1
                    if n == m:
                        break
                perm[i] = c
                if n == m:
                    break
        self._lookup = lookup
        return True

    # The kernel rebuilds the table in every hook.  The table depends only on
    # the list at rebuild time, so rebuilding once before the next decision
    # gives the same answers at a fraction of the cost during a bulk -R
    # (10,000 -a lines would otherwise rebuild 10,000 tables).  One corner
    # differs: a service that went past 4093 servers keeps the table of the
    # last list pylvs rebuilt, which may be older than the kernel's.
    def add_dest(self, dest: Dest) -> None:
        self._dirty = True

    def del_dest(self, dest: Dest, index: int) -> None:
        self._dirty = True

    def upd_dest(self, dest: Dest) -> None:
        self._dirty = True

    @property
    def gcd(self) -> int:
        """gcd of the positive last weights (after any pending rebuild)."""
        self._refresh()
        return self._gcd

    @property
    def rshift(self) -> int:
        """How far weights are shifted to keep turns small."""
        self._refresh()
        return self._rshift

    @property
    def lookup(self) -> list[Dest | None]:
        """The current table (rebuilt first if the list changed)."""
        self._refresh()
        return self._lookup

    def _refresh(self) -> None:
        if self._dirty:
            self._dirty = False
            self._reassign()

    # -- lookup ----------------------------------------------------------------
    def slot_of(self, addr: int, port: int = 0, offset: int = 0) -> int:
        """The slot a client address (and port) hashes to, with an optional offset."""
        if not self._v4:
            addr = fold(self._af, addr)
        return _hash1((offset + port + addr) & 0xFFFFFFFF) % TAB_SIZE

    def schedule(self, flow: Flow, now: float) -> Dest | None:
        if self._dirty:
            self._refresh()
        flags = self.svc.flags
        addr = flow.caddr
        if not self._v4:
            addr = fold(self._af, addr)
        if flags & MH_PORT and flow.protocol in PORT_PROTOCOLS:
            addr = (addr + flow.cport) & 0xFFFFFFFF
        ihash = _slot_memo.get(addr)
        if ihash is None:
            ihash = _slot(addr)
        lookup = self._lookup
        dest = lookup[ihash]
        if dest is None:
            return None
        if dest.weight > 0 and not dest.flags & DEST_F_OVERLOAD:
            return dest
        if not flags & MH_FALLBACK:
            return None
        for offset in range(TAB_SIZE):
            roffset = offset + ihash
            if roffset >= TAB_SIZE:
                roffset -= TAB_SIZE
            dest = lookup[_hash1((roffset + addr) & 0xFFFFFFFF) % TAB_SIZE]
            if dest is None:
                return None
            if not _unavailable(dest):
                return dest
        return None

    def done(self) -> None:
        self._lookup = [None] * TAB_SIZE

    def account(self, flow: Flow, now: float) -> Account:
        """The client's slot, its owner in the Maglev table and the fallback
        probes, as data; each server's turns and slot count."""
        self._refresh()
        flags = self.svc.flags
        addr = flow.caddr if self._v4 else fold(self._af, flow.caddr)
        port = flow.cport if flags & MH_PORT and flow.protocol in PORT_PROTOCOLS else 0
        value = (addr + port) & 0xFFFFFFFF
        ihash = _slot(value)
        lookup = self._lookup
        dest = lookup[ihash]
        cached = getattr(self, "_owned", None)
        if cached is None or cached[0] is not lookup:
            owned: dict[str, int] = {}
            for d in lookup:
                if d is not None:
                    owned[d.endpoint()] = owned.get(d.endpoint(), 0) + 1
            self._owned = cached = (lookup, owned)  # counted once per table
        owned = dict(cached[1])
        acc = new_account(
            self,
            address=format_ip(flow.af, flow.caddr),
            port=port,
            hash_input=value,
            slot=ihash,
            table_size=TAB_SIZE,
            gcd=self._gcd,
            rshift=self._rshift,
            slots_owned=owned,
            owner=None if dest is None else dest.endpoint(),
            fallback=bool(flags & MH_FALLBACK),
            probes=[],
        )
        if dest is None:
            acc["refused"] = "the table is empty"
            return acc
        reason = unusable_reason(dest)
        if reason is None:
            acc["chosen"] = dest.endpoint()
            return acc
        if not flags & MH_FALLBACK:
            acc["refused"] = f"{dest.endpoint()} is {reason}; no mh-fallback"
            return acc
        for offset in range(TAB_SIZE):
            roffset = (offset + ihash) % TAB_SIZE
            slot = _hash1((roffset + value) & 0xFFFFFFFF) % TAB_SIZE
            probe = lookup[slot]
            why = "empty slot" if probe is None else unusable_reason(probe)
            acc["probes"].append(
                {"offset": offset, "roffset": roffset, "slot": slot, "owner": probe and probe.endpoint(),
                 "reason": why}
            )
            if probe is None:
                acc["refused"] = "a probe met an empty slot"
                return acc
            if why is None:
                acc["chosen"] = probe.endpoint()
                return acc
        acc["refused"] = "every probed server is unavailable"
        return acc

    def explain(self) -> str:
        self._refresh()
        counts: dict[str, int] = {}
        for dest in self._lookup:
            if dest is not None:
                key = dest.endpoint()
                counts[key] = counts.get(key, 0) + 1
        layout = ", ".join(f"{k}×{v}" for k, v in counts.items()) or "empty"
        return f"mh: M={TAB_SIZE} gcd={self._gcd} rshift={self._rshift}: {layout}"


SCHEDULER = MHScheduler
