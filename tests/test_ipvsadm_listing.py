"""ipvsadm listings, save format and /proc files against the golden captures of
the real ipvsadm 1.31 and kernel (tests/data/golden/, commands in golden.scn).

The golden configuration is rebuilt through the IPVS admin API; the traffic of
the scenario is stood in for by hand-made connection entries, counters and
rates with the values the real kernel showed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvs.addr import format_ip, parse_ip
from lvs.conn import (
    CTPL_S_ASSURED,
    CTPL_S_NONE,
    TCP_S_CLOSE,
    TCP_S_ESTABLISHED,
    TCP_S_TIME_WAIT,
    Conn,
    PeConn,
)
from lvs.conntab import ConnTable
from lvs.constants import (
    AF_INET,
    AF_INET6,
    CONN_F_DROUTE,
    CONN_F_MASQ,
    CONN_F_SYNC,
    CONN_F_TEMPLATE,
    CONN_F_TUNNEL,
    IPPROTO_IP,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    SVC_F_SCHED3,
    TUN_TYPE_GRE,
    TUN_TYPE_GUE,
    TUN_TYPE_IPIP,
)
from lvs.ctl import IPVS, DestSpec, ServiceSpec, SyncDaemon, unicast_dest
from lvs.errors import IPVSError
from lvs.ipvsadm import proc
from lvs.ipvsadm.listing import (
    cmp_dests,
    cmp_services,
    list_conns,
    list_daemons,
    list_services,
    list_timeouts,
    merge_sort,
    print_largenum,
    save_rules,
)
from lvs.ipvsadm.names import FilesResolver, NullResolver
from lvs.ipvsadm.proc import proc_ip_vs, proc_ip_vs_conn, proc_ip_vs_conn_sync, proc_ip_vs_stats
from lvs.json_views import conns_json, services_json
from lvs.model import ServiceKey
from lvs.simulate import Simulation
from lvsd.resolver import files_resolver

GOLDEN = Path(__file__).parent / "data" / "golden"

# What the golden machine's /etc/hosts and /etc/services answer for this setup.
HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
SERVICES = """\
http            80/tcp          www             # WorldWideWeb HTTP
domain          53/tcp                          # Domain Name Server
domain          53/udp
https           443/tcp
https           443/udp
mdns            5353/udp                        # Multicast DNS
"""


def golden(name: str) -> str:
    return (GOLDEN / f"{name}.txt").read_text()


def resolver() -> FilesResolver:
    return FilesResolver(HOSTS, SERVICES)


def v4(text: str) -> int:
    return parse_ip(text)[1]


def v6(text: str) -> int:
    return parse_ip(text)[1]


TCP80 = ServiceKey(AF_INET, IPPROTO_TCP, v4("10.0.0.1"), 80)
UDP53 = ServiceKey(AF_INET, IPPROTO_UDP, v4("10.0.0.2"), 53)
FWM7 = ServiceKey(AF_INET, IPPROTO_IP, 0, 0, 7)
TCP443 = ServiceKey(AF_INET6, IPPROTO_TCP, v6("2001:db8::1"), 443)
TCP9 = ServiceKey(AF_INET, IPPROTO_TCP, v4("10.0.0.9"), 80)


def _dest(ipvs: IPVS, key: ServiceKey, addr: str, port: int, fwd: int, weight: int, **kw: int) -> None:
    af, value = parse_ip(addr)
    ipvs.add_dest(key, DestSpec(af, value, port, fwd=fwd, weight=weight, **kw))


def _set_stats(stats, counters=None, rates=None) -> None:
    if counters is not None:
        stats.conns, stats.inpkts, stats.outpkts, stats.inbytes, stats.outbytes = counters
    if rates is not None:
        cps, inpps, outpps, inbps, outbps = rates
        stats._cps, stats._inpps, stats._outpps = cps << 10, inpps << 10, outpps << 10
        stats._inbps, stats._outbps = inbps << 5, outbps << 5


def _find(ipvs: IPVS, key: ServiceKey, addr: str, port: int):
    af, value = parse_ip(addr)
    dest = ipvs.services[key].find_dest(af, value, port)
    assert dest is not None
    return dest


# The rates the kernel's estimator showed in each capture (they drift with time).
RATES_L = {
    TCP80: (0, 0, 0, 27, 15),
    ("10.1.0.1", 80): (0, 0, 0, 23, 12),
    ("10.1.0.3", 80): (0, 0, 0, 4, 3),
    UDP53: (0, 0, 0, 10, 18),
    ("10.1.0.4", 5353): (0, 0, 0, 5, 9),
    ("10.1.0.5", 53): (0, 0, 0, 5, 9),
}
RATES_EXACT = {
    TCP80: (0, 0, 0, 20, 11),
    ("10.1.0.1", 80): (0, 0, 0, 17, 9),
    ("10.1.0.3", 80): (0, 0, 0, 3, 2),
    UDP53: (0, 0, 0, 8, 13),
    ("10.1.0.4", 5353): (0, 0, 0, 4, 7),
    ("10.1.0.5", 53): (0, 0, 0, 4, 7),
}


def apply_rates(ipvs: IPVS, table: dict) -> None:
    for what, rates in table.items():
        if isinstance(what, ServiceKey):
            _set_stats(ipvs.services[what].stats, rates=rates)
        else:
            key = TCP80 if what[1] == 80 else UDP53
            _set_stats(_find(ipvs, key, *what).stats, rates=rates)


def configure_golden(ipvs: IPVS) -> None:
    """The services and real servers of golden.scn, in its order."""
    ipvs.add_service(ServiceSpec(TCP80, "wlc", SVC_F_PERSISTENT, 300))
    _dest(ipvs, TCP80, "10.1.0.2", 80, CONN_F_DROUTE, 2)
    _dest(ipvs, TCP80, "10.1.0.3", 80, CONN_F_TUNNEL, 1, u_threshold=100, l_threshold=50)
    _dest(ipvs, TCP80, "10.1.0.1", 80, CONN_F_MASQ, 3)
    ipvs.add_service(ServiceSpec(UDP53, "rr", SVC_F_PERSISTENT, 60, v4("255.255.255.0")))
    _dest(ipvs, UDP53, "10.1.0.4", 5353, CONN_F_MASQ, 1)
    _dest(ipvs, UDP53, "10.1.0.5", 53, CONN_F_DROUTE, 2)
    _dest(ipvs, UDP53, "10.1.0.6", 53, CONN_F_TUNNEL, 0)
    ipvs.add_service(ServiceSpec(FWM7, "sh", SVC_F_SCHED1 | SVC_F_SCHED2))
    _dest(ipvs, FWM7, "10.1.0.7", 0, CONN_F_DROUTE, 1)
    _dest(ipvs, FWM7, "10.1.0.8", 0, CONN_F_DROUTE, 4)
    ipvs.add_service(ServiceSpec(TCP443, "mh", SVC_F_SCHED2))
    _dest(ipvs, TCP443, "2001:db8:1::10", 443, CONN_F_MASQ, 1)
    _dest(ipvs, TCP443, "2001:db8:1::11", 8443, CONN_F_MASQ, 2)


def build_golden(phase: str = "main") -> IPVS:
    """The golden.scn configuration (``phase`` "main", "after_errors", "after_zero")
    with the counters, rates and connection entries its traffic left."""
    ipvs = IPVS()
    configure_golden(ipvs)
    # connection counters left by the traffic
    for key, addr, port, active, inact, persist in (
        (TCP80, "10.1.0.1", 80, 1, 1, 1),
        (TCP80, "10.1.0.3", 80, 0, 1, 1),
        (UDP53, "10.1.0.4", 5353, 0, 2, 1),
        (UDP53, "10.1.0.5", 53, 0, 2, 1),
    ):
        d = _find(ipvs, key, addr, port)
        d.activeconns, d.inactconns, d.persistconns = active, inact, persist
    _set_stats(ipvs.services[TCP80].stats, (3, 7, 4, 388, 212))
    _set_stats(_find(ipvs, TCP80, "10.1.0.1", 80).stats, (2, 6, 3, 328, 172))
    _set_stats(_find(ipvs, TCP80, "10.1.0.3", 80).stats, (1, 1, 1, 60, 40))
    _set_stats(ipvs.services[UDP53].stats, (4, 4, 4, 144, 256))
    _set_stats(_find(ipvs, UDP53, "10.1.0.4", 5353).stats, (2, 2, 2, 72, 128))
    _set_stats(_find(ipvs, UDP53, "10.1.0.5", 53).stats, (2, 2, 2, 72, 128))
    _set_stats(ipvs.stats, (7, 11, 8, 532, 468), (0, 0, 0, 21, 18))
    apply_rates(ipvs, RATES_L)

    if phase in ("after_errors", "after_zero"):
        _dest(ipvs, TCP80, "10.1.0.9", 80, CONN_F_MASQ, 70000)
        _dest(ipvs, TCP80, "10.1.0.11", 80, CONN_F_MASQ, 2147483647)
        ipvs.add_service(ServiceSpec(TCP9, "rr", SVC_F_PERSISTENT, 60, v4("255.0.255.0")))
        _dest(ipvs, TCP80, "10.1.0.10", 80, CONN_F_DROUTE, 1)
        # the CLOSE connection to 10.1.0.3 has expired by then
        _find(ipvs, TCP80, "10.1.0.3", 80).inactconns = 0
    if phase == "after_zero":
        ipvs.set_timeouts(901, 121, 301)
        ipvs.zero()
    ipvs.conns = golden_conns()  # type: ignore[attr-defined]
    return ipvs


# (protocol, client, cport, virtual, vport, dest, dport, template, state, seconds left)
GOLDEN_CONNS = (
    (IPPROTO_UDP, "10.2.1.2", 50004, "10.0.0.2", 53, "10.1.0.4", 5353, False, 0, 293),
    (IPPROTO_UDP, "10.2.0.1", 50001, "10.0.0.2", 53, "10.1.0.5", 53, False, 0, 293),
    (IPPROTO_UDP, "10.2.0.9", 50002, "10.0.0.2", 53, "10.1.0.5", 53, False, 0, 293),
    (IPPROTO_TCP, "10.2.0.1", 0, "10.0.0.1", 80, "10.1.0.1", 80, True, CTPL_S_ASSURED, 293),
    (IPPROTO_TCP, "10.2.0.1", 40002, "10.0.0.1", 80, "10.1.0.1", 80, False, TCP_S_TIME_WAIT, 113),
    (IPPROTO_UDP, "10.2.0.0", 0, "10.0.0.2", 53, "10.1.0.5", 53, True, CTPL_S_NONE, 53),
    (IPPROTO_UDP, "10.2.1.1", 50003, "10.0.0.2", 53, "10.1.0.4", 5353, False, 0, 293),
    (IPPROTO_UDP, "10.2.1.0", 0, "10.0.0.2", 53, "10.1.0.4", 5353, True, CTPL_S_NONE, 53),
    (IPPROTO_TCP, "10.2.0.1", 40001, "10.0.0.1", 80, "10.1.0.1", 80, False, TCP_S_ESTABLISHED, 893),
    (IPPROTO_TCP, "10.2.0.2", 40003, "10.0.0.1", 80, "10.1.0.3", 80, False, TCP_S_CLOSE, 3),
    (IPPROTO_TCP, "10.2.0.2", 0, "10.0.0.1", 80, "10.1.0.3", 80, True, CTPL_S_NONE, 293),
)


def make_conn(proto, c, cport, v, vport, d, dport, template, state, left, now=0.0) -> Conn:
    caf, cval = parse_ip(c)
    daf, dval = parse_ip(d)
    cp = Conn(
        caf, proto, cval, cport, parse_ip(v)[1], vport, daf, dval, dport, CONN_F_TEMPLATE if template else 0
    )
    cp.state = state
    cp.expires = now + left + 0.5
    return cp


def golden_conns(skip_closed: bool = False) -> ConnTable:
    table = ConnTable()
    for row in GOLDEN_CONNS:
        if skip_closed and row[8] == TCP_S_CLOSE and not row[7]:
            continue
        table.hash(make_conn(*row))
    return table


def rows(text: str) -> tuple[list[str], Counter]:
    """(header lines, multiset of the other rows)."""
    lines = text.splitlines(keepends=True)
    head = 1 if lines and lines[0].startswith("Pro ") else 2
    return lines[:head], Counter(lines[head:])


def mask_expires_listing(text: str) -> tuple[list[str], Counter]:
    head, body = rows(text)
    return head, Counter(line[:4] + "XX:XX " + line[11:] for line in body.elements())


def mask_expires_proc(text: str) -> tuple[list[str], Counter]:
    head, body = rows(text)
    return head, Counter(line[:58] + "{:>7}".format("X") + line[65:] for line in body.elements())


LIST_ARGS = {
    "numeric": True,
    "stats": False,
    "rate": False,
    "exact": False,
    "thresholds": False,
    "persistent_conn": False,
    "tun_info": False,
    "sort": True,
}


def L(ipvs: IPVS, **kw) -> str:
    args = dict(LIST_ARGS)
    args.update(kw)
    return list_services(ipvs, 0.0, **args)


# -- golden files, byte for byte ----------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("ipvsadm_-L_-n", {}),
        ("ipvsadm_-l_-n", {}),
        ("ipvsadm_-L_-n_--sort", {}),
        ("ipvsadm_-L_-n_--stats", {"stats": True}),
        ("ipvsadm_-L_-n_--exact_--stats", {"stats": True, "exact": True}),
        ("ipvsadm_-L_-n_--rate", {"rate": True}),
        ("ipvsadm_-L_-n_--thresholds", {"thresholds": True}),
        ("ipvsadm_-L_-n_--persistent-conn", {"persistent_conn": True}),
        ("ipvsadm_-L_-n_-t_10.0.0.1_80", {"key": TCP80}),
        ("ipvsadm_-L_-n_-u_10.0.0.2_53_--stats", {"key": UDP53, "stats": True}),
        ("ipvsadm_-L_-n_-f_7", {"key": FWM7}),
    ],
)
def test_golden_listing(name: str, kw: dict) -> None:
    assert L(build_golden(), **kw) == golden(name)


def test_golden_exact_rate() -> None:
    ipvs = build_golden()
    apply_rates(ipvs, RATES_EXACT)
    assert L(ipvs, rate=True, exact=True) == golden("ipvsadm_-L_-n_--exact_--rate")


def test_golden_listing_names() -> None:
    assert L(build_golden(), numeric=False, resolver=resolver()) == golden("ipvsadm_-L")


def test_golden_save() -> None:
    ipvs = build_golden()
    assert save_rules(ipvs, numeric=True) == golden("ipvsadm_-S_-n")
    assert save_rules(ipvs, numeric=False, resolver=resolver()) == golden("ipvsadm_-S")


def test_golden_after_errors() -> None:
    ipvs = build_golden("after_errors")
    assert L(ipvs) == golden("ipvsadm_-L_-n_after_errors")
    assert save_rules(ipvs, numeric=True) == golden("ipvsadm_-S_-n_after_errors")


def test_golden_after_zero() -> None:
    ipvs = build_golden("after_zero")
    assert L(ipvs, stats=True) == golden("ipvsadm_-L_-n_--stats_after_zero")
    assert list_timeouts(ipvs) == golden("ipvsadm_-L_--timeout_after_set")


def test_golden_empty() -> None:
    ipvs = build_golden()
    ipvs.flush()
    assert L(ipvs) == golden("ipvsadm_-L_-n_empty")
    assert save_rules(ipvs, numeric=True) == golden("ipvsadm_-S_-n_empty")


def test_golden_timeouts_and_daemons() -> None:
    ipvs = build_golden()
    assert list_timeouts(ipvs) == golden("ipvsadm_-L_--timeout")
    assert list_daemons(ipvs) == golden("ipvsadm_-L_--daemon")


def test_golden_missing_service() -> None:
    with pytest.raises(IPVSError) as info:
        L(build_golden(), key=ServiceKey(AF_INET, IPPROTO_TCP, v4("10.0.0.99"), 80))
    assert str(info.value) + "\n" == (GOLDEN / "err_missing_service_list.stderr.txt").read_text()


def test_golden_conn_listing() -> None:
    """Same rows in any order (the kernel prints in hash order)."""
    ipvs = build_golden()
    got = list_conns(ipvs, 0.0, numeric=True, persistent_conn=False)
    assert rows(got) == rows(golden("ipvsadm_-L_-c_-n"))


def test_golden_conn_listing_persistent() -> None:
    ipvs = build_golden()
    got = list_conns(ipvs, 0.0, numeric=True, persistent_conn=True)
    assert mask_expires_listing(got) == mask_expires_listing(golden("ipvsadm_-L_-c_-n_--persistent-conn"))


def test_golden_proc_ip_vs() -> None:
    ipvs = build_golden()
    # read after the CLOSE connection to 10.1.0.3 had expired
    _find(ipvs, TCP80, "10.1.0.3", 80).inactconns = 0
    assert proc_ip_vs(ipvs) == golden("proc_net_ip_vs")


def test_golden_proc_ip_vs_stats() -> None:
    assert proc_ip_vs_stats(build_golden()) == golden("proc_net_ip_vs_stats")


def test_golden_proc_ip_vs_conn() -> None:
    ipvs = build_golden()
    ipvs.conns = golden_conns(skip_closed=True)  # type: ignore[attr-defined]
    got = proc_ip_vs_conn(ipvs, 0.0)
    assert mask_expires_proc(got) == mask_expires_proc(golden("proc_net_ip_vs_conn"))
    # the kernel reads 4 s later than ipvsadm -L -c did: every timer is 4 s shorter
    assert rows(proc_ip_vs_conn(ipvs, 4.0)) == rows(golden("proc_net_ip_vs_conn"))


# -- print_largenum ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "        0"),
        (99_999_999, " 99999999"),
        (100_000_000, "  100000K"),
        (999_999_999, "  999999K"),
        (1_000_000_000, "    1000M"),
        (99_999_999_999, "   99999M"),
        (100_000_000_000, "     100G"),
        (99_999_999_999_999, "   99999G"),
        (100_000_000_000_000, "     100T"),
        (2**64 - 1, "18446744T"),
    ],
)
def test_largenum(value: int, text: str) -> None:
    assert print_largenum(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "        0"),
        (12345678, " 12345678"),
        (123456789, " 123456789"),
        (2**64 - 1, " 18446744073709551615"),
    ],
)
def test_largenum_exact(value: int, text: str) -> None:
    assert print_largenum(value, exact=True) == text


# -- sorting ---------------------------------------------------------------------------------
def _svc_ipvs(*addrs: str, proto: int = IPPROTO_TCP) -> IPVS:
    ipvs = IPVS()
    for a in addrs:
        af, value = parse_ip(a)
        ipvs.add_service(ServiceSpec(ServiceKey(af, proto, value, 80), "rr"))
    return ipvs


def _service_lines(text: str) -> list[str]:
    return [line.split()[1] for line in text.splitlines()[3:] if not line.startswith("  ->")]


def test_sort_quirk_services() -> None:
    """10.0.0.1 - 200.0.0.1 wraps to a positive int: 10.0.0.1 sorts last."""
    ipvs = _svc_ipvs("10.0.0.1", "200.0.0.1", "100.0.0.1")
    assert _service_lines(L(ipvs)) == ["100.0.0.1:80", "200.0.0.1:80", "10.0.0.1:80"]
    a, b = (ipvs.services[k] for k in list(ipvs.services)[:2])
    assert cmp_services(a, b) > 0 and cmp_services(b, a) < 0


def test_sort_quirk_is_not_transitive_and_follows_merge_sort() -> None:
    # 10 < 100 < 200 < 10 (wrap): the result depends on the merge order.
    ipvs = _svc_ipvs("200.0.0.1", "10.0.0.1", "100.0.0.1")
    svcs = list(ipvs.services.values())
    got = merge_sort(svcs, cmp_services)
    # split [200] | [10, 100] -> [10, 100]; merge 200 vs 10: 200 < 10 (wrapped) -> 200 first
    assert [format_ip(s.af, s.addr) for s in got] == ["200.0.0.1", "10.0.0.1", "100.0.0.1"]


def test_sort_quirk_dests() -> None:
    ipvs = IPVS()
    ipvs.add_service(ServiceSpec(TCP80, "rr"))
    for a in ("10.1.0.1", "200.1.0.1", "10.1.0.2"):
        _dest(ipvs, TCP80, a, 80, CONN_F_MASQ, 1)
    dests = [line.split()[1] for line in L(ipvs).splitlines() if line.startswith("  ->")][1:]
    assert dests == ["200.1.0.1:80", "10.1.0.1:80", "10.1.0.2:80"]
    d = ipvs.services[TCP80].destinations
    assert cmp_dests(d[0], d[0]) == 0


def test_sort_orders_fwmark_af_protocol_port() -> None:
    ipvs = IPVS()
    for key in (
        ServiceKey(AF_INET, IPPROTO_IP, 0, 0, 3),
        ServiceKey(AF_INET6, IPPROTO_UDP, v6("::1"), 1),
        ServiceKey(AF_INET, IPPROTO_UDP, v4("1.1.1.1"), 1),
        ServiceKey(AF_INET, IPPROTO_TCP, v4("1.1.1.1"), 2),
        ServiceKey(AF_INET, IPPROTO_TCP, v4("1.1.1.1"), 1),
        ServiceKey(AF_INET6, IPPROTO_IP, 0, 0, 3),
    ):
        ipvs.add_service(ServiceSpec(key, "rr"))
    names = [line for line in L(ipvs).splitlines()[3:]]
    assert names == [
        "TCP  1.1.1.1:1 rr",
        "TCP  1.1.1.1:2 rr",
        "UDP  1.1.1.1:1 rr",
        "UDP  [::1]:1 rr",
        "FWM  3 rr",
        "FWM  3 IPv6 rr",
    ]


def test_nosort_is_kernel_order() -> None:
    ipvs = build_golden()
    text = L(ipvs, sort=False)
    lines = text.splitlines()
    # the same bucket order as /proc/net/ip_vs, dests newest first
    assert lines[3] == "UDP  10.0.0.2:53 rr persistent 60 mask 255.255.255.0"
    assert lines[4].startswith("  -> 10.1.0.6:53 ")
    assert lines[7] == "TCP  [2001:db8::1]:443 mh (mh-port)"
    assert lines[10] == "TCP  10.0.0.1:80 wlc persistent 300"
    assert lines[-1].startswith("  -> 10.1.0.7:0 ")
    assert (
        save_rules(ipvs, numeric=True, sort=False).splitlines()[0]
        == "-A -u 10.0.0.2:53 -s rr -p 60 -M 255.255.255.0"
    )


# -- widths, IPv6, flags -------------------------------------------------------------------------
def test_ipv4_truncation_widths() -> None:
    hosts = "10.0.0.1 a-very-long-host-name-for-the-virtual-service.example.org\n" + (
        "10.1.0.1 another-very-long-real-server-name.example.org\n"
    )
    res = FilesResolver(hosts, SERVICES)
    ipvs = IPVS()
    ipvs.add_service(ServiceSpec(TCP80, "rr"))
    _dest(ipvs, TCP80, "10.1.0.1", 80, CONN_F_MASQ, 1)
    lines = L(ipvs, numeric=False, resolver=res).splitlines()
    assert lines[3] == "TCP  a-very-long-host-name-for-th rr"  # "%-4s %s" cut at 33
    assert lines[4] == "  -> another-very-long-real-serve Masq    1      0          0         "
    stats_lines = L(ipvs, numeric=False, resolver=res, stats=True).splitlines()
    assert stats_lines[3].startswith("TCP  a-very-long-host-name-for-th        0")
    # -S never cuts
    assert save_rules(ipvs, numeric=False, resolver=res).splitlines()[1] == (
        "-a -t a-very-long-host-name-for-the-virtual-service.example.org:h "  # 59 characters at most
        "-r another-very-long-real-server-name.example.org:http -m -w 1"
    )


def test_addrport_buffer_is_60_bytes() -> None:
    name = "h" * 70
    res = FilesResolver(f"10.0.0.1 {name}\n", "")
    ipvs = IPVS()
    ipvs.add_service(ServiceSpec(TCP80, "rr"))
    assert save_rules(ipvs, numeric=False, resolver=res) == f"-A -t {'h' * 59} -s rr\n"


def test_ipv6_not_truncated() -> None:
    key = ServiceKey(AF_INET6, IPPROTO_TCP, v6("2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff"), 65535)
    ipvs = IPVS()
    ipvs.add_service(ServiceSpec(key, "wlc", SVC_F_PERSISTENT, 360, 64))
    _dest(ipvs, key, "2001:db8:aaaa:bbbb:cccc:dddd:eeee:1", 65535, CONN_F_MASQ, 1)
    lines = L(ipvs).splitlines()
    assert lines[3] == "TCP  [2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:65535 wlc persistent 360 mask 64"
    assert lines[4] == "  -> [2001:db8:aaaa:bbbb:cccc:dddd:eeee:1]:65535 Masq    1      0          0         "
    stats = L(ipvs, stats=True).splitlines()
    assert (
        stats[3]
        == "TCP  [2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:65535        0        0        0        0        0"
    )
    assert save_rules(ipvs, numeric=True).splitlines()[0] == (
        "-A -t [2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:65535 -s wlc -p 360 -M 64"
    )
    text = proc_ip_vs(ipvs)
    assert "TCP  [2001:0db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:FFFF wlc persistent 90000 40000000\n" in text
    assert (
        "  -> [2001:0db8:aaaa:bbbb:cccc:dddd:eeee:0001]:FFFF      Masq    1      0          0         \n"
        in text
    )


def test_service_options_in_listing_and_save() -> None:
    ipvs = IPVS()
    k1 = ServiceKey(AF_INET, IPPROTO_UDP, v4("10.9.0.1"), 5060)
    ipvs.add_service(
        ServiceSpec(k1, "wrr", SVC_F_PERSISTENT | SVC_F_ONEPACKET | SVC_F_SCHED3, 30, pe_name="sip")
    )
    k2 = ServiceKey(AF_INET6, IPPROTO_IP, 0, 0, 0xFFFFFFFF)
    ipvs.add_service(ServiceSpec(k2, "sh", SVC_F_SCHED3))
    text = L(ipvs)
    assert "UDP  10.9.0.1:5060 wrr (flag-3) persistent 30 pe sip ops\n" in text
    # ipvsadm prints the u32 mark with "%d" (the lab kernel's captures show
    # "FWM  -294967296" for mark 4000000000, and "-A -f -294967296" in -S)
    assert "FWM  -1 IPv6 sh ()\n" in text
    save = save_rules(ipvs, numeric=True)
    assert "-A -u 10.9.0.1:5060 -s wrr -p 30 --pe sip -o -b flag-3\n" in save
    assert "-A -f -1 -6 -s sh -b \n" in save
    assert "UDP  0A090001:13C4 wrr ops  persistent 7500 FFFFFFFF\n" in proc_ip_vs(ipvs)
    assert "FWM  FFFFFFFF sh \n" in proc_ip_vs(ipvs)


def test_tunnel_options() -> None:
    ipvs = IPVS()
    ipvs.add_service(ServiceSpec(TCP80, "rr"))
    _dest(ipvs, TCP80, "10.1.0.1", 80, CONN_F_TUNNEL, 1, tun_type=TUN_TYPE_GUE, tun_port=6080, tun_flags=1)
    _dest(ipvs, TCP80, "10.1.0.2", 80, CONN_F_TUNNEL, 1, tun_type=TUN_TYPE_GRE, tun_flags=2)
    _dest(ipvs, TCP80, "10.1.0.3", 80, CONN_F_TUNNEL, 1, tun_type=TUN_TYPE_IPIP)
    _dest(ipvs, TCP80, "10.1.0.4", 80, CONN_F_MASQ, 1)
    text = L(ipvs, tun_info=True)
    assert text.splitlines()[2] == (
        "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn"
    )
    assert "  -> 10.1.0.1:80                  Tunnel  gue:6080:+c   1      0          0         \n" in text
    assert "  -> 10.1.0.2:80                  Tunnel  gre:r+c       1      0          0         \n" in text
    assert "  -> 10.1.0.3:80                  Tunnel  ipip          1      0          0         \n" in text
    assert "  -> 10.1.0.4:80                  Masq    n/a           1      0          0         \n" in text
    save = save_rules(ipvs, numeric=True)
    assert "-a -t 10.0.0.1:80 -r 10.1.0.1:80 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum\n" in save
    assert "-a -t 10.0.0.1:80 -r 10.1.0.2:80 -i -w 1 --tun-type gre --tun-remcsum\n" in save
    assert "-a -t 10.0.0.1:80 -r 10.1.0.3:80 -i -w 1 --tun-type ipip\n" in save
    assert "-a -t 10.0.0.1:80 -r 10.1.0.4:80 -m -w 1\n" in save
    assert TUN_TYPE_IPIP == 0


def test_sctp_and_fwmark_port_names() -> None:
    ipvs = IPVS()
    key = ServiceKey(AF_INET, IPPROTO_SCTP, v4("10.0.0.5"), 80)
    ipvs.add_service(ServiceSpec(key, "rr"))
    _dest(ipvs, key, "10.1.0.5", 80, CONN_F_MASQ, 1)
    ipvs.add_service(ServiceSpec(FWM7, "rr"))
    _dest(ipvs, FWM7, "10.1.0.7", 80, CONN_F_MASQ, 1)
    res = FilesResolver("", SERVICES + "sctpweb 80/sctp\n")
    text = L(ipvs, numeric=False, resolver=res)
    assert "SCTP 10.0.0.5:sctpweb rr\n" in text
    # a fwmark service is TCP to the kernel, so its real servers' ports are TCP names
    assert "  -> 10.1.0.7:http " in text
    assert "--sctp-service 10.0.0.5:80" in save_rules(ipvs, numeric=True)


def test_local_method_saved_as_g() -> None:
    ipvs = IPVS()
    ipvs.add_service(ServiceSpec(TCP80, "rr"))
    _dest(ipvs, TCP80, "127.0.0.1", 80, 1, 5)  # CONN_F_LOCALNODE
    assert "  -> 127.0.0.1:80                 Local   5 " in L(ipvs)
    assert "-a -t 10.0.0.1:80 -r 127.0.0.1:80 -g -w 5\n" in save_rules(ipvs, numeric=True)
    assert "  -> 127.0.0.1:80 " in L(ipvs, numeric=False, resolver=NullResolver())
    assert "  -> localhost:http " in L(ipvs, numeric=False, resolver=resolver())


# -- connections ----------------------------------------------------------------------------------
def test_conn_listing_names_and_ipv6() -> None:
    ipvs = IPVS()
    table = ConnTable()
    table.hash(
        make_conn(
            IPPROTO_TCP,
            "2001:db8::5",
            40000,
            "2001:db8::1",
            443,
            "2001:db8:1::10",
            443,
            False,
            TCP_S_ESTABLISHED,
            6001,
        )
    )
    plain = make_conn(IPPROTO_UDP, "10.2.0.1", 5060, "10.0.0.2", 53, "127.0.0.1", 53, False, 0, 59)
    cp = PeConn(
        plain.af, plain.protocol, plain.caddr, plain.cport, plain.vaddr, plain.vport,
        plain.daf, plain.daddr, plain.dport, plain.flags, pe_name="sip", pe_data=b"call-1",
    )  # fmt: skip
    cp.state, cp.expires = plain.state, plain.expires
    table.hash(cp)
    sync = make_conn(IPPROTO_TCP, "10.2.0.1", 1, "10.0.0.1", 80, "2001:db8::7", 80, False, TCP_S_CLOSE, 0)
    sync.flags |= CONN_F_SYNC | CONN_F_TUNNEL
    sync.expires = -5.0
    table.hash(sync)
    ipvs.conns = table  # type: ignore[attr-defined]
    text = proc_ip_vs_conn(ipvs, 0.0)
    assert (
        "TCP 2001:0db8:0000:0000:0000:0000:0000:0005 9C40 2001:0db8:0000:0000:0000:0000:0000:0001 01BB "
        "2001:0db8:0001:0000:0000:0000:0000:0010 01BB ESTABLISHED    6001\n"
    ) in text
    assert "UDP 0A020001 13C4 0A000002 0035 7F000001 0035 UDP              59 sip call-1\n" in text
    assert (
        "TCP 0A020001 0001 0A000001 0050 2001:0db8:0000:0000:0000:0000:0000:0007 0050 CLOSE             0\n"
        in text
    )
    sync_text = proc_ip_vs_conn_sync(ipvs, 0.0)
    assert sync_text.startswith("Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Origin Expires\n")
    assert "UDP 0A020001 13C4 0A000002 0035 7F000001 0035 UDP         LOCAL       59\n" in sync_text
    assert " CLOSE       SYNC         0\n" in sync_text

    listed = list_conns(ipvs, 0.0, numeric=True, persistent_conn=False)
    assert "TCP 100:01 ESTABLISHED [2001:db8::5]:40000 [2001:db8::1]:443  [2001:db8:1::10]:443\n" in listed
    assert "UDP 00:59  UDP         10.2.0.1:5060      10.0.0.2:53        127.0.0.1:53\n" in listed
    assert "TCP 00:00  CLOSE       10.2.0.1:1         10.0.0.1:80        [2001:db8::7]:80\n" in listed
    pc = list_conns(ipvs, 0.0, numeric=True, persistent_conn=True)
    assert (
        "UDP 00:59  UDP         10.2.0.1:5060      10.0.0.2:53        "
        "127.0.0.1:53     sip                call-1\n" in pc
    )
    named = list_conns(ipvs, 0.0, numeric=False, persistent_conn=False, resolver=resolver())
    assert "UDP 00:59  UDP         10.2.0.1:5060      10.0.0.2:domain    localhost:domain\n" in named


def test_fwmark_template_row() -> None:
    ipvs = IPVS()
    table = ConnTable()
    tpl = Conn(AF_INET, IPPROTO_IP, v4("10.2.0.0"), 0, 7, 0, AF_INET, v4("10.1.0.7"), 0, CONN_F_TEMPLATE, 7)
    tpl.expires = 100.0
    table.hash(tpl)
    ipvs.conns = table  # type: ignore[attr-defined]
    assert "IP  0A020000 0000 00000007 0000 0A010007 0000 NONE            100\n" in proc_ip_vs_conn(ipvs, 0.0)
    assert "IP  01:40  NONE        10.2.0.0:0         0.0.0.7:0          10.1.0.7:0\n" in list_conns(
        ipvs, 0.0, numeric=False, persistent_conn=False, resolver=resolver()
    )


def test_daemons() -> None:
    ipvs = IPVS()
    ipvs.start_daemon(
        SyncDaemon(
            "backup",
            "eth1",
            syncid=3,
            sync_maxlen=9000,
            mcast_group="239.1.1.1",
            mcast_port=9000,
            mcast_ttl=4,
        )
    )
    ipvs.start_daemon(SyncDaemon("master", "eth0"))
    assert list_daemons(ipvs) == (
        "master sync daemon (mcast=eth0, syncid=0, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
        "backup sync daemon (mcast=eth1, syncid=3, maxlen=9000, group=239.1.1.1, port=9000, ttl=4)\n"
    )


def test_proc_stats_hex() -> None:
    ipvs = IPVS()
    _set_stats(ipvs.stats, (0xFFFFFFFF, 1, 2, 2**40, 3), (1, 2, 3, 4, 5))
    lines = proc_ip_vs_stats(ipvs).splitlines()
    assert lines[2] == "FFFFFFFF        1        2      10000000000                3"
    assert lines[5] == "       1        2        3                4                5"


def test_kernel_order_depends_on_salt() -> None:
    ipvs = build_golden()
    order = [s.key for s in proc.kernel_service_order(ipvs)]
    assert order == [UDP53, TCP443, TCP80, FWM7]
    assert [s.key for s in proc.kernel_service_order(ipvs, salt=0)] == [TCP443, UDP53, TCP80, FWM7]


# -- JSON -------------------------------------------------------------------------------------------
def test_services_json() -> None:
    data = services_json(build_golden(), 12.5)
    json.dumps(data)
    assert data["version"] == "1.2.1" and data["conn_tab_size"] == 4096 and data["time"] == 12.5
    assert data["totals"]["counters"]["inbytes"] == 532
    first = data["services"][0]
    assert first["protocol"] == "tcp" and first["address"] == "10.0.0.1" and first["port"] == 80
    assert first["persistent"] and first["timeout"] == 300 and first["netmask"] == "255.255.255.255"
    assert [d["address"] for d in first["destinations"]] == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
    assert first["kernel_order"] == ["10.1.0.1:80", "10.1.0.3:80", "10.1.0.2:80"]
    d3 = first["destinations"][2]
    assert d3["forward"] == "tunnel" and d3["tunnel"] == {"type": "ipip", "port": 0, "csum": "nocsum"}
    assert d3["u_threshold"] == 100 and d3["l_threshold"] == 50 and d3["persistent_conns"] == 1
    fwm = data["services"][3]
    assert fwm["fwmark"] == 7 and fwm["protocol"] is None and fwm["sched_flags"] == ["sh-fallback", "sh-port"]


def test_conns_json() -> None:
    data = conns_json(build_golden(), 0.0)
    json.dumps(data)
    assert len(data) == 11
    est = next(c for c in data if c["state"] == "ESTABLISHED")
    assert est["client"] == {"address": "10.2.0.1", "port": 40001}
    assert est["destination"] == {"af": "inet", "address": "10.1.0.1", "port": 80}
    assert est["expires_in"] == 893 and not est["template"] and est["origin"] == "LOCAL"
    assert sum(c["template"] for c in data) == 4


# -- names ------------------------------------------------------------------------------------------
def test_resolver_both_ways(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# c\n10.0.0.1  Web web.example  # x\n10.0.0.1 other\n2001:db8::1 v6host\nbad line\n")
    services = tmp_path / "services"
    services.write_text("http 80/tcp www\nhttp 80/udp\nfoo 80/tcp\ndomain 53/udp\nbroken x/tcp\n")
    r = files_resolver(str(hosts), str(services))
    assert r.host("WEB.example") == (AF_INET, v4("10.0.0.1"))
    assert r.host("v6host") is None  # gethostbyname answers IPv4 only
    assert r.host("nothing") is None
    assert r.addr_name(AF_INET, v4("10.0.0.1")) == "Web"
    assert r.addr_name(AF_INET6, v6("2001:db8::1")) == "v6host"
    assert r.service("www", IPPROTO_TCP) == 80 and r.service("WWW", IPPROTO_TCP) is None
    assert r.service("domain", IPPROTO_TCP) is None and r.service("domain", IPPROTO_UDP) == 53
    assert r.port_name(80, IPPROTO_TCP) == "http" and r.port_name(80, IPPROTO_SCTP) is None
    assert files_resolver(str(tmp_path / "missing"), None).host("x") is None


# -- property: any table lists --------------------------------------------------------------------
_addr_v4 = st.integers(0, 2**32 - 1)
_addr_v6 = st.integers(0, 2**128 - 1)


@st.composite
def tables(draw):
    ipvs = IPVS()
    n = draw(st.integers(0, 6))
    for _ in range(n):
        kind = draw(st.sampled_from(["v4", "v6", "fwm"]))
        if kind == "fwm":
            key = ServiceKey(
                draw(st.sampled_from([AF_INET, AF_INET6])), IPPROTO_IP, 0, 0, draw(st.integers(1, 2**32 - 1))
            )
        else:
            af = AF_INET if kind == "v4" else AF_INET6
            addr = draw(_addr_v4 if af == AF_INET else _addr_v6)
            key = ServiceKey(
                af,
                draw(st.sampled_from([IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP])),
                addr,
                draw(st.integers(0, 65535)),
            )
        if key in ipvs.services:
            continue
        flags = draw(st.sampled_from([0, SVC_F_PERSISTENT, SVC_F_PERSISTENT | SVC_F_ONEPACKET]))
        sched = draw(st.sampled_from(["rr", "wlc", "sh", "mh"]))
        flags |= draw(st.sampled_from([0, SVC_F_SCHED1, SVC_F_SCHED2]))
        ipvs.add_service(ServiceSpec(key, sched, flags, draw(st.integers(1, 100000))))
        for _ in range(draw(st.integers(0, 4))):
            daf = key.af
            daddr = draw(_addr_v4 if daf == AF_INET else _addr_v6)
            spec = DestSpec(
                daf,
                daddr,
                draw(st.integers(0, 65535)),
                fwd=draw(st.sampled_from([CONN_F_MASQ, CONN_F_DROUTE, CONN_F_TUNNEL])),
                weight=draw(st.integers(0, 2**31 - 1)),
            )
            if ipvs.services[key].find_dest(daf, daddr, spec.port) is None and unicast_dest(daf, daddr):
                ipvs.add_dest(key, spec)
        svc = ipvs.services[key]
        _set_stats(svc.stats, tuple(draw(st.integers(0, 2**64 - 1)) for _ in range(5)))
    return ipvs


@settings(max_examples=60, deadline=None)
@given(
    tables(),
    st.booleans(),
    st.sampled_from(["plain", "stats", "rate", "thresholds", "persistent_conn", "tun_info"]),
    st.booleans(),
    st.booleans(),
)
def test_any_table_lists(ipvs: IPVS, numeric: bool, mode: str, exact: bool, sort: bool) -> None:
    kw = {mode: True} if mode != "plain" else {}
    text = L(ipvs, numeric=numeric, exact=exact, sort=sort, resolver=NullResolver(), **kw)
    lines = text.splitlines()
    svc_lines = [ln for ln in lines[3:] if not ln.startswith("  -> ")]
    dest_lines = [ln for ln in lines[3:] if ln.startswith("  -> ")]
    assert len(svc_lines) == len(ipvs.services)
    assert len(dest_lines) == sum(len(s.destinations) for s in ipvs.services.values())
    save = save_rules(ipvs, numeric=True, sort=sort).splitlines()
    assert len([ln for ln in save if ln.startswith("-A ")]) == len(ipvs.services)
    assert len([ln for ln in save if ln.startswith("-a ")]) == len(dest_lines)
    for svc in ipvs.services.values():
        head = svc.describe().split()[0]
        assert any(ln.startswith(head if head != "FWM" else "FWM  ") for ln in svc_lines)
    proc_lines = proc_ip_vs(ipvs).splitlines()
    assert len(proc_lines) == 3 + len(svc_lines) + len(dest_lines)
    json.dumps(services_json(ipvs, 0.0))


# -- end to end: the golden traffic through the director -------------------------------------------
def test_golden_traffic_through_director() -> None:
    """Replay golden.scn's traffic through :mod:`lvs.simulate` (the table is set
    up through the API, so no ipvsadm grammar is needed) and list what the
    director built.  Counters of bytes/packets depend on the simulator's
    traffic model and are not compared here."""
    sim = Simulation(runner=lambda argv, ipvs, now, out, err: 0)
    ipvs = sim.ipvs
    configure_golden(ipvs)
    scn = (GOLDEN.parent / "golden.scn").read_text().splitlines()
    traffic = [
        ln for ln in scn if ln.split()[:1] and ln.split()[0] in ("local", "listen", "tcp", "udp", "close")
    ]
    sim.run(traffic, lambda obj: None)
    sim.sleep(5)
    for name, kw in (
        ("ipvsadm_-L_-n", {}),
        ("ipvsadm_-L_-n_--thresholds", {"thresholds": True}),
        ("ipvsadm_-L_-n_--persistent-conn", {"persistent_conn": True}),
    ):
        assert L(ipvs, **kw) == golden(name), name
    assert save_rules(ipvs, numeric=True) == golden("ipvsadm_-S_-n")
    got = list_conns(ipvs, sim.now, numeric=True, persistent_conn=False)
    assert mask_expires_listing(got) == mask_expires_listing(golden("ipvsadm_-L_-c_-n"))
    # /proc was read after the CLOSE entry (10 s) had gone
    sim.sleep(6)
    assert proc_ip_vs(ipvs) == golden("proc_net_ip_vs")
    assert mask_expires_proc(proc_ip_vs_conn(ipvs, sim.now)) == mask_expires_proc(
        golden("proc_net_ip_vs_conn")
    )
