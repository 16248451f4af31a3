"""DR and TUN end to end across network namespaces (issue 5).

The topology is the kernel selftest's (client, director, real servers joined
by veth and bridges, VIP 207.175.44.110:8080), built by :mod:`tests.nsnet`;
a real ``lvsd`` runs in the director namespace and is configured with
``lvsadm``.  Real servers run the ``tests.nsprog`` servers; for TUN they run
``lvs-realserver`` (this kernel has no ipip/gre/fou modules), or the kernel's
own ``tunl0`` where it exists.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from .helpers import lvsadm, running_lvsd
from .nsnet import PY, ROOT, VIP, Lab, Labs, Topology, dr_netns_reason, rip, servers, sh, start_realservers

_why = dr_netns_reason()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(240),
    pytest.mark.skipif(_why is not None, reason=_why or ""),
]



@pytest.fixture
def lab_factory() -> Iterator:
    labs = Labs()

    def make(n_rs: int, kind: str = "dr", udp: bool = False) -> Lab:
        topo = labs.topology(n_rs)
        start_realservers(topo, kind, n_rs)
        for k in range(1, n_rs + 1):
            topo.server(k, "tcp")
            if udp:
                topo.server(k, "udp")
        return Lab(topo, labs.lvsd(topo))

    yield make
    labs.close()


# -----------------------------------------------------------------------------
# 1. the kernel selftest's check, in DR, TUN and NAT
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["dr", "tun", "nat"])
def test_selftest_topology(lab_factory, mode: str) -> None:
    """One real server, rr, ``-A`` before the VIP exists on the director's lo,
    32 random bytes arrive intact."""
    lab = lab_factory(1, "tun" if mode == "tun" else "dr")
    t = lab.t
    if mode == "nat":
        # replies must come back through the director
        t.ns(t.rs[0], "ip", "link", "del", "eth0")
        t.ns(t.rs[0], "ip", "route", "add", "default", "via", "172.16.0.1")
    lab.adm("-A", "-t", f"{VIP}:8080", "-s", "rr")
    t.ns(t.director, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
    flag = {"dr": "-g", "tun": "-i", "nat": "-m"}[mode]
    lab.adm("-a", "-t", f"{VIP}:8080", "-r", f"{rip(1)}:8080", flag)
    res = lab.tcp(1, "--size", "32")
    assert servers(res) == ["rs1"]


# -----------------------------------------------------------------------------
# 2. two real servers: rr alternation, weights, replies bypass the director
# -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method",
    [
        ("-g",),
        ("-i",),
        ("-i", "--tun-type", "gue", "--tun-port", "6080"),
        ("-i", "--tun-type", "gue", "--tun-port", "6080", "--tun-csum"),
        ("-i", "--tun-type", "gre"),
        ("-i", "--tun-type", "gre", "--tun-csum"),
    ],
    ids=["dr", "ipip", "gue", "gue-csum", "gre", "gre-csum"],
)
def test_rr_weights_and_bypass(lab_factory, method: tuple[str, ...]) -> None:
    kind = "tun" if method[0] == "-i" else "dr"
    lab = lab_factory(2, kind, udp=True)
    t = lab.t
    t.ns(t.director, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
    lab.adm("-A", "-t", f"{VIP}:8080", "-s", "rr")
    lab.adm("-A", "-u", f"{VIP}:8080", "-s", "wrr")
    for k in (1, 2):
        lab.adm("-a", "-t", f"{VIP}:8080", "-r", f"{rip(k)}:8080", *method)
        lab.adm("-a", "-u", f"{VIP}:8080", "-r", f"{rip(k)}:8080", *method, "-w", "3" if k == 1 else "1")
    lab.tcp(1)  # warm the neighbour cache
    before = t.link_stats(t.director, "veth10")
    got = servers(lab.tcp(20))
    # rr: strict alternation
    assert all(a != b for a, b in itertools.pairwise(got)), (got, lab.diag())
    assert collections.Counter(got) == {"rs1": 10, "rs2": 10}, lab.diag()
    # UDP, wrr 3:1 over 40 flows (a new source port each)
    u = collections.Counter(servers(lab.udp(40)))
    assert u == {"rs1": 30, "rs2": 10}, (u, lab.diag())
    after = t.link_stats(t.director, "veth10")
    # replies never pass the director: it sent (almost) nothing towards the client
    assert after["tx"] - before["tx"] <= 4, (before, after)
    assert after["rx"] - before["rx"] >= 20 * 4 + 40


# -----------------------------------------------------------------------------
# 3. persistence, weight 0 and deletion under traffic
# -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method",
    [
        ("-g",),
        ("-i",),
        ("-i", "--tun-type", "gue", "--tun-port", "6080"),
        ("-i", "--tun-type", "gre"),
    ],
    ids=["dr", "ipip", "gue", "gre"],
)
def test_persistence_quiesce_delete(lab_factory, method: tuple[str, ...]) -> None:
    flag = method
    lab = lab_factory(2, "tun" if method[0] == "-i" else "dr", udp=True)
    t = lab.t
    t.ns(t.director, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
    # persistent UDP: one client address sticks to one real server
    lab.adm("-A", "-u", f"{VIP}:8080", "-s", "rr", "-p", "60")
    lab.adm("-A", "-t", f"{VIP}:8080", "-s", "rr")
    for k in (1, 2):
        lab.adm("-a", "-u", f"{VIP}:8080", "-r", f"{rip(k)}:8080", *flag)
        lab.adm("-a", "-t", f"{VIP}:8080", "-r", f"{rip(k)}:8080", *flag)
    sticky = servers(lab.udp(10))
    assert len(set(sticky)) == 1, sticky

    # a slow stream of TCP connections while rs2 is quiesced, then deleted
    proc = subprocess.Popen(
        [*t.prefix(t.client), PY, "-m", "tests.nsprog", "tcp-clients", VIP, "8080", "60", "--pause", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
    )  # fmt: skip
    t.procs.append(proc)
    time.sleep(1.0)
    lab.adm("-e", "-t", f"{VIP}:8080", "-r", f"{rip(2)}:8080", *flag, "-w", "0")
    time.sleep(1.0)
    lab.adm("-d", "-t", f"{VIP}:8080", "-r", f"{rip(2)}:8080")
    out, _err = proc.communicate(timeout=120)
    res = json.loads(out)
    assert all(r["ok"] and r["intact"] for r in res), [r for r in res if not r.get("ok")]
    seq = [r["server"] for r in res]
    # after the weight went to 0, only rs1 gets new connections
    first_quiet = next(i for i, s in enumerate(seq) if i > 0 and s == seq[i - 1] == "rs1")
    assert "rs2" not in seq[first_quiet + 2 :], seq
    assert "rs2" in seq[:first_quiet], seq
    listing = lab.adm("-L", "-n")
    assert rip(2) not in listing.split("UDP")[0]


# -----------------------------------------------------------------------------
# 4. teardown: lvsd leaves no table, no process
# -----------------------------------------------------------------------------
def _director_state(t: Topology) -> tuple[str, str, str]:
    """What lvsd may change in the director's namespace: its addresses, its
    nftables tables and the processes running in it."""
    # (interface, address) pairs; flags such as IPv6 DAD's "tentative" change on their own
    lines = t.ns(t.director, "ip", "-o", "addr", "show").stdout.splitlines()
    addrs = "\n".join(sorted(" ".join(line.split()[1:4:2]) for line in lines))
    tables = t.ns(t.director, "nft", "list", "tables").stdout
    pids = sh("ip", "netns", "pids", t.director).stdout
    return addrs, tables, pids


@pytest.mark.parametrize("flag", ["-g", "-i"], ids=["dr", "ipip"])
def test_clean_teardown(flag: str) -> None:
    crash = f"crashy{os.getpid()}"
    with Topology(1) as t:
        start_realservers(t, "tun" if flag == "-i" else "dr", 1)
        t.server(1)
        t.ns(t.director, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
        pre = t.prefix(t.director)
        before = _director_state(t)
        assert before[2].split() == [], before  # nothing runs in the director yet
        with running_lvsd("--no-vip", prefix=pre) as sock:
            assert lvsadm(sock, "-A", "-t", f"{VIP}:8080", prefix=pre).returncode == 0
            assert (
                lvsadm(sock, "-a", "-t", f"{VIP}:8080", "-r", f"{rip(1)}:8080", flag, prefix=pre).returncode
                == 0
            )
            assert servers(t.clients("tcp", VIP, 8080, 2)) == ["rs1", "rs1"]
            during = _director_state(t)
            assert "pylvs" in during[1]
            assert during[2].split(), "lvsd runs in the director's namespace"
        # lvsd gone: no table, no process, the same addresses as before it started
        after = _director_state(t)
        assert "pylvs" not in after[1]
        assert after == before, (before, after)
        # a crash leaves the table; the next start removes it
        proc = subprocess.Popen(
            [*pre, PY, "-m", "lvsd.main", "--foreground", "--socket", crash, "--no-vip"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 15
            while lvsadm(crash, "-A", "-t", f"{VIP}:8080", prefix=pre).returncode != 0:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert (
                lvsadm(crash, "-a", "-t", f"{VIP}:8080", "-r", f"{rip(1)}:8080", flag, prefix=pre).returncode
                == 0
            )
            deadline = time.monotonic() + 10
            while f"pylvs_{crash}" not in t.ns(t.director, "nft", "list", "tables").stdout:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            proc.kill()
            proc.wait(timeout=10)
        assert f"pylvs_{crash}" in t.ns(t.director, "nft", "list", "tables").stdout
        with running_lvsd("--no-vip", prefix=pre, socket_name=crash) as sock:
            # the new lvsd restores the crashed one's table from its state file;
            # the leftover nft table is replaced by its own, not doubled
            listing = lvsadm(sock, "-L", "-n", prefix=pre).stdout
            assert f"TCP  {VIP}:8080 wlc" in listing and f"{rip(1)}:8080" in listing, listing
            assert t.ns(t.director, "nft", "list", "tables").stdout.count(f"pylvs_{crash}") == 1
            time.sleep(0.5)
            assert servers(t.clients("tcp", VIP, 8080, 1)) == ["rs1"]
        assert _director_state(t) == before
