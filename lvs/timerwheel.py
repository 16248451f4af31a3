"""A lazy timer wheel: expiry costs time proportional to what expires.

Entries are filed in one-second slots by their deadline.  Pushing a deadline
later (the kernel re-arms a connection's timer on every packet) only changes
the entry's ``expires``: when its old slot comes due the entry is filed
again.  Pulling a deadline earlier files the entry in the earlier slot at
once; the copy left in the later slot is recognised as stale (its
``timer_slot`` no longer names that slot) and dropped when that slot comes
due.  A heap of slot numbers finds the next due slot without walking empty
ones, so a clock jump of a day costs nothing extra.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

SLOT = 1.0  # seconds per slot


class TimerWheel:
    """Slots of entries keyed by ``int(expires // SLOT)``.

    An entry is any object with writable ``expires`` (float) and
    ``timer_slot`` (int slot number while filed, else None) attributes.
    """

    __slots__ = ("_count", "_heap", "_names", "_slots")

    def __init__(self) -> None:
        self._slots: dict[int, list[Any]] = {}
        self._names: dict[int, int] = {}
        self._heap: list[int] = []
        self._count = 0

    def __len__(self) -> int:
        """How many entries are armed."""
        return self._count

    def _file(self, entry: Any, slot: int) -> None:
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = [entry]
            self._names[slot] = slot
            heapq.heappush(self._heap, slot)
        else:
            bucket.append(entry)
            # entries of one slot share one int object (32 bytes less each)
            slot = self._names[slot]
        entry.timer_slot = slot

    def arm(self, entry: Any) -> None:
        """(Re)arm ``entry`` for its current ``expires``."""
        slot = int(entry.expires // SLOT)
        current = entry.timer_slot
        if current is None:
            self._count += 1
            self._file(entry, slot)
        elif slot < current:
            self._file(entry, slot)
        # a later deadline is picked up when the current slot comes due

    def discard(self, entry: Any) -> None:
        """Disarm ``entry``; its filed copies become stale."""
        if entry.timer_slot is not None:
            entry.timer_slot = None
            self._count -= 1

    def next_deadline(self) -> float | None:
        """The start of the earliest slot holding entries, or None."""
        return self._heap[0] * SLOT if self._heap else None

    def advance(self, now: float, on_due: Callable[[Any], None], budget: int = -1) -> bool:
        """Disarm and hand to ``on_due`` every entry with ``expires <= now``.

        With ``budget >= 0`` at most that many filed entries are looked at;
        returns True when due work remains (call again soon).  ``on_due`` may
        re-arm the entry.
        """
        heap = self._heap
        slots = self._slots
        limit = int(now // SLOT)
        seen = 0
        while heap and heap[0] <= limit:
            slot = heap[0]
            bucket = slots[slot]
            keep: list[Any] = []
            while bucket:
                if 0 <= budget <= seen:
                    # the unexamined entries stay at the end, popped first next time
                    bucket[:0] = keep
                    return True
                entry = bucket.pop()
                if entry.timer_slot != slot:
                    seen += 1
                    continue  # stale copy
                if entry.expires <= now:
                    seen += 1
                    entry.timer_slot = None
                    self._count -= 1
                    on_due(entry)
                    continue
                new_slot = int(entry.expires // SLOT)
                if new_slot != slot:
                    seen += 1
                    self._file(entry, new_slot)
                else:
                    # due later in the slot that holds ``now``: not work done,
                    # so it does not count against the budget
                    keep.append(entry)
            if keep:
                slots[slot] = keep
                return False
            heapq.heappop(heap)
            del slots[slot]
            del self._names[slot]
        return False
