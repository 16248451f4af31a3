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


# ----------------------------------------------------------------------------
# ChainFinder: ConnTable.lookup_in/lookup_out in C, against the Python ones
# ----------------------------------------------------------------------------
ADDRS = st.one_of(
    st.sampled_from([0, 1, 0x0A000001, 0x0A000002, 0xFFFFFFFF]),  # IPv4, incl. the extremes
    st.integers(0, 2**128 - 1),  # IPv6-sized
)
PORTS = st.one_of(st.sampled_from([0, 53, 80, 65535]), st.integers(0, 65535))


@needs_intmap
@settings(max_examples=300, deadline=None)
@given(
    protocol=st.sampled_from([6, 17, 132, 0, 255]),
    af=st.sampled_from([2, 10]),
    caddr=ADDRS,
    cport=PORTS,
)
def test_the_finder_builds_client_key(protocol: int, af: int, caddr: int, cport: int) -> None:
    from lvs.conn import Conn, client_key

    finder = IntMap().finder(Conn, "vaddr", "vport", "flags", 0x1000, "hnext")
    assert finder.key(protocol, af, caddr, cport) == client_key(protocol, af, caddr, cport)


ENTRY = st.tuples(
    st.sampled_from([6, 17]),  # protocol
    st.sampled_from([2, 10]),  # af
    st.sampled_from([0x0A000001, 7, 2**100 + 3]),  # client address
    st.sampled_from([1000, 0, 65535]),  # client port (0: where templates live)
    st.sampled_from([0x0A000064, 0x0A000065]),  # vaddr
    st.sampled_from([80, 443]),  # vport
    st.sampled_from([0xC0A80001, 0xC0A80002]),  # daddr
    st.sampled_from([8080, 80]),  # dport
    st.booleans(),  # template
)


@needs_intmap
@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(ENTRY, max_size=25),
    unhash=st.lists(st.integers(0, 24), max_size=10),
    probes=st.lists(ENTRY, min_size=1, max_size=10),
)
def test_c_lookups_equal_the_python_ones(
    entries: list[tuple[int, ...]], unhash: list[int], probes: list[tuple[int, ...]]
) -> None:
    """The same entries hashed (chains of several, templates among them, some
    unhashed again) into a native table and a dict one: every look-up in
    either direction returns the same entry (or None)."""
    from lvs.conn import Conn
    from lvs.conntab import ConnTable

    tables = [ConnTable(seed=99), ConnTable(native=False)]
    assert type(tables[0]._tab) is IntMap and type(tables[1]._tab) is dict
    made: list[list[Conn]] = []  # per table, in creation order
    for table in tables:
        conns = []
        for protocol, af, caddr, cport, vaddr, vport, daddr, dport, template in entries:
            cp = Conn(af, protocol, caddr, cport, vaddr, vport, af, daddr, dport, 0x1000 if template else 0)
            table.hash(cp)
            conns.append(cp)
        for i in unhash:
            if i < len(conns):
                table.unhash(conns[i])
        made.append(conns)
    native, plain = tables

    def which(table: int, found: Conn | None) -> int | None:
        """The position of the found entry among those created, None for none."""
        return None if found is None else next(i for i, c in enumerate(made[table]) if c is found)

    for protocol, af, caddr, cport, vaddr, vport, daddr, dport, _ in probes + entries:
        assert which(0, native.lookup_in(protocol, af, caddr, cport, vaddr, vport)) == which(
            1, plain.lookup_in(protocol, af, caddr, cport, vaddr, vport)
        )
        assert which(0, native.lookup_out(protocol, af, daddr, dport, caddr, cport)) == which(
            1, plain.lookup_out(protocol, af, daddr, dport, caddr, cport)
        )


@needs_intmap
def test_the_finder_rejects_what_is_not_a_slot() -> None:
    from lvs.conn import Conn

    with pytest.raises(TypeError, match="is not a __slots__ attribute"):
        IntMap().finder(Conn, "vaddr", "caddr", "flags", 0x1000, "hnext")  # caddr is a property
    with pytest.raises(AttributeError):
        IntMap().finder(Conn, "vaddr", "nope", "flags", 0x1000, "hnext")
    m = IntMap()
    find = m.finder(Conn, "vaddr", "vport", "flags", 0x1000, "hnext")
    with pytest.raises(TypeError, match="expected"):
        find(6, 2, 1, 2)
    m[(((1 << 16) | 2) << 9) | (6 << 1)] = "not an entry"
    with pytest.raises(TypeError, match="a str in the chain"):
        find(6, 2, 1, 2, 3, 4)
