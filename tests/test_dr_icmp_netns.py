"""ICMP errors about DR/TUN connections reach the connection's real server
(``ip_vs_in_icmp``), end to end across network namespaces.

A client holds one TCP connection to the VIP, served by one of two real
servers; then it sends the VIP an ICMP "fragmentation needed" (ICMPv6
"packet too big") quoting a reply of that connection (VIP:8080 -> client),
as a router on the way back would.  The director must forward it to that
real server only (DR: as it is; TUN: encapsulated, seen after
``lvs-realserver`` decapsulated it), while an error quoting no connection
reaches no real server.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from .helpers import lvsadm, running_lvsd
from .nsnet import CLIENT, PY, ROOT, VIP, VIP6, Topology, dr_netns_reason, rip, rip6

_why = dr_netns_reason()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(180),
    pytest.mark.skipif(_why is not None, reason=_why or ""),
]

CLIENT6 = "2001:db8:10::2"


@pytest.fixture
def topo_factory() -> Iterator:
    made: list = []

    def make(v6: bool, kind: str) -> tuple[Topology, str]:
        t = Topology(2, v6=v6)
        made.append(t)
        vip = VIP6 if v6 else VIP
        for k in (1, 2):
            t.realserver_vip(k, vip)
            if kind == "tun":
                p = t.spawn(
                    t.rs[k - 1], PY, "-m", "forwarding.realserver", "--vip", vip, "--lifetime", "150"
                )  # fmt: skip
                assert p.stdout is not None
                assert p.stdout.readline().startswith("ready")
            t.server(k, "tcp")
        cm = running_lvsd("--no-vip", prefix=t.prefix(t.director))
        sock = cm.__enter__()
        made.append(cm)
        return t, sock

    yield make
    for obj in reversed(made):
        if isinstance(obj, Topology):
            obj.close()
        else:
            obj.__exit__(None, None, None)


def _spawn(t: Topology, ns: str, *args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [*t.prefix(ns), PY, "-m", "tests.nsicmp", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
    )  # fmt: skip
    t.procs.append(p)
    return p


@pytest.mark.parametrize(
    ("v6", "flag"),
    [(False, "-g"), (False, "-i"), (True, "-g"), (True, "-i")],
    ids=["v4-dr", "v4-ipip", "v6-dr", "v6-ip6ip6"],
)
def test_icmp_error_reaches_the_connections_real_server(topo_factory, v6: bool, flag: str) -> None:
    t, sock = topo_factory(v6, "tun" if flag == "-i" else "dr")
    vip, client = (VIP6, CLIENT6) if v6 else (VIP, CLIENT)
    rips = [rip6(k) if v6 else rip(k) for k in (1, 2)]
    pre = t.prefix(t.director)
    t.ns(t.director, "ip", "addr", "add", f"{vip}/128" if v6 else f"{vip}/32", "dev", "lo")
    vs = f"[{vip}]:8080" if v6 else f"{vip}:8080"
    assert lvsadm(sock, "-A", "-t", vs, "-s", "rr", prefix=pre).returncode == 0
    for r in rips:
        rs = f"[{r}]:8080" if v6 else f"{r}:8080"
        assert lvsadm(sock, "-a", "-t", vs, "-r", rs, flag, prefix=pre).returncode == 0

    sniffers = [_spawn(t, ns, "icmp-sniff", "20") for ns in t.rs]
    for s in sniffers:
        assert s.stdout is not None and s.stdout.readline().strip() == "ready"
    hold = _spawn(t, t.client, "tcp-hold", vip, "8080", "20")
    assert hold.stdout is not None
    line = hold.stdout.readline()
    assert line, hold.stderr.read() if hold.stderr else ""
    cport = json.loads(line)["port"]
    # which real server has the connection
    owner = None
    deadline = time.monotonic() + 5
    while owner is None and time.monotonic() < deadline:
        for k, ns in enumerate(t.rs):
            out = t.ns(ns, "ss", "-Htn", "state", "established", "( sport = :8080 )").stdout
            if f":{cport}" in out:
                owner = k
        time.sleep(0.05)
    assert owner is not None

    mtu = "1280"
    # related: quotes the connection's reply VIP:8080 -> client:cport
    t.ns(t.client, PY, "-m", "tests.nsicmp", "icmp-error", vip, vip, "8080", client, str(cport),
         "--type", "2" if v6 else "3", "--code", "0" if v6 else "4", "--mtu", mtu)  # fmt: skip
    # unrelated: another client port
    t.ns(t.client, PY, "-m", "tests.nsicmp", "icmp-error", vip, vip, "8080", client, str(cport ^ 1),
         "--type", "2" if v6 else "3", "--code", "0" if v6 else "4", "--mtu", mtu)  # fmt: skip
    time.sleep(1.0)
    seen: list[list[dict]] = []
    for s in sniffers:
        s.terminate()
        out, _ = s.communicate(timeout=10)
        seen.append([json.loads(x) for x in out.splitlines() if x.startswith("{")])
    hold.terminate()

    got = seen[owner]
    assert len(got) == 1, seen
    rec = got[0]
    assert (rec["src"], rec["dst"]) == (client, vip)
    assert (rec["type"], rec["code"]) == ((2, 0) if v6 else (3, 4))
    # the quote names the connection: VIP:8080 -> client:cport
    q = bytes.fromhex(rec["quote"])
    l4 = 40 if v6 else 20
    assert int.from_bytes(q[l4 : l4 + 2], "big") == 8080
    assert int.from_bytes(q[l4 + 2 : l4 + 4], "big") == cport
    if flag == "-i":
        assert rec["if"].startswith("lvstun"), rec  # decapsulated by lvs-realserver
    else:
        assert rec["if"] == "eth1", rec
    # the other real server got nothing, the unrelated error reached no one
    assert seen[1 - owner] == [], seen
