"""DR and TUN over IPv6 end to end across network namespaces (issue 5).

The same topology as :mod:`tests.test_dr_tun_netns`, built with
``Topology(v6=True)``: the client reaches the VIP ``2001:db8:ffff::110``
through the director, which forwards to real servers at
``2001:db8:16::2`` and ``::3`` either by MAC rewrite (DR) or in an IPv6
outer header (TUN: IPv6-in-IPv6 with ``--tun-type ipip``, GUE or GRE over
IPv6).  The real servers hold the VIP on ``lo`` and answer the client
directly over their own link; for TUN they run ``lvs-realserver`` (this
kernel has no ip6_tunnel/gre/fou modules).

The replies must never pass the director: its client-side interface may
send only a handful of frames (neighbour discovery) while the test's
connections are served.
"""

from __future__ import annotations

import ast
import collections
import itertools
import re
from collections.abc import Iterator

import pytest

from .nsnet import VIP6, Lab, Labs, dr_netns_reason, rip6, servers, start_realservers

_why = dr_netns_reason()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(240),
    pytest.mark.skipif(_why is not None, reason=_why or ""),
]

GUE_PORT = 6080


@pytest.fixture
def lab6() -> Iterator:
    labs = Labs()

    def make(n_rs: int, kind: str) -> Lab:
        topo = labs.topology(n_rs, v6=True)
        decaps = start_realservers(topo, kind, n_rs, GUE_PORT, VIP6)
        for k in range(1, n_rs + 1):
            topo.server(k, "tcp")
            topo.server(k, "udp")
        lab = Lab(topo, labs.lvsd(topo), VIP6)
        topo.ns(topo.director, "ip", "addr", "add", f"{VIP6}/128", "dev", "lo")
        lab.decaps = decaps
        return lab

    yield make
    labs.close()


METHODS = [
    ("-g",),
    ("-i",),
    ("-i", "--tun-type", "gue", "--tun-port", str(GUE_PORT)),
    ("-i", "--tun-type", "gue", "--tun-port", str(GUE_PORT), "--tun-csum"),
    ("-i", "--tun-type", "gre"),
    ("-i", "--tun-type", "gre", "--tun-csum"),
]
IDS = ["dr", "ip6ip6", "gue", "gue-csum", "gre", "gre-csum"]
#: how lvs-realserver names what it decapsulated (its exit report)
KINDS = {"ip6ip6": "ipip6", "gue": "gue", "gue-csum": "gue", "gre": "gre", "gre-csum": "gre"}


@pytest.mark.parametrize(("method", "name"), list(zip(METHODS, IDS, strict=True)), ids=IDS)
def test_v6_rr_wrr_and_bypass(lab6, method: tuple[str, ...], name: str) -> None:
    """Two real servers over IPv6: TCP rr alternates strictly over many
    connections, UDP wrr 3:1 splits 30/10 over 40 flows, every payload comes
    back intact, and the replies bypass the director."""
    lab = lab6(2, "tun" if method[0] == "-i" else "dr")
    t = lab.t
    vs = f"[{VIP6}]:8080"
    lab.adm("-A", "-t", vs, "-s", "rr")
    lab.adm("-A", "-u", vs, "-s", "wrr")
    for k in (1, 2):
        lab.adm("-a", "-t", vs, "-r", f"[{rip6(k)}]:8080", *method)
        lab.adm("-a", "-u", vs, "-r", f"[{rip6(k)}]:8080", *method, "-w", "3" if k == 1 else "1")
    lab.tcp(1)  # warm the neighbour caches (ND on both sides)
    before = t.link_stats(t.director, "veth10")
    got = servers(lab.tcp(30, "--size", "200", "--timeout", "3"))
    assert all(a != b for a, b in itertools.pairwise(got)), got
    assert collections.Counter(got) == {"rs1": 15, "rs2": 15}
    u = collections.Counter(servers(lab.udp(40)))
    assert u == {"rs1": 30, "rs2": 10}, u
    after = t.link_stats(t.director, "veth10")
    # replies never pass the director: at most a few ND frames towards the client
    assert after["tx"] - before["tx"] <= 6, (before, after)
    assert after["rx"] - before["rx"] >= 30 * 4 + 40
    listing = lab.adm("-L", "-n", "--stats")
    assert rip6(1) in listing and rip6(2) in listing
    if name in KINDS:
        # each real server decapsulated IPv6 packets of the configured kind
        for p in lab.decaps:
            p.terminate()
            _out, err = p.communicate(timeout=10)
            m = re.search(r"delivered (\d+) .*?(\{.*\})", err)
            assert m is not None, err
            kinds = ast.literal_eval(m.group(2))
            assert int(m.group(1)) >= 10 and set(kinds) == {KINDS[name]}, err
