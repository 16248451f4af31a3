"""The LVS test topology in network namespaces, after the kernel selftest's
layout (client, director, real servers), generalised to N real servers.

    client ns  : br0 = 10.0.0.2/24, ports to the director and to every real
                 server; route to the VIP via 10.0.0.1
    director ns: veth10 = 10.0.0.1/24 (client side); br1 = 172.16.0.1/24
                 bridging one port per real server (DIP side)
    real server k (1..N): eth1 = 172.16.0.(1+k)/24 (RIP), eth0 =
                 10.0.0.(2+k)/24 (direct path back to the client)

With ``nat=True`` the real servers have no path of their own to the client:
no eth0, a default route through the director (172.16.0.1), which forwards.

:class:`Lab` is a topology with an lvsd in the director namespace; :class:`Labs`
tears down what a fixture built.  Everything is torn down by :meth:`Topology.close` (namespaces, hence their
interfaces, addresses, nftables tables; the processes started through
:meth:`Topology.spawn` are killed first).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .helpers import can_netns, lvsadm, running_lvsd

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
VIP = "207.175.44.110"
VIP6 = "2001:db8:ffff::110"
CLIENT = "10.0.0.2"
DIR_CLIENT_SIDE = "10.0.0.1"
DIP = "172.16.0.1"


def rip(k: int) -> str:
    return f"172.16.0.{1 + k}"


def rip6(k: int) -> str:
    return f"2001:db8:16::{1 + k:x}"


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


def veth(name: str, ns: str, peer: str, peer_ns: str) -> None:
    """A veth pair: ``name`` in namespace ``ns``, ``peer`` in ``peer_ns``."""
    sh("ip", "link", "add", name, "netns", ns, "type", "veth", "peer", "name", peer, "netns", peer_ns)


def dr_netns_reason() -> str | None:
    """None if the DR/TUN namespace tests can run here (root, network
    namespaces, nft for lvsd's rules), else the reason to skip them."""
    why = can_netns()
    if why is None and sh("sh", "-c", "command -v nft", check=False).returncode != 0:
        why = "needs nft (make netdeps)"
    return why


class Topology:
    def __init__(self, n_rs: int = 1, v6: bool = False, nat: bool = False) -> None:
        tag = f"{os.getpid() % 10000}{uuid.uuid4().hex[:4]}"
        self.client = f"lvc{tag}"
        self.director = f"lvd{tag}"
        self.rs = [f"lvr{k}{tag}" for k in range(1, n_rs + 1)]
        self.v6 = v6
        self.nat = nat
        self.procs: list[subprocess.Popen[str]] = []
        self.made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # -- helpers -----------------------------------------------------------------
    def ns(
        self, name: str, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", name, *args, check=check, timeout=timeout)

    def prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", name]

    def sysctl(self, name: str, key: str, value: str) -> None:
        self.ns(name, "sysctl", "-qw", f"{key}={value}")

    def _build(self) -> None:
        for n in (self.client, self.director, *self.rs):
            sh("ip", "netns", "add", n)
            self.made.append(n)
            self.ns(n, "ip", "link", "set", "lo", "up")
        c, d = self.client, self.director
        self.ns(c, "ip", "link", "add", "br0", "type", "bridge")
        self.ns(c, "ip", "link", "set", "br0", "up")
        self.ns(c, "ip", "addr", "add", f"{CLIENT}/24", "dev", "br0")
        veth("veth01", c, "veth10", d)
        self.ns(c, "ip", "link", "set", "veth01", "master", "br0", "up")
        self.ns(d, "ip", "link", "set", "veth10", "up")
        self.ns(d, "ip", "addr", "add", f"{DIR_CLIENT_SIDE}/24", "dev", "veth10")
        self.ns(d, "ip", "link", "add", "br1", "type", "bridge")
        self.ns(d, "ip", "link", "set", "br1", "up")
        self.ns(d, "ip", "addr", "add", f"{DIP}/24", "dev", "br1")
        self.ns(c, "ip", "route", "add", f"{VIP}/32", "via", DIR_CLIENT_SIDE)
        if self.v6:
            self.ns(c, "ip", "addr", "add", "2001:db8:10::2/64", "dev", "br0", "nodad")
            self.ns(d, "ip", "addr", "add", "2001:db8:10::1/64", "dev", "veth10", "nodad")
            self.ns(d, "ip", "addr", "add", "2001:db8:16::1/64", "dev", "br1", "nodad")
            self.ns(c, "ip", "-6", "route", "add", f"{VIP6}/128", "via", "2001:db8:10::1")
        for k, r in enumerate(self.rs, start=1):
            veth(f"veth1{k}", d, "eth1", r)
            self.ns(d, "ip", "link", "set", f"veth1{k}", "master", "br1", "up")
            self.ns(r, "ip", "link", "set", "eth1", "up")
            self.ns(r, "ip", "addr", "add", f"{rip(k)}/24", "dev", "eth1")
            if self.nat:
                self.ns(r, "ip", "route", "add", "default", "via", DIP)
                continue
            veth(f"veth0{k + 1}", c, "eth0", r)
            self.ns(c, "ip", "link", "set", f"veth0{k + 1}", "master", "br0", "up")
            self.ns(r, "ip", "link", "set", "eth0", "up")
            self.ns(r, "ip", "addr", "add", f"10.0.0.{2 + k}/24", "dev", "eth0")
            if self.v6:
                self.ns(r, "ip", "addr", "add", f"{rip6(k)}/64", "dev", "eth1", "nodad")
                self.ns(r, "ip", "addr", "add", f"2001:db8:10::{2 + k:x}/64", "dev", "eth0", "nodad")
        if self.nat:
            self.sysctl(d, "net.ipv4.ip_forward", "1")
        # let IPv6 link-local addresses settle quietly: no DAD noise needed
        for n in (self.client, self.director, *self.rs):
            self.sysctl(n, "net.ipv6.conf.all.accept_dad", "0")

    def realserver_vip(self, k: int, vip: str = VIP) -> None:
        """The DR/TUN real-server setup: VIP on lo, arp_ignore=1,
        arp_announce=2, rp_filter off (examples/realserver-setup.sh)."""
        r = self.rs[k - 1]
        self.ns(r, "ip", "addr", "add", f"{vip}/32" if ":" not in vip else f"{vip}/128", "dev", "lo")
        for key, val in (
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.conf.eth0.rp_filter", "0"),
            ("net.ipv4.conf.eth1.rp_filter", "0"),
            ("net.ipv4.conf.lo.rp_filter", "0"),
        ):
            self.sysctl(r, key, val)

    def spawn(self, name: str, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
        """Run a process in a namespace (stdout and stderr piped); it is
        killed by :meth:`close`."""
        p = subprocess.Popen(
            [*self.prefix(name), *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.procs.append(p)
        return p

    def server(self, k: int, kind: str = "tcp", port: int = 8080, name: str | None = None) -> None:
        p = self.spawn(
            self.rs[k - 1], PY, "-m", "tests.nsprog", f"{kind}-server", str(port), name or f"rs{k}"
        )
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"server did not start: {line!r} {p.stderr.read() if p.stderr else ''}")

    def clients(
        self, kind: str, host: str, port: int, count: int, *extra: str, timeout: float = 120
    ) -> list[dict]:
        r = self.ns(
            self.client,
            PY,
            "-m",
            "tests.nsprog",
            f"{kind}-clients",
            host,
            str(port),
            str(count),
            *extra,
            timeout=timeout,
        )
        return json.loads(r.stdout)

    def link_stats(self, name: str, dev: str) -> dict[str, int]:
        r = self.ns(name, "ip", "-s", "-j", "link", "show", "dev", dev)
        st = json.loads(r.stdout)[0]["stats64"]
        return {"rx": st["rx"]["packets"], "tx": st["tx"]["packets"]}

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
        for n in reversed(self.made):
            sh("ip", "netns", "del", n, check=False)
        self.made.clear()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Lab:
    """A topology with a running lvsd in the director namespace, serving ``vip``."""

    def __init__(self, topo: Topology, sock: str, vip: str = VIP) -> None:
        self.t = topo
        self.sock = sock
        self.vip = vip
        self.pre = topo.prefix(topo.director)
        #: the lvs-realserver processes (TUN)
        self.decaps: list[subprocess.Popen[str]] = []

    def adm(self, *args: str, ok: bool = True) -> str:
        r = lvsadm(self.sock, *args, prefix=self.pre)
        if ok:
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout + r.stderr

    def tcp(self, n: int, *extra: str) -> list[dict]:
        return self.t.clients("tcp", self.vip, 8080, n, *extra)

    def diag(self) -> str:
        """What a failed distribution check prints: the tables and lvsd's
        own account of the plane (for intermittent failures)."""
        parts = [self.adm("-L", "-n", "--stats", ok=False), self.adm("-L", "-n", "-c", ok=False)]
        parts.append(self.adm("--status", ok=False))
        return "\n".join(parts)

    def udp(self, n: int, *extra: str) -> list[dict]:
        return self.t.clients("udp", self.vip, 8080, n, *extra)


def start_realservers(
    t: Topology, kind: str, n: int, gue_port: int = 6080, vip: str = VIP
) -> list[subprocess.Popen[str]]:
    """The VIP on each real server's lo and, for TUN, its lvs-realserver
    (returned, ready)."""
    decaps = []
    for k in range(1, n + 1):
        t.realserver_vip(k, vip)
        if kind == "tun":
            p = t.spawn(
                t.rs[k - 1], PY, "-m", "forwarding.realserver", "--vip", vip, "--gue-port", str(gue_port),
                "--lifetime", "200",
            )  # fmt: skip
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.startswith("ready"), line
            decaps.append(p)
    return decaps


class Labs:
    """What a lab fixture built: topologies and the lvsd serving each, torn
    down in reverse (lvsd first: it removes its nftables table; then the
    namespaces)."""

    def __init__(self) -> None:
        self._made: list[Any] = []

    def topology(self, n_rs: int, v6: bool = False) -> Topology:
        topo = Topology(n_rs, v6=v6)
        self._made.append(topo)
        return topo

    def lvsd(self, topo: Topology) -> str:
        cm = running_lvsd("--no-vip", prefix=topo.prefix(topo.director))
        sock = cm.__enter__()
        self._made.append(cm)
        return sock

    def close(self) -> None:
        for obj in reversed(self._made):
            if isinstance(obj, Topology):
                obj.close()
            else:
                obj.__exit__(None, None, None)


def servers(results: list[dict]) -> list[str]:
    assert all(r["ok"] and r["intact"] for r in results), results
    return [r["server"] for r in results]
