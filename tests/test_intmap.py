"""lvs._intmap.IntMap, the connection table's hash map, against a dict.

A hypothesis state machine runs random inserts, overwrites, deletions (one
by one and in bulk, so the table grows and deletion shifts whole probe
clusters back), look-ups and clears on an IntMap and on a dict model,
with keys inside and outside the inline range [0, 2**64); after every step
both must hold the same pairs.  Reference counts and the cyclic GC are
checked on their own.
"""

from __future__ import annotations

import gc
import shutil
import sys
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

try:
    from lvs._intmap import IntMap
except ImportError:  # pragma: no cover - depends on the install
    IntMap = None  # type: ignore[assignment,misc]


def test_the_extension_is_built_where_it_can_be() -> None:
    """Without a C compiler the table falls back to a dict (and this file
    has nothing to test); with one, the install must have built IntMap."""
    if IntMap is None:
        if shutil.which("cc") or shutil.which("gcc"):
            pytest.fail("a C compiler is here but lvs._intmap was not built (make venv)")
        pytest.skip("no C compiler: lvs._intmap is not built, the connection table is a dict")


needs_intmap = pytest.mark.skipif(IntMap is None, reason="lvs._intmap is not built (no C compiler)")

KEYS = st.one_of(
    st.integers(0, 40),  # few distinct keys: overwrites, deletions of present keys
    st.integers(0, 2**64 - 1),
    st.integers(2**64 - 3, 2**64 + 3),  # both sides of the inline limit
    st.integers(-(2**70), -1),  # negative: the dict side
    st.integers(2**64, 2**160),  # IPv6-sized client keys
)


class IntMapMachine(RuleBasedStateMachine):
    """An IntMap and a dict, driven alike."""

    @initialize(seed=st.integers(0, 2**64 - 1))
    def setup(self, seed: int) -> None:
        self.m = IntMap(seed=seed)
        self.model: dict[int, object] = {}

    @rule(key=KEYS)
    def put(self, key: int) -> None:
        value = object()
        self.m[key] = value
        self.model[key] = value

    @rule(key=KEYS)
    def delete(self, key: int) -> None:
        if key in self.model:
            del self.m[key]
            del self.model[key]
        else:
            with pytest.raises(KeyError):
                del self.m[key]

    @rule(start=st.integers(0, 2**64 - 5000), n=st.integers(1, 3000), step=st.sampled_from([1, 7, 1 << 20]))
    def put_many(self, start: int, n: int, step: int) -> None:
        """Enough keys to grow the table several times."""
        for i in range(n):
            key = (start + i * step) % 2**64
            self.m[key] = self.model[key] = i

    @rule(fraction=st.floats(0.1, 1.0))
    def delete_many(self, fraction: float) -> None:
        """Many keys, in insertion order: long runs of backward shifts."""
        keys = list(self.model)
        for key in keys[: int(len(keys) * fraction)]:
            del self.m[key]
            del self.model[key]

    @rule(key=KEYS)
    def look_up(self, key: int) -> None:
        assert self.m.get(key) is self.model.get(key)
        sentinel = object()
        assert self.m.get(key, sentinel) is self.model.get(key, sentinel)
        assert (key in self.m) == (key in self.model)
        if key in self.model:
            assert self.m[key] is self.model[key]
        else:
            with pytest.raises(KeyError):
                self.m[key]

    @rule()
    def clear(self) -> None:
        self.m.clear()
        self.model.clear()

    @invariant()
    def same_contents(self) -> None:
        assert len(self.m) == len(self.model)
        assert sorted(self.m.keys()) == sorted(self.model)
        assert sorted(map(id, self.m.values())) == sorted(map(id, self.model.values()))
        assert {k: id(v) for k, v in self.m.items()} == {k: id(v) for k, v in self.model.items()}
        assert sorted(self.m) == sorted(self.model)

    @invariant()
    def load_is_bounded(self) -> None:
        inline = sum(1 for k in self.model if 0 <= k < 2**64)
        cap = self.m.capacity
        assert cap >= 8 and cap & (cap - 1) == 0
        assert inline * 3 <= cap * 2, (inline, cap)  # at most two thirds full: probes stay short


IntMapMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestIntMap = needs_intmap(IntMapMachine.TestCase)


@needs_intmap
def test_reference_counts_are_kept() -> None:
    value = object()
    base = sys.getrefcount(value)
    m = IntMap()
    for i in range(5000):
        m[i * 7919] = value
    m[2**100] = value
    assert sys.getrefcount(value) == base + 5001
    for i in range(0, 5000, 2):
        del m[i * 7919]
    assert sys.getrefcount(value) == base + 2501
    m[7919] = object()  # overwrite drops the old reference
    assert sys.getrefcount(value) == base + 2500
    values = m.values()
    assert sys.getrefcount(value) == base + 2500 * 2
    del values
    m.clear()
    assert sys.getrefcount(value) == base and len(m) == 0
    for i in range(100):
        m[i] = value
    del m
    assert sys.getrefcount(value) == base


@needs_intmap
def test_a_cycle_through_the_map_is_collected() -> None:
    class Holder:
        pass

    h = Holder()
    h.m = IntMap()  # type: ignore[attr-defined]
    h.m[1] = h  # type: ignore[attr-defined]
    h.m[2**90] = h  # type: ignore[attr-defined]
    ref = weakref.ref(h)
    del h
    gc.collect()
    assert ref() is None


@needs_intmap
@pytest.mark.parametrize("key", ["1", 1.0, None, (1,)])
def test_only_int_keys(key: object) -> None:
    m = IntMap()
    with pytest.raises(TypeError, match="IntMap keys are ints"):
        m[key] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        m.get(key)  # type: ignore[arg-type]
    assert len(m) == 0


@needs_intmap
@settings(max_examples=50, deadline=None)
@given(keys=st.sets(st.integers(0, 2**64 - 1), max_size=500), seed_a=st.integers(0, 2**64 - 1))
def test_the_seed_changes_placement_not_contents(keys: set[int], seed_a: int) -> None:
    a, b = IntMap(seed=seed_a), IntMap(seed=seed_a ^ 0x5555)
    for k in keys:
        a[k] = b[k] = k
    assert sorted(a.items()) == sorted(b.items()) == sorted((k, k) for k in keys)
