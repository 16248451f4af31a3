"""Failover end to end (issue 15, point 3): a client, two directors, two DR
real servers in network namespaces; Debian's ``keepalived --vrrp`` on both
directors moves the VIP; each director's lvsd runs a master and a backup
sync daemon.  50 long-lived TCP connections go through the first director;
its lvsd and keepalived are killed (SIGKILL, then its links go down: a dead
machine); every connection sends and receives again through the second
director, on the same real server; the gap is measured and printed.  Then
the old master comes back, stays BACKUP (nopreempt), and learns the flows
from the new master's sync daemon.

    switch ns: br0 (LAN 10.0.0.0/24, VIP 10.0.0.100), br1 (172.16.0.0/24)
    client: 10.0.0.2           directors: eth0 10.0.0.1x, eth1 172.16.0.1x
    real servers: eth0 10.0.0.2x (replies go straight to the client),
                  eth1 172.16.0.2x, VIP on lo (arp_ignore 1, arp_announce 2)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import PY, ROOT, lvsadm, wait_ready
from .nsnet import dr_netns_reason

_why = dr_netns_reason() or (None if shutil.which("keepalived") else "needs keepalived (make netdeps)")
pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(180),
    pytest.mark.skipif(_why is not None, reason=_why or ""),
]

VIP = "10.0.0.100"
PORT = 8080
CONNS = 50
ADVERT = 0.2  # VRRPv3 advertisement interval (s): failover is detected after ~3.6 of them


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


KEEPALIVED_CONF = """\
global_defs {{
    router_id {name}
    vrrp_version 3
    vrrp_garp_master_repeat 3
}}
vrrp_instance VI_{tag} {{
    state BACKUP
    nopreempt
    interface eth0
    virtual_router_id {vrid}
    priority {prio}
    advert_int {advert}
    virtual_ipaddress {{
        {vip}/24 dev eth0
    }}
}}
"""


class Lab:
    def __init__(self) -> None:
        self.tag = f"{os.getpid() % 10000}{uuid.uuid4().hex[:4]}"
        t = self.tag
        self.sw, self.cl = f"fsw{t}", f"fcl{t}"
        self.d = [f"fd1{t}", f"fd2{t}"]
        self.r = [f"fr1{t}", f"fr2{t}"]
        self.tmp = Path(tempfile.mkdtemp(prefix=f"pylvs-failover-{t}-"))
        self.made: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []
        self.lvsd: dict[str, subprocess.Popen[str]] = {}
        self.ka: dict[str, subprocess.Popen[str]] = {}
        self.sock = {d: f"pylvs-fo-{t}-{k}" for k, d in enumerate(self.d)}
        self.vrid = 1 + int(uuid.uuid4().hex[:2], 16) % 250
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def ns(self, n: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", n, *args, check=check)

    def pre(self, n: str) -> list[str]:
        return ["ip", "netns", "exec", n]

    def _port(self, n: str, ifname: str, bridge: str, addr: str) -> None:
        peer = f"p{uuid.uuid4().hex[:10]}"
        sh("ip", "link", "add", ifname, "netns", n, "type", "veth", "peer", "name", peer, "netns", self.sw)
        sh("ip", "-n", self.sw, "link", "set", peer, "master", bridge, "up")
        sh("ip", "-n", n, "addr", "add", addr, "dev", ifname)
        sh("ip", "-n", n, "link", "set", ifname, "up")

    def _build(self) -> None:
        for n in (self.sw, self.cl, *self.d, *self.r):
            sh("ip", "netns", "add", n)
            self.made.append(n)
            sh("ip", "-n", n, "link", "set", "lo", "up")
        for br in ("br0", "br1"):
            sh("ip", "-n", self.sw, "link", "add", br, "type", "bridge")
            sh("ip", "-n", self.sw, "link", "set", br, "up")
        self._port(self.cl, "eth0", "br0", "10.0.0.2/24")
        for k, d in enumerate(self.d, start=1):
            self._port(d, "eth0", "br0", f"10.0.0.1{k}/24")
            self._port(d, "eth1", "br1", f"172.16.0.1{k}/24")
        for k, r in enumerate(self.r, start=1):
            self._port(r, "eth0", "br0", f"10.0.0.2{k}/24")
            self._port(r, "eth1", "br1", f"172.16.0.2{k}/24")
            sh("ip", "-n", r, "addr", "add", f"{VIP}/32", "dev", "lo")
            for key, val in (("all.arp_ignore", "1"), ("all.arp_announce", "2"), ("all.rp_filter", "0"),
                             ("default.rp_filter", "0"), ("eth0.rp_filter", "0"), ("eth1.rp_filter", "0"),
                             ("lo.rp_filter", "0")):  # fmt: skip
                self.ns(r, "sysctl", "-qw", f"net.ipv4.conf.{key}={val}")
            p = self.spawn(r, PY, "-m", "tests.failover_prog", "echo-server", str(PORT), f"rs{k}", "170")
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"

    def spawn(self, n: str, *args: str, **kw: object) -> subprocess.Popen[str]:
        p = subprocess.Popen([*self.pre(n), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=ROOT, **kw)  # type: ignore[call-overload]  # fmt: skip
        self.procs.append(p)
        return p

    # -- directors -----------------------------------------------------------------
    def adm(self, d: str, *args: str) -> str:
        r = lvsadm(self.sock[d], *args, prefix=self.pre(d))
        assert r.returncode == 0, (d, args, r.stdout, r.stderr)
        return r.stdout

    def start_director(self, d: str, restarted: bool = False) -> None:
        """lvsd (DR plane; keepalived owns the VIP), the service, and both
        sync daemons on eth1."""
        log = open(self.tmp / f"lvsd-{d}.log", "a")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen([*self.pre(d), PY, "-m", "lvsd.main", "--foreground", "--socket", self.sock[d],
                              "--no-vip", "--no-nat", "--log-level", "debug", "--state", str(self.tmp / f"{d}.state")],
                             stdout=subprocess.DEVNULL, stderr=log, text=True, cwd=ROOT)  # fmt: skip
        log.close()
        self.procs.append(p)
        self.lvsd[d] = p
        wait_ready(self.sock[d], self.pre(d))
        if restarted:
            # lvsd restores its table and its sync daemons from its state
            # file after a crash (the kernel's would have outlived the process)
            assert f"{VIP}:{PORT}" in self.adm(d, "-L", "-n")
            daemons = self.adm(d, "-L", "--daemon")
            assert "master sync daemon (mcast=eth1, syncid=7" in daemons, daemons
            assert "backup sync daemon (mcast=eth1, syncid=7" in daemons, daemons
            return
        self.adm(d, "-A", "-t", f"{VIP}:{PORT}", "-s", "rr")
        for k in (1, 2):
            self.adm(d, "-a", "-t", f"{VIP}:{PORT}", "-r", f"172.16.0.2{k}:{PORT}", "-g")
        self.adm(d, "--start-daemon", "master", "--mcast-interface", "eth1", "--syncid", "7")
        self.adm(d, "--start-daemon", "backup", "--mcast-interface", "eth1", "--syncid", "7")

    def start_keepalived(self, d: str, prio: int) -> None:
        conf = self.tmp / f"keepalived-{d}.conf"
        conf.write_text(KEEPALIVED_CONF.format(name=d, tag=self.tag, vrid=self.vrid, prio=prio, advert=ADVERT,
                                               vip=VIP))  # fmt: skip
        log = open(self.tmp / f"keepalived-{d}.log", "a")  # noqa: SIM115
        p = subprocess.Popen(
            [*self.pre(d), "keepalived", "--vrrp", "--dont-fork", "--log-console", "--log-detail",
             "--dont-respawn", "-f", str(conf), "-p", str(self.tmp / f"ka-{d}.pid"),
             "-r", str(self.tmp / f"ka-vrrp-{d}.pid")],
            stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        log.close()
        self.procs.append(p)
        self.ka[d] = p

    def has_vip(self, d: str) -> bool:
        return f"{VIP}/24" in self.ns(d, "ip", "-4", "addr", "show", "dev", "eth0").stdout

    def wait(self, what: object, timeout: float, step: float = 0.05) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if what():  # type: ignore[operator]
                return time.monotonic() - t0
            time.sleep(step)
        raise TimeoutError(f"not within {timeout} s; logs in {self.tmp}")

    def synced(self, d: str) -> int:
        text = self.adm(d, "--proc", "ip_vs_conn_sync")
        return sum(1 for line in text.splitlines() if " SYNC " in line and "ESTABLISHED" in line)

    def crash(self, d: str) -> None:
        """The machine dies: lvsd and keepalived (its VRRP child first, so
        nothing says goodbye) are killed, its links go down."""
        vrrp_pid = (self.tmp / f"ka-vrrp-{d}.pid").read_text().strip()
        os.kill(int(vrrp_pid), signal.SIGKILL)
        for p in (self.ka.pop(d), self.lvsd.pop(d)):
            p.kill()
            p.wait(timeout=10)
        for ifn in ("eth0", "eth1"):
            self.ns(d, "ip", "link", "set", ifn, "down")

    def reboot(self, d: str) -> None:
        """It comes back: a rebooted machine holds no VIP and no old rules."""
        self.ns(d, "ip", "addr", "del", f"{VIP}/24", "dev", "eth0", check=False)
        for ifn in ("eth0", "eth1"):
            self.ns(d, "ip", "link", "set", ifn, "up")

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
        for n in reversed(self.made):
            sh("ip", "netns", "del", n, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def test_vrrp_failover_carries_the_connections_on(lab: Lab) -> None:
    d1, d2 = lab.d
    lab.start_director(d1)
    lab.start_director(d2)
    lab.start_keepalived(d1, 150)
    lab.wait(lambda: lab.has_vip(d1), 15)
    lab.start_keepalived(d2, 100)
    time.sleep(4 * ADVERT)
    assert not lab.has_vip(d2)

    clients = lab.spawn(lab.cl, PY, "-m", "tests.failover_prog", "clients", VIP, str(PORT), str(CONNS), "22")
    assert clients.stdout is not None and clients.stdout.readline().strip() == "connected"
    t_connected = time.monotonic()
    # every connection reaches the backup director through the sync daemon
    took = lab.wait(lambda: lab.synced(d2) >= CONNS, 10, 0.2)
    print(f"\n{CONNS} connections synced to the backup director {took:.2f} s after they were open")
    time.sleep(max(0.0, t_connected + 4 - time.monotonic()))

    t_kill = time.monotonic()
    lab.crash(d1)
    vip_moved = lab.wait(lambda: lab.has_vip(d2), 10, 0.02)
    print(f"VIP on the backup director {vip_moved:.2f} s after the master died")

    # the old master comes back, as BACKUP (nopreempt), and learns the flows from the new master
    time.sleep(max(0.0, t_kill + 4 - time.monotonic()))
    lab.reboot(d1)
    lab.start_director(d1, restarted=True)
    lab.start_keepalived(d1, 150)
    back = lab.wait(lambda: lab.synced(d1) >= CONNS, 14, 0.2)
    print(f"the old master, back as backup, holds the {CONNS} flows again {back:.2f} s after its restart")
    assert not lab.has_vip(d1) and lab.has_vip(d2)

    out, _ = clients.communicate(timeout=60)
    results = json.loads(out)
    assert len(results) == CONNS
    gaps = []
    for r in results:
        before = [t for t in r["echoes"] if t < t_kill]
        after = [t for t in r["echoes"] if t > t_kill]
        assert before and after and not r["error"], r
        gaps.append(after[0] - before[-1])
        assert r["server"] in ("rs1", "rs2")
    servers = {r["server"] for r in results}
    assert servers == {"rs1", "rs2"}
    gaps.sort()
    print(f"gap per connection (last echo before the crash to first after): min {gaps[0]:.2f} s, "
          f"median {gaps[len(gaps) // 2]:.2f} s, max {gaps[-1]:.2f} s")  # fmt: skip
    # after the failover every connection keeps going through the new master
    assert all(r["echoes"][-1] > time.monotonic() - 5 for r in results)
    table = lab.adm(d2, "-L", "-n")
    assert "172.16.0.21:8080" in table and "172.16.0.22:8080" in table
