"""lvs.metrics and lvs.status, pure: node_exporter's names and labels, the
text format against prometheus-client's own writer, the page's history."""

from __future__ import annotations

import io
import random

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from lvs import metrics
from lvs.constants import AF_INET, AF_INET6
from lvs.ctl import IPVS
from lvs.ipvsadm.commands import run
from lvs.ipvsadm.names import FilesResolver
from lvs.ipvsadm.proc import proc_ip_vs, proc_ip_vs_pieces
from lvs.status import Events, History, conns_view, service_id, services_steps
from lvsd.metrics import FamiliesCollector


def adm(ipvs: IPVS, *argv: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run(list(argv), ipvs, 0.0, out, err, FilesResolver("", "")) == 0, err.getvalue()


def mapped_ok(ipvs: IPVS) -> IPVS:
    """Let v4-mapped IPv6 real servers in: the kernel takes one only when the
    address is local on the director (ip_vs_new_dest, __ip_vs_addr_is_local_v6),
    and pylvs sees no interface addresses (lvs.ctl.unicast_dest)."""
    ipvs._check_dest_address = lambda spec: None  # type: ignore[method-assign]
    return ipvs


def table() -> IPVS:
    ipvs = mapped_ok(IPVS())
    adm(ipvs, "-A", "-t", "10.0.0.1:80", "-s", "rr")
    adm(ipvs, "-a", "-t", "10.0.0.1:80", "-r", "10.1.0.1:8080", "-m", "-w", "3")
    adm(ipvs, "-a", "-t", "10.0.0.1:80", "-r", "10.1.0.2:8080", "-m", "-w", "0")
    adm(ipvs, "-A", "-f", "7", "-s", "wlc")
    adm(ipvs, "-a", "-f", "7", "-r", "10.1.0.2", "-g")
    adm(ipvs, "-A", "-u", "[2001:db8::1]:53", "-s", "sh")
    adm(ipvs, "-a", "-u", "[2001:db8::1]:53", "-r", "[2001:db8::5]:53", "-m")
    adm(ipvs, "-a", "-u", "[2001:db8::1]:53", "-r", "[2001:db8::6]:53", "-m")
    # ipvsadm refuses an IPv4-mapped real server today; the kernel once took them
    svc = ipvs.services[next(k for k in ipvs.services if k.af == AF_INET6)]
    svc.destinations[0].addr = 0xFFFF_0A02_0001  # ::ffff:10.2.0.1
    return ipvs


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_node_exporter_names_and_labels() -> None:
    ipvs = table()
    svc = next(iter(ipvs.services.values()))
    svc.destinations[0].activeconns = 4
    svc.destinations[0].inactconns = 9
    ipvs.stats.conns, ipvs.stats.inbytes = 13, 1234567
    got = samples(metrics.render(metrics.families(metrics.snapshot(ipvs))))
    fwm = (("local_address", ""), ("local_mark", "00000007"), ("local_port", "0"), ("proto", "FWM"))
    assert got[("node_ipvs_backend_weight", (*fwm, ("remote_address", "10.1.0.2"), ("remote_port", "0")))] == 1
    tcp = (("local_address", "10.0.0.1"), ("local_mark", ""), ("local_port", "80"), ("proto", "TCP"))
    row = (*tcp, ("remote_address", "10.1.0.2"), ("remote_port", "8080"))
    assert got[("node_ipvs_backend_connections_active", row)] == 4
    assert got[("node_ipvs_backend_connections_inactive", row)] == 9
    assert got[("node_ipvs_backend_weight", row)] == 0
    udp = (("local_address", "2001:db8::1"), ("local_mark", ""), ("local_port", "53"), ("proto", "UDP"))
    # Go prints an IPv4-mapped address as plain IPv4
    assert (("node_ipvs_backend_weight", (*udp, ("remote_address", "10.2.0.1"), ("remote_port", "53")))) in got
    assert got[("node_ipvs_connections_total", ())] == 13
    assert got[("node_ipvs_incoming_bytes_total", ())] == 1234567
    names = {name for name, _ in got}
    assert {
        "node_ipvs_connections_total",
        "node_ipvs_incoming_packets_total",
        "node_ipvs_outgoing_packets_total",
        "node_ipvs_incoming_bytes_total",
        "node_ipvs_outgoing_bytes_total",
        "node_ipvs_backend_weight",
        "node_ipvs_backend_connections_active",
        "node_ipvs_backend_connections_inactive",
        "pylvs_backend_connections_per_second",
        "pylvs_service_outgoing_bytes_per_second",
    } <= names


def test_rows_with_equal_labels_are_summed_as_node_exporter_does() -> None:
    """node_exporter sums rows whose labels coincide: here the IPv4 and the
    IPv6 service of mark 5, each with a real server whose address Go prints
    as 10.1.0.9 (the IPv6 one is IPv4-mapped)."""
    ipvs = mapped_ok(IPVS())
    adm(ipvs, "-A", "-f", "5")
    adm(ipvs, "-A", "-f", "5", "-6")
    adm(ipvs, "-a", "-f", "5", "-r", "10.1.0.9", "-w", "2")
    adm(ipvs, "-a", "-f", "5", "-6", "-r", "2001:db8::9", "-w", "3")
    svc6 = ipvs.services[next(k for k in ipvs.services if k.af == AF_INET6)]
    svc6.destinations[0].addr = 0xFFFF_0A01_0009  # ::ffff:10.1.0.9, as an older kernel took it
    got = samples(metrics.render(metrics.families(metrics.snapshot(ipvs))))
    weights = [v for (name, _), v in got.items() if name == "node_ipvs_backend_weight"]
    assert weights == [5]


def test_fast_text_equals_prometheus_client() -> None:
    """The chunked writer gives byte for byte what generate_latest gives."""
    ipvs = table()
    rng = random.Random(3)
    for svc in ipvs.services.values():
        for d in svc.destinations:
            d.activeconns, d.inactconns = rng.randrange(10**7), rng.randrange(50)
            d.stats.conns = rng.randrange(10**9)
            d.stats.estimate()
    ipvs.stats.conns, ipvs.stats.outbytes = 10**6, 98765432101
    extra = [
        metrics.Family("pylvs_x_total", "counter", 'help with \\ and "quote"\nline', ("k",), [(('a"\\\nb',), 3)]),
        metrics.Family("pylvs_empty", "gauge", "nothing yet", ("k",), []),
    ]
    fams = metrics.families(metrics.snapshot(ipvs), extra)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FamiliesCollector(fams))
    expected = generate_latest(registry).decode()
    assert metrics.render(fams) == expected
    assert "".join(metrics.render_chunks(fams, chunk=2)) == expected


@given(st.one_of(st.integers(min_value=-(2**63), max_value=2**64), st.floats(allow_nan=True)))
def test_go_float_is_floatToGoString(value: float) -> None:
    assert metrics.go_float(value) == floatToGoString(value)


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_go_ip_v6(value: int) -> None:
    text = metrics.go_ip(AF_INET6, value)
    if value >> 32 == 0xFFFF:
        assert text == metrics.go_ip(AF_INET, value & 0xFFFFFFFF)
    else:
        assert ":" in text and "::::" not in text


def test_proc_pieces_join_to_proc_ip_vs() -> None:
    ipvs = table()
    assert "".join(proc_ip_vs_pieces(ipvs)) == proc_ip_vs(ipvs)


def test_snapshot_in_steps_equals_at_once() -> None:
    ipvs = IPVS()
    for i in range(30):
        adm(ipvs, "-A", "-t", f"10.0.0.{i}:80")
        adm(ipvs, "-a", "-t", f"10.0.0.{i}:80", "-r", "10.1.0.1", "-m")
    steps = metrics.snapshot_steps(ipvs, chunk=7)
    n = 0
    while True:
        try:
            next(steps)
            n += 1
        except StopIteration as done:
            snap = done.value
            break
    assert n == 5
    assert snap == metrics.snapshot(ipvs)


def test_history_rates_and_zeroing() -> None:
    ipvs = table()
    h = History(seconds=10, period=2)
    ipvs.stats.conns, ipvs.stats.inbytes = 0, 0
    h.sample(ipvs, 0.0)
    ipvs.stats.conns, ipvs.stats.inbytes = 10, 4000
    h.sample(ipvs, 2.0)
    ipvs.stats.conns, ipvs.stats.inbytes = 0, 0  # ipvsadm -Z
    h.sample(ipvs, 4.0)
    view = h.view(4.0)
    assert view["total"] == {"t": [2.0, 4.0], "cps": [5.0, 0.0], "bps": [2000.0, 0.0]}
    assert set(view["services"]) == {"tcp 10.0.0.1:80", "fwm 7", "udp [2001:db8::1]:53"}
    for t in range(6, 40, 2):
        h.sample(ipvs, float(t))
    assert len(h.view(40)["total"]["t"]) == 5  # ten seconds of two-second intervals


def test_events_ring() -> None:
    ev = Events(size=3)
    for i in range(5):
        ev.add(float(i), "admin", f"e{i}")
    view = ev.view()
    assert view["count"] == 5 and [e["text"] for e in view["events"]] == ["e2", "e3", "e4"]


def test_services_steps_is_json_services() -> None:
    from lvs.json_views import services_json

    ipvs = table()
    steps = services_steps(ipvs, 1.0, chunk=1)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            whole = done.value
            break
    ref = services_json(ipvs, 1.0)
    ids = [s.pop("id") for s in whole["services"]]
    assert whole.pop("total_services") == 3
    assert whole == ref
    assert sorted(ids) == sorted(service_id(s) for s in ipvs.services.values())
    assert conns_view(ipvs, 1.0, 10) == {"total": 0, "shown": 0, "conns": []}
