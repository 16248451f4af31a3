"""The kernel's memory defence (lvs/defense.py) and the sysctl rules
(lvs/sysctl.py), pure."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvs.conn import TCP_S_SYN_RECV
from lvs.constants import IPPROTO_UDP
from lvs.core import DROP, FORWARD
from lvs.defense import Defense
from lvs.sysctl import INT_MAX, INT_MIN, SysctlError, Sysctls, check_value
from tests.corelab import CLIENT, Lab


def test_drop_packet_auto_mode_follows_memory_as_update_defense_level() -> None:
    s, d = Sysctls(amemthresh=1000, drop_packet=1), Defense()
    d.update(s, 5000)
    assert (s.drop_packet, d.drop_rate) == (1, 0)
    d.update(s, 750)  # short of memory: rate = 1000 / (1000 - 750) = 4
    assert (s.drop_packet, d.drop_rate) == (2, 4)
    assert [d.todrop() for _ in range(8)] == [False, False, False, True] * 2
    d.update(s, 2000)
    assert (s.drop_packet, d.drop_rate) == (1, 0)
    s.drop_packet, s.am_droprate = 3, 10
    d.update(s, 5000)
    assert d.drop_rate == 10 and sum(d.todrop() for _ in range(100)) == 10


def test_drop_entry_and_secure_tcp_modes() -> None:
    s, d = Sysctls(amemthresh=1000, drop_entry=1, secure_tcp=1), Defense()
    d.update(s, 10)
    assert (s.drop_entry, d.dropentry, s.secure_tcp) == (2, True, 2)
    d.update(s, 10_000)
    assert (s.drop_entry, d.dropentry, s.secure_tcp) == (1, False, 1)
    s.drop_entry = 3
    d.update(s, 10_000)
    assert d.dropentry and s.drop_entry == 3


def test_director_drops_new_connections_at_the_rate_but_not_established_ones() -> None:
    lab = Lab(proto=IPPROTO_UDP, port=53)
    lab.sysctl.drop_packet, lab.sysctl.am_droprate = 3, 2
    lab.d.defense.update(lab.sysctl, 1 << 30)
    verdicts = [lab.d.process_in(_udp(CLIENT + i), 0.0, 0, 10).action for i in range(6)]
    # mode 3 sets drop_rate alone; drop_counter starts at 0, so the first goes
    assert verdicts == [DROP, FORWARD] * 3
    # a flow with an entry is not "new": never dropped
    assert all(lab.d.process_in(_udp(CLIENT + 1), 1.0, 0, 10).action == FORWARD for _ in range(4))
    assert lab.d.defense_drops == 3


def test_random_dropentry_drops_half_open_tcp_and_idle_udp() -> None:
    lab = Lab(port=80)
    for i in range(64):
        lab.d.process_in(_tcp(CLIENT + i), 0.0, 0x02, 0)  # SYN: SYN_RECV
    assert all(cp.state == TCP_S_SYN_RECV for cp in lab.d.conns)
    lab.d.defense.dropentry = True
    dropped = sum(lab.d.random_dropentry(1.0, random.Random(i)) for i in range(40))
    assert dropped > 0 and len(lab.d.conns) == 64 - dropped


def _udp(caddr: int) -> object:
    from lvs.model import Flow
    from tests.corelab import VIP

    return Flow(2, IPPROTO_UDP, caddr, 4000, VIP, 53)


def _tcp(caddr: int) -> object:
    from lvs.model import Flow
    from tests.corelab import VIP

    return Flow(2, 6, caddr, 4000, VIP, 80)


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_int_sysctls_take_exactly_the_ints_proc_dointvec_takes(n: int) -> None:
    if INT_MIN <= n <= INT_MAX:
        assert check_value("expire_nodest_conn", str(n)) == n
    else:
        with pytest.raises(SysctlError):
            check_value("expire_nodest_conn", str(n))


@pytest.mark.parametrize(
    ("name", "text", "ok"),
    [("drop_packet", "3", True), ("drop_packet", "4", False), ("drop_packet", "-1", False),
     ("sync_ports", "8", True), ("sync_ports", "6", False), ("sync_ports", "0", False),
     ("sync_version", "2", False), ("sync_retries", "3", True), ("sync_qlen_max", "-1", False),
     ("lblc_expiration", str(INT_MAX // 250), True), ("lblc_expiration", str(INT_MAX // 250 + 1), False),
     ("expire_nodest_conn", "1 junk", True), ("expire_nodest_conn", "0x10", False),
     ("expire_nodest_conn", "", False), ("expire_nodest_conn", "١", False)],
)  # fmt: skip
def test_sysctl_ranges_follow_the_proc_handlers(name: str, text: str, ok: bool) -> None:
    if ok:
        check_value(name, text)
    else:
        with pytest.raises(SysctlError):
            check_value(name, text)


@pytest.mark.parametrize("name", ["__class__", "__dict__", "names", "set", "get", "sync_period"])
def test_only_known_sysctls_answer(name: str) -> None:
    s = Sysctls()
    with pytest.raises(KeyError):
        s.get(name)
    with pytest.raises(KeyError):
        s.set(name, "1")
